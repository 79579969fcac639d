"""How sure a number is: bootstrap confidence intervals and conformal prediction intervals.

Two different questions, both answered with plain numpy:

- How precisely does a TEST metric (MAE, AUROC, ...) or the difference between two models
  measure what a model would score on more videos like these? A percentile bootstrap over
  the TEST videos. A resample is a vector of counts (how often each video is drawn), so
  one count matrix ``(n_resamples, n_videos)`` drives every metric and every model at
  once; two models scored on the same count rows give a *paired* bootstrap (the same
  videos in each resample), which is what a difference between models needs.
- How far from the truth may one new video's predicted EF be? Split conformal: the
  ``ceil((n + 1)(1 - alpha))``-th smallest absolute VAL residual is a half-width that
  covers at least ``1 - alpha`` of new videos exchangeable with VAL, whatever the model.
"""

from __future__ import annotations

import math

import numpy as np

EF_RANGE: tuple[float, float] = (0.0, 100.0)


# ------------------------------------------------------------------------- bootstrap


def bootstrap_weights(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """Counts ``(n_resamples, n)``: how often each of ``n`` videos is drawn per resample.

    Drawing ``n`` videos with replacement is a multinomial over the videos; each row sums
    to ``n``. The same ``seed`` gives the same rows, so two tables made from one call
    compare the same resamples (paired).
    """
    if n < 1:
        raise ValueError(f"bootstrap: need at least one video, got {n}")
    if n_resamples < 1:
        raise ValueError(f"bootstrap: n_resamples must be >= 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples)


def percentile_interval(samples: object, level: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap interval of ``samples`` (1-D); NaN resamples are skipped.

    ``(nan, nan)`` when no resample is finite (e.g. an AUROC whose TEST set has one class).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    values = np.asarray(samples, dtype=float).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


# ------------------------------------------------------------------------- conformal


def conformal_rank(n: int, alpha: float) -> int:
    """Which order statistic of ``n`` calibration residuals is the half-width (1-based).

    ``ceil((n + 1)(1 - alpha))``; larger than ``n`` when there are too few residuals for
    the level (then no finite interval guarantees it).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"interval alpha must be in (0, 1), got {alpha}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    # the small slack keeps (n + 1)(1 - alpha) = 45.000000000000004 at 45, not 46
    return math.ceil((n + 1) * (1.0 - alpha) - 1e-9)


def conformal_half_width(abs_residuals: object, alpha: float) -> float:
    """Split-conformal half-width from calibration (VAL) absolute residuals ``|pred - EF|``.

    The ``ceil((n + 1)(1 - alpha))``-th smallest residual, i.e. the empirical quantile at
    the finite-sample corrected level ``ceil((n + 1)(1 - alpha)) / n``: an interval
    ``pred +- half_width`` then covers a new exchangeable video with probability at least
    ``1 - alpha``. ``inf`` when ``n`` is too small for the level (fewer than
    ``1 / alpha - 1`` residuals).
    """
    residuals = np.asarray(abs_residuals, dtype=float).ravel()
    if residuals.size == 0:
        raise ValueError("conformal: no calibration residuals (the split has no VAL videos)")
    if not np.all(np.isfinite(residuals)) or np.any(residuals < 0):
        raise ValueError("conformal: residuals must be finite absolute errors (>= 0)")
    rank = conformal_rank(residuals.size, alpha)
    if rank > residuals.size:
        return math.inf
    return float(np.partition(residuals, rank - 1)[rank - 1])


def conformal_calibration(y_true: object, y_pred: object, alpha: float) -> dict[str, float]:
    """What a model stores to give intervals: ``alpha``, ``half_width``, ``n_val``."""
    true = np.asarray(y_true, dtype=float).ravel()
    pred = np.asarray(y_pred, dtype=float).ravel()
    if true.shape != pred.shape:
        raise ValueError(f"conformal: {true.size} true EF vs {pred.size} predictions")
    half_width = conformal_half_width(np.abs(pred - true), alpha)
    return {"alpha": float(alpha), "half_width": half_width, "n_val": int(true.size)}


def prediction_interval(
    ef_pred: object, half_width: float, bounds: tuple[float, float] = EF_RANGE
) -> tuple[np.ndarray, np.ndarray]:
    """``(lower, upper)`` = ``ef_pred -+ half_width`` clipped to the EF range (0-100 %)."""
    pred = np.asarray(ef_pred, dtype=float)
    if not (half_width >= 0):  # also rejects NaN
        raise ValueError(f"half_width must be >= 0, got {half_width}")
    low, high = bounds
    return np.clip(pred - half_width, low, high), np.clip(pred + half_width, low, high)


def interval_covers(y_true: object, ef_pred: object, half_width: float) -> np.ndarray:
    """Per video: does ``ef_pred +- half_width`` (clipped to 0-100) contain the true EF."""
    true = np.asarray(y_true, dtype=float)
    lower, upper = prediction_interval(ef_pred, half_width)
    return (true >= lower) & (true <= upper)


def coverage_key(alpha: float) -> str:
    """Column name of the coverage of the ``1 - alpha`` interval, e.g. 0.1 -> 'coverage_90'."""
    return f"coverage_{100.0 * (1.0 - alpha):g}".replace(".", "p")


def interval_text(ef_pred: float, lower: float, upper: float, level: float) -> str:
    """'EF 41, 90% interval 33-49' (what a reader of a report sees)."""
    return f"EF {ef_pred:.0f}, {100 * level:g}% interval {lower:.0f}-{upper:.0f}"
