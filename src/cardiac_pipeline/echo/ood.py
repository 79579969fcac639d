"""Is a new video like the videos a model was calibrated on? Out-of-distribution scores.

Split conformal intervals hold only for videos exchangeable with the calibration videos.
A model therefore keeps a description of its calibration videos in its own embedding
space (the pooled video embeddings): their mean and a Ledoit-Wolf shrinkage covariance.
A new video's score is its Mahalanobis distance to them; it is flagged
``out_of_distribution`` above a threshold set so that about ``1 - quantile`` (1%) of
in-distribution videos are flagged.

The threshold is an order statistic of *held-out* scores: each calibration video is
scored against a description fitted without it (``CROSS_FIT_FOLDS``-fold cross-fitting),
so its score is distributed as a new in-distribution video's would be (in-sample
distances are too small: a point pulls the mean and covariance towards itself). The
percentile of a new score is its rank among those held-out calibration scores.

Plain numpy (no torch): the model code turns embeddings into arrays and back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

OOD_COLUMNS = ("out_of_distribution", "ood_score", "ood_percentile")
OOD_FLAG = "out_of_distribution"  # its name among a video's flags

SCORE = "mahalanobis_ledoit_wolf"
CROSS_FIT_FOLDS = 10
"""Folds of the held-out calibration scores: each fit sees 90% of the calibration videos,
close to the full fit a model keeps (so its held-out scores run only slightly high)."""
MIN_CALIBRATION_VIDEOS = 3  # every cross-fit needs two videos for a covariance
_FLOOR = 1e-9  # relative ridge: a covariance of identical embeddings stays invertible


def _matrix(embeddings: object, what: str = "embeddings") -> np.ndarray:
    x = np.asarray(embeddings, dtype=float)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{what}: expected a (videos, dims) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what}: embeddings must be finite")
    return x


def ledoit_wolf(embeddings: object) -> tuple[np.ndarray, np.ndarray, float]:
    """``(mean, covariance, shrinkage)``: the sample covariance shrunk towards ``mu * I``.

    Ledoit and Wolf (2004): the shrinkage that minimises the expected squared error of the
    estimate, from the data alone. With a few hundred videos in 128-512 dimensions the
    sample covariance is singular or nearly so; the shrunk one is always invertible.
    """
    x = _matrix(embeddings)
    n, p = x.shape
    mean = x.mean(axis=0)
    centred = x - mean
    sample = centred.T @ centred / n
    mu = float(np.trace(sample)) / p
    target = mu * np.eye(p)
    delta = float(np.sum((sample - target) ** 2)) / p
    fourth = float(np.sum(np.sum(centred**2, axis=1) ** 2))
    beta = max(0.0, (fourth - n * float(np.sum(sample**2))) / (n * n * p))
    shrinkage = 1.0 if delta <= 0 else min(beta, delta) / delta
    covariance = shrinkage * target + (1.0 - shrinkage) * sample
    covariance += (_FLOOR * max(mu, 1.0)) * np.eye(p)
    return mean, covariance, float(shrinkage)


def fit_gaussian(embeddings: object) -> dict[str, Any]:
    """``mean``, ``precision`` (inverse shrunk covariance) and ``shrinkage`` of embeddings."""
    mean, covariance, shrinkage = ledoit_wolf(embeddings)
    values, vectors = np.linalg.eigh(covariance)
    precision = (vectors / values) @ vectors.T
    return {"mean": mean, "precision": (precision + precision.T) / 2, "shrinkage": shrinkage}


def mahalanobis(embeddings: object, mean: object, precision: object) -> np.ndarray:
    """Distance of each row of ``embeddings`` to ``mean`` under ``precision``: (videos,)."""
    x = _matrix(embeddings)
    centre = np.asarray(mean, dtype=float)
    inverse = np.asarray(precision, dtype=float)
    if centre.shape != (x.shape[1],) or inverse.shape != (x.shape[1], x.shape[1]):
        raise ValueError(
            f"embeddings of {x.shape[1]} dims against a description of {centre.shape[0]} dims"
        )
    d = x - centre
    return np.sqrt(np.clip(np.einsum("ij,jk,ik->i", d, inverse, d), 0.0, None))


def cross_fitted_scores(embeddings: object, folds: int = CROSS_FIT_FOLDS) -> np.ndarray:
    """Each video's distance to a Gaussian fitted on the other folds (held-out scores).

    Folds are every ``folds``-th video (deterministic; the order of calibration videos is
    already random). ``folds`` larger than the number of videos means leave-one-out.
    """
    x = _matrix(embeddings)
    n = x.shape[0]
    if n < MIN_CALIBRATION_VIDEOS:
        raise ValueError(f"held-out scores need >= {MIN_CALIBRATION_VIDEOS} videos, got {n}")
    fold = np.arange(n) % min(int(folds), n)
    scores = np.empty(n)
    for f in np.unique(fold):
        held = fold == f
        fitted = fit_gaussian(x[~held])
        scores[held] = mahalanobis(x[held], fitted["mean"], fitted["precision"])
    return scores


def flag_rank(n: int, quantile: float) -> int:
    """Which order statistic (1-based) of ``n`` held-out scores is the threshold.

    A new exchangeable video scores above the ``r``-th smallest of ``n`` with probability
    ``(n + 1 - r) / (n + 1)``; ``r = round((n + 1) * quantile)`` makes that the closest to
    ``1 - quantile`` that ``n`` scores can give (kept within 1..n).
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"ood quantile must be in (0, 1), got {quantile}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return min(n, max(1, round((n + 1) * quantile)))


def describe(embeddings: object, quantile: float) -> dict[str, Any]:
    """What a model keeps about its calibration videos to score new ones (``score_videos``).

    ``mean``, ``precision``, ``shrinkage`` (fitted on every calibration video),
    ``calibration_scores`` (held-out, sorted), ``threshold`` (their ``flag_rank``-th),
    ``quantile``, ``expected_flag_rate`` (the share of in-distribution videos the threshold
    flags, ``(n + 1 - rank) / (n + 1)``), ``n`` and the ``score`` name.
    """
    x = _matrix(embeddings, "calibration embeddings")
    held_out = np.sort(cross_fitted_scores(x))
    n = len(held_out)
    rank = flag_rank(n, quantile)
    return {
        "score": SCORE,
        **fit_gaussian(x),
        "calibration_scores": held_out,
        "threshold": float(held_out[rank - 1]),
        "quantile": float(quantile),
        "expected_flag_rate": (n + 1 - rank) / (n + 1),
        "n": n,
    }


def score_videos(embeddings: object, description: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``score`` (Mahalanobis distance), ``percentile`` (share of held-out calibration
    scores at or below it, 0-100) and ``out_of_distribution`` (score above the threshold)."""
    if description.get("score") != SCORE:
        raise ValueError(f"unknown out-of-distribution score {description.get('score')!r}")
    scores = mahalanobis(embeddings, description["mean"], description["precision"])
    calibration = np.sort(np.asarray(description["calibration_scores"], dtype=float))
    below = np.searchsorted(calibration, scores, side="right")
    return {
        "score": scores,
        "percentile": 100.0 * below / max(1, calibration.size),
        "out_of_distribution": scores > float(description["threshold"]),
    }


def flagged_share(flags: object) -> float:
    """Share of videos flagged (NaN entries, videos never scored, are left out)."""
    values = np.asarray(flags, dtype=float).ravel()
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan
