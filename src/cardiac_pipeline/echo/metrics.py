"""Evaluation metrics for LVEF prediction: the one metrics function and its summaries.

Everything here works on plain arrays of ejection fraction in percent (0-100), so the same
numbers come out of a notebook, a test and the evaluation pipeline. The metrics are the
ones readers of the LVEF literature expect next to MAE: RMSE, R2, bias (mean signed error)
and the AUROC of flagging reduced EF (EF < 50 % and EF < 40 %) from the predicted EF.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from cardiac_pipeline.echo.uncertainty import (
    bootstrap_weights,
    conformal_half_width,
    coverage_key,
    percentile_interval,
    prediction_interval,
)

# Clinical thresholds for "reduced EF" (heart failure with reduced / mildly reduced EF).
DEFAULT_REDUCED_EF_THRESHOLDS: tuple[float, ...] = (50.0, 40.0)
# Edges of the LVEF ranges used for the per-range error table (left-closed intervals).
DEFAULT_RANGE_EDGES: tuple[float, ...] = (30.0, 45.0, 55.0, 70.0)


def _as_finite_1d(values: object, name: str) -> np.ndarray:
    """Turn list / Series / array into a finite 1-D float array, or say what is wrong."""
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: cannot be read as numbers ({exc})") from exc
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name}: is empty; need at least one value")
    bad = ~np.isfinite(array)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name}: {int(bad.sum())} non-finite value(s) (NaN/inf), first at position {first}"
        )
    return array


def _paired(y_true: object, y_pred: object) -> tuple[np.ndarray, np.ndarray]:
    true = _as_finite_1d(y_true, "y_true")
    pred = _as_finite_1d(y_pred, "y_pred")
    if true.shape != pred.shape:
        raise ValueError(
            f"y_true and y_pred differ in length ({true.size} vs {pred.size}); "
            "they must hold one value per video"
        )
    return true, pred


def threshold_key(threshold: float) -> str:
    """Name of the AUROC entry for a reduced-EF threshold, e.g. 50 -> 'auroc_ef_lt_50'."""
    return f"auroc_ef_lt_{threshold:g}".replace(".", "p")


def reduced_ef_auroc(y_true: object, y_pred: object, threshold: float) -> float:
    """AUROC of flagging EF < threshold using the predicted EF (lower EF = more suspicious).

    NaN when the true labels hold only one class (e.g. a small split with no reduced EF),
    because the AUROC is undefined there and a crash would lose the other metrics.
    """
    true, pred = _paired(y_true, y_pred)
    positives = true < threshold
    if positives.all() or not positives.any():
        return math.nan
    return float(roc_auc_score(positives, -pred))


def ef_metrics(
    y_true: object,
    y_pred: object,
    reduced_ef_thresholds: Sequence[float] = DEFAULT_REDUCED_EF_THRESHOLDS,
) -> dict[str, float]:
    """The project's one metrics function: agreement of predicted with true LVEF (%).

    Returns n, mae, rmse, r2, bias (mean of pred - true; positive = overestimation) and
    one ``auroc_ef_lt_<t>`` per threshold t (AUROC of -pred for true EF < t; NaN when a
    single class is present). r2 is NaN when the true EF is constant (undefined).
    """
    true, pred = _paired(y_true, y_pred)
    error = pred - true
    total_ss = float(np.sum((true - true.mean()) ** 2))
    residual_ss = float(np.sum(error**2))
    metrics: dict[str, float] = {
        "n": int(true.size),
        "mae": float(np.mean(np.abs(error))),
        "rmse": float(np.sqrt(np.mean(error**2))),
        "r2": 1.0 - residual_ss / total_ss if total_ss > 0 else math.nan,
        "bias": float(np.mean(error)),
    }
    for threshold in reduced_ef_thresholds:
        metrics[threshold_key(threshold)] = reduced_ef_auroc(true, pred, threshold)
    return metrics


def limits_of_agreement(y_true: object, y_pred: object, z: float = 1.96) -> dict[str, float]:
    """Bland-Altman statistics of pred - true: bias, SD and bias -/+ z*SD.

    SD uses ddof=1 (sample SD, as in Bland & Altman); with one video it is NaN and so are
    the limits.
    """
    true, pred = _paired(y_true, y_pred)
    difference = pred - true
    bias = float(difference.mean())
    sd = float(difference.std(ddof=1)) if difference.size > 1 else math.nan
    return {
        "bias": bias,
        "sd": sd,
        "lower": bias - z * sd,
        "upper": bias + z * sd,
        "z": float(z),
    }


def _range_labels(edges: Sequence[float]) -> list[str]:
    labels = [f"<{edges[0]:g}"]
    labels += [f"{lo:g}–{hi:g}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    labels.append(f"≥{edges[-1]:g}")
    return labels


def mae_by_range(
    y_true: object,
    y_pred: object,
    edges: Sequence[float] = DEFAULT_RANGE_EDGES,
) -> pd.DataFrame:
    """MAE (and bias) per range of the TRUE LVEF, to show where a model errs.

    Ranges are left-closed: with the default edges <30, 30–45, 45–55, 55–70, ≥70 (the
    prompt ranges: severely / moderately / mildly reduced, normal, hyperdynamic). Every
    range gets a row, empty ones with n=0 and NaN errors, so tables line up across seeds.
    Columns: range, lower, upper, n, mae, bias.
    """
    true, pred = _paired(y_true, y_pred)
    edges_array = np.asarray(edges, dtype=float)
    if edges_array.ndim != 1 or edges_array.size == 0 or np.any(np.diff(edges_array) <= 0):
        raise ValueError(f"edges: need strictly increasing range edges, got {list(edges)}")
    bounds = np.concatenate([[-np.inf], edges_array, [np.inf]])
    which = np.searchsorted(edges_array, true, side="right")  # 0..len(edges)
    error = pred - true
    rows = []
    for i, label in enumerate(_range_labels(list(edges_array))):
        in_range = which == i
        count = int(in_range.sum())
        rows.append(
            {
                "range": label,
                "lower": float(bounds[i]),
                "upper": float(bounds[i + 1]),
                "n": count,
                "mae": float(np.abs(error[in_range]).mean()) if count else math.nan,
                "bias": float(error[in_range].mean()) if count else math.nan,
            }
        )
    return pd.DataFrame(rows)


def constant_baseline(
    reference_ef: object,
    test_ef: object,
    statistic: Literal["mean", "median"] = "mean",
    reduced_ef_thresholds: Sequence[float] = DEFAULT_REDUCED_EF_THRESHOLDS,
) -> dict[str, float]:
    """Metrics of always predicting one EF, the mean or median of ``reference_ef``.

    The floors any model must beat: the k-shot TRAIN mean (uniform over EF levels, so far
    from a mostly normal target) and the VAL median (labels the protocol already spends on
    model selection; the best constant short of peeking at TEST). A constant gives AUROC 0.5
    (when both classes are present); ``constant`` records the value used.
    """
    if statistic not in ("mean", "median"):
        raise ValueError(f"statistic must be 'mean' or 'median', got {statistic!r}")
    reference = _as_finite_1d(reference_ef, "reference_ef")
    test = _as_finite_1d(test_ef, "test_ef")
    constant = float(np.mean(reference) if statistic == "mean" else np.median(reference))
    metrics = ef_metrics(test, np.full_like(test, constant), reduced_ef_thresholds)
    metrics["constant"] = constant
    return metrics


def split_baselines(split: pd.DataFrame, test_ef: object) -> dict[str, dict[str, float]]:
    """The constant baselines of one k-shot split (``role``, ``EF``) on ``test_ef``.

    ``mean_predictor``: the TRAIN mean; ``val_median_predictor``: the VAL median (left out
    when the split has no VAL rows).
    """
    _check_columns(split, ["role", "EF"], "k-shot split")
    out = {"mean_predictor": constant_baseline(split.loc[split["role"] == "train", "EF"], test_ef)}
    val = split.loc[split["role"] == "val", "EF"]
    if len(val):
        out["val_median_predictor"] = constant_baseline(val, test_ef, statistic="median")
    return out


def _check_columns(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: column(s) {missing} not in table (has {list(df.columns)})")


def summarise_over_seeds(
    df: pd.DataFrame,
    group_cols: Sequence[str],
    metric_cols: Sequence[str],
) -> pd.DataFrame:
    """Mean and SD of each metric over the seeds (rows) of each group, e.g. per (method, k).

    One row per group with the group columns, ``n`` (rows in the group) and for each metric
    ``<metric>_mean`` and ``<metric>_sd`` (sample SD, ddof=1; NaN for a single seed). NaN
    metric values (e.g. an undefined AUROC) are skipped.
    """
    group_cols, metric_cols = list(group_cols), list(metric_cols)
    if df.empty:
        raise ValueError("summarise_over_seeds: table has no rows")
    if not metric_cols:
        raise ValueError("summarise_over_seeds: metric_cols is empty")
    _check_columns(df, group_cols, "group_cols")
    _check_columns(df, metric_cols, "metric_cols")
    non_numeric = [c for c in metric_cols if not pd.api.types.is_numeric_dtype(df[c])]
    if non_numeric:
        raise ValueError(f"metric_cols: column(s) {non_numeric} are not numeric")

    def _summary(group: pd.DataFrame) -> dict[str, float]:
        row: dict[str, float] = {"n": len(group)}
        for col in metric_cols:
            values = group[col].to_numpy(dtype=float)
            values = values[~np.isnan(values)]
            row[f"{col}_mean"] = float(values.mean()) if values.size else math.nan
            row[f"{col}_sd"] = float(values.std(ddof=1)) if values.size > 1 else math.nan
        return row

    if group_cols:
        grouped = df.groupby(group_cols, sort=True, dropna=False)
        rows = []
        for key, group in grouped:
            key = key if isinstance(key, tuple) else (key,)
            rows.append({**dict(zip(group_cols, key, strict=True)), **_summary(group)})
    else:
        rows = [_summary(df)]
    summary = pd.DataFrame(rows)
    summary["n"] = summary["n"].astype(int)
    return summary


def mean_sd_text(mean: float, sd: float, decimals: int = 2) -> str:
    """'6.64 ± 0.21'; just the mean when SD is undefined (one seed); '–' for no value."""
    if mean is None or not np.isfinite(mean):
        return "–"
    if sd is None or not np.isfinite(sd):
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {sd:.{decimals}f}"


# ---------------------------------------------------------------- bootstrap intervals
#
# The same metrics on bootstrap resamples of the TEST videos, all resamples at once: a
# resample is a row of counts (``uncertainty.bootstrap_weights``), every metric is a
# weighted sum over videos, so a (resamples x videos) matrix product replaces a Python loop
# over resamples. With all counts 1 each function gives ``ef_metrics``'s number (to rounding).

DEFAULT_BOOTSTRAP_RESAMPLES = 2000
DEFAULT_CI_LEVEL = 0.95
CI_METRICS: tuple[str, ...] = ("mae", "rmse", "r2", "bias", "auroc_ef_lt_50", "auroc_ef_lt_40")
CI_DECIMALS = {"r2": 3, "auroc_ef_lt_50": 3, "auroc_ef_lt_40": 3}
CI_HEADERS = {
    "mae": "MAE",
    "rmse": "RMSE",
    "r2": "R2",
    "bias": "bias",
    "auroc_ef_lt_50": "AUROC EF<50",
    "auroc_ef_lt_40": "AUROC EF<40",
}


def _resampled_auroc(positive: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC (ties count one half) of ``score`` for ``positive`` in every count row."""
    order = np.argsort(score, kind="stable")
    ordered = score[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # tied-score groups
    counts = weights[:, order].astype(float)
    is_pos = positive[order]
    pos = np.add.reduceat(counts * is_pos, starts, axis=1)
    neg = np.add.reduceat(counts * ~is_pos, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negatives scored strictly lower
    numerator = np.sum(pos * (below + 0.5 * neg), axis=1)
    denominator = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, math.nan)


def resampled_ef_metrics(
    y_true: object,
    y_pred: object,
    weights: np.ndarray,
    reduced_ef_thresholds: Sequence[float] = DEFAULT_REDUCED_EF_THRESHOLDS,
) -> dict[str, np.ndarray]:
    """``ef_metrics`` (without n) of each resample, a row of ``weights`` (counts per video).

    Returns one array of length ``weights.shape[0]`` per metric; NaN where a resample makes
    a metric undefined (R2 of a constant truth, AUROC with one class).
    """
    true, pred = _paired(y_true, y_pred)
    weights = np.asarray(weights, dtype=float)
    if weights.ndim != 2 or weights.shape[1] != true.size:
        raise ValueError(f"weights: expected shape (resamples, {true.size}), got {weights.shape}")
    total = weights.sum(axis=1)
    error = pred - true
    squared = error**2
    residual_ss = weights @ squared
    mean_true = (weights @ true) / total
    total_ss = np.einsum("bn,bn->b", weights, (true[None, :] - mean_true[:, None]) ** 2)
    # a resample whose true EF is one value has no variance to explain: R2 undefined
    floor = 1e-12 * total * max(1.0, float(np.mean(true**2)))
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = np.where(total_ss > floor, 1.0 - residual_ss / total_ss, math.nan)
    out = {
        "mae": (weights @ np.abs(error)) / total,
        "rmse": np.sqrt(residual_ss / total),
        "r2": r2,
        "bias": (weights @ error) / total,
    }
    for threshold in reduced_ef_thresholds:
        out[threshold_key(threshold)] = _resampled_auroc(true < threshold, -pred, weights)
    return out


def _rows(values: object, n: int, name: str) -> np.ndarray:
    """``(seeds, n)`` float array from one prediction vector or one per seed."""
    array = np.asarray(values, dtype=float)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != n:
        raise ValueError(f"{name}: expected {n} values per seed, got shape {array.shape}")
    return array


def _seed_mean(per_seed: np.ndarray) -> np.ndarray:
    """Mean over seeds (axis 0) skipping NaN; NaN where every seed is NaN, without a warning."""
    finite = np.isfinite(per_seed)
    count = finite.sum(axis=0)
    total = np.where(finite, per_seed, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, math.nan)


def _resampled_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The mean of a per-video value in each resample, over its videos where it is defined
    (NaN: e.g. the coverage of an EF range the video is not in); NaN where none is."""
    defined = np.isfinite(values)
    counts = weights @ defined
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, (weights @ np.where(defined, values, 0.0)) / counts, math.nan)


def _resampled_per_seed(
    true: np.ndarray,
    preds: np.ndarray,
    weights: np.ndarray,
    video_means: Mapping[str, np.ndarray],
    thresholds: Sequence[float],
) -> dict[str, np.ndarray]:
    """Every metric, ``(seeds, resamples)``, on the same resamples for every seed."""
    per_seed: dict[str, list[np.ndarray]] = {}
    for s, pred in enumerate(preds):
        metrics = resampled_ef_metrics(true, pred, weights, thresholds)
        for name, values in video_means.items():
            metrics[name] = _resampled_mean(values[s], weights)
        for name, values in metrics.items():
            per_seed.setdefault(name, []).append(values)
    return {name: np.stack(values) for name, values in per_seed.items()}


def bootstrap_ef_metrics(
    y_true: object,
    y_pred: object,
    *,
    n_resamples: int = DEFAULT_BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_CI_LEVEL,
    video_means: Mapping[str, object] | None = None,
    reduced_ef_thresholds: Sequence[float] = DEFAULT_REDUCED_EF_THRESHOLDS,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap CI ``(low, high)`` of every ``ef_metrics`` value on TEST videos.

    ``y_pred`` is one prediction per video, or ``(seeds, videos)``: models of several seeds
    on the same videos. Then each resample draws the videos once for all seeds and the
    metric is the mean over seeds, so the interval is that of the seed-averaged metric
    (video sampling only; the SD over seeds shows the seed's share). ``video_means`` adds
    metrics that are the mean of a per-video value (e.g. interval coverage: 0/1 per video),
    each ``(videos,)`` or ``(seeds, videos)``.
    """

    true = _as_finite_1d(y_true, "y_true")
    preds = _rows(y_pred, true.size, "y_pred")
    means = {
        name: np.broadcast_to(_rows(v, true.size, name), preds.shape)
        for name, v in (video_means or {}).items()
    }
    weights = bootstrap_weights(true.size, n_resamples, seed)
    per_seed = _resampled_per_seed(true, preds, weights, means, reduced_ef_thresholds)
    return {name: percentile_interval(_seed_mean(v), level) for name, v in per_seed.items()}


def paired_bootstrap_difference(
    y_true: object,
    pred_a: object,
    pred_b: object,
    *,
    n_resamples: int = DEFAULT_BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_CI_LEVEL,
    reduced_ef_thresholds: Sequence[float] = DEFAULT_REDUCED_EF_THRESHOLDS,
) -> dict[str, tuple[float, float, float]]:
    """Metric of A minus metric of B on the same videos: ``(difference, low, high)`` each.

    Both models are scored on the same resample of videos (paired), so what the videos
    share (hard cases, the EF mix) cancels. ``pred_a`` / ``pred_b`` are ``(videos,)`` or
    ``(seeds, videos)``; a single row is used for every seed of the other side (a model
    that does not depend on the seed, e.g. zero-shot), else row s of A pairs with row s of
    B. The difference is then the mean over seeds, on every resample.
    """

    true = _as_finite_1d(y_true, "y_true")
    a = _rows(pred_a, true.size, "pred_a")
    b = _rows(pred_b, true.size, "pred_b")
    if len(a) != len(b) and 1 not in (len(a), len(b)):
        raise ValueError(f"paired bootstrap: {len(a)} seeds of A vs {len(b)} of B")
    seeds = max(len(a), len(b))
    a = np.broadcast_to(a, (seeds, true.size))
    b = np.broadcast_to(b, (seeds, true.size))
    point_a = [ef_metrics(true, row, reduced_ef_thresholds) for row in a]
    point_b = [ef_metrics(true, row, reduced_ef_thresholds) for row in b]
    weights = bootstrap_weights(true.size, n_resamples, seed)
    resampled_a = _resampled_per_seed(true, a, weights, {}, reduced_ef_thresholds)
    resampled_b = _resampled_per_seed(true, b, weights, {}, reduced_ef_thresholds)
    out = {}
    for name in resampled_a:
        point = np.array([pa[name] - pb[name] for pa, pb in zip(point_a, point_b, strict=True)])
        low, high = percentile_interval(_seed_mean(resampled_a[name] - resampled_b[name]), level)
        out[name] = (float(_seed_mean(point[:, None])[0]), low, high)
    return out


# ------------------------------------------------------------ tables with intervals

# Long per-video prediction tables (one row per model and video) feed the summaries:
PREDICTION_KEYS = ("FileName", "EF_true", "EF_pred")


def _model_matrix(
    rows: pd.DataFrame, seed_col: str, value_cols: Sequence[str], where: str
) -> tuple[list[Any], list[str], np.ndarray, dict[str, np.ndarray]]:
    """Seeds, videos (sorted), true EF and ``(seeds, videos)`` arrays of ``value_cols``.

    Every seed must hold the same videos (the pairing of the bootstrap needs them).
    """
    seeds = sorted(rows[seed_col].dropna().unique().tolist()) or [None]
    tables = []
    for seed in seeds:
        part = rows if seed is None else rows[rows[seed_col] == seed]
        part = part.drop_duplicates("FileName").set_index("FileName").sort_index()
        tables.append(part)
    videos = tables[0].index.tolist()
    for seed, table in zip(seeds, tables, strict=True):
        if table.index.tolist() != videos:
            raise ValueError(
                f"{where}: seed {seed} was tested on other videos than seed {seeds[0]}; "
                "paired intervals need the same TEST videos for every seed"
            )
    true = tables[0]["EF_true"].to_numpy(dtype=float)
    values = {c: np.stack([t[c].to_numpy(dtype=float) for t in tables]) for c in value_cols}
    return seeds, videos, true, values


def _seed_independent(values: Mapping[str, np.ndarray]) -> bool:
    """Whether every seed's values are identical (a model that uses no seed-drawn labels)."""
    return all(
        len(array) > 1 and bool(np.all(array == array[:1], where=~np.isnan(array)))
        for array in values.values()
    )


def summarise_with_ci(
    predictions: pd.DataFrame,
    group_cols: Sequence[str] = ("method", "k"),
    *,
    seed_col: str = "seed",
    video_means: Mapping[str, str] | None = None,
    n_resamples: int = DEFAULT_BOOTSTRAP_RESAMPLES,
    bootstrap_seed: int = 0,
    level: float = DEFAULT_CI_LEVEL,
    reduced_ef_thresholds: Sequence[float] = DEFAULT_REDUCED_EF_THRESHOLDS,
) -> pd.DataFrame:
    """Per group (e.g. method, k): mean and SD over seeds and a bootstrap CI of each metric.

    ``predictions`` is long: the group columns, ``seed_col``, ``FileName``, ``EF_true``,
    ``EF_pred`` and the columns named in ``video_means`` (``{metric: column}``, a per-video
    value whose mean is the metric, e.g. ``{"coverage_90": "covered"}``). A group whose
    seeds all predicted the same (zero-shot, a VAL constant) counts as one model:
    ``n`` 1, ``seed_dependent`` False, no SD. Columns: group columns, ``n`` (models),
    ``n_videos``, ``seed_dependent``, and per metric ``<m>_mean``, ``<m>_sd``,
    ``<m>_ci_low``, ``<m>_ci_high`` (CI: ``bootstrap_ef_metrics``).
    """
    group_cols = list(group_cols)
    video_means = dict(video_means or {})
    _check_columns(
        predictions, [*group_cols, seed_col, *PREDICTION_KEYS, *video_means.values()], "predictions"
    )
    if predictions.empty:
        raise ValueError("summarise_with_ci: predictions table has no rows")
    value_cols = ["EF_pred", *dict.fromkeys(video_means.values())]
    rows = []
    for key, group in predictions.groupby(group_cols, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        label = dict(zip(group_cols, key, strict=True))
        _, videos, true, values = _model_matrix(group, seed_col, value_cols, f"{label}")
        seed_dependent = not _seed_independent(values)
        if not seed_dependent:
            values = {c: v[:1] for c, v in values.items()}
        per_seed = []
        for s in range(len(values["EF_pred"])):
            metrics = ef_metrics(true, values["EF_pred"][s], reduced_ef_thresholds)
            for name, column in video_means.items():
                metrics[name] = float(_seed_mean(values[column][s][:, None])[0])
            per_seed.append(metrics)
        intervals = bootstrap_ef_metrics(
            true,
            values["EF_pred"],
            n_resamples=n_resamples,
            seed=bootstrap_seed,
            level=level,
            video_means={name: values[column] for name, column in video_means.items()},
            reduced_ef_thresholds=reduced_ef_thresholds,
        )
        row: dict[str, Any] = {
            **label,
            "n": len(per_seed),
            "n_videos": len(videos),
            "seed_dependent": seed_dependent,
        }
        for name, (low, high) in intervals.items():
            point = np.array([m[name] for m in per_seed], dtype=float)
            point = point[np.isfinite(point)]
            row[f"{name}_mean"] = float(point.mean()) if point.size else math.nan
            row[f"{name}_sd"] = float(point.std(ddof=1)) if point.size > 1 else math.nan
            row[f"{name}_ci_low"], row[f"{name}_ci_high"] = low, high
        rows.append(row)
    return pd.DataFrame(rows)


def _parse_side(text: str) -> tuple[str, int | None]:
    """'cardiac_clip' -> (name, None): at every k; 'cardiac_clip@16' -> (name, 16)."""
    name, _, k = str(text).partition("@")
    if k and not k.isdigit():
        raise ValueError(f"comparison side {text!r}: expected 'method' or 'method@k'")
    return name, int(k) if k else None


def paired_differences(
    predictions: pd.DataFrame,
    comparisons: Sequence[Sequence[str]],
    *,
    metric_cols: Sequence[str] = CI_METRICS,
    n_resamples: int = DEFAULT_BOOTSTRAP_RESAMPLES,
    bootstrap_seed: int = 0,
    level: float = DEFAULT_CI_LEVEL,
) -> pd.DataFrame:
    """Paired bootstrap CIs of ``metric(A) - metric(B)`` on the same TEST videos.

    ``comparisons``: ``[A, B]`` pairs of methods, compared at every k both have;
    ``method@k`` fixes a side's k (``[cardiac_clip@16, cardiac_clip@1]``: what 16 shots add
    over 1). Per pair one row per seed both have (a seed-independent side pairs with every
    seed of the other) and one ``seed = "pooled"`` row: the mean difference over seeds,
    resampling videos once for all seeds. Columns: ``comparison``, ``method_a``, ``k_a``,
    ``method_b``, ``k_b``, ``seed``, ``n_videos`` and per metric ``<m>_diff``,
    ``<m>_ci_low``, ``<m>_ci_high``.
    """
    _check_columns(predictions, ["method", "k", "seed", *PREDICTION_KEYS], "predictions")
    models = {(method, k): group for (method, k), group in predictions.groupby(["method", "k"])}
    rows = []
    for pair in comparisons:
        if len(pair) != 2:
            raise ValueError(f"comparison {pair!r}: expected two methods [A, B]")
        (name_a, fixed_a), (name_b, fixed_b) = _parse_side(pair[0]), _parse_side(pair[1])
        ks_a = sorted(k for m, k in models if m == name_a and fixed_a in (None, k))
        ks_b = sorted(k for m, k in models if m == name_b and fixed_b in (None, k))
        if fixed_a is None and fixed_b is None:
            k_pairs = [(k, k) for k in ks_a if k in ks_b]
        else:  # a fixed side meets every k of the other
            k_pairs = [(ka, kb) for ka in ks_a for kb in ks_b]
        for k_a, k_b in k_pairs:
            rows += _compare(
                f"{pair[0]} - {pair[1]}",
                (name_a, k_a, models[(name_a, k_a)]),
                (name_b, k_b, models[(name_b, k_b)]),
                metric_cols,
                n_resamples=n_resamples,
                bootstrap_seed=bootstrap_seed,
                level=level,
            )
    return pd.DataFrame(rows)


def _compare(
    label: str,
    side_a: tuple[str, Any, pd.DataFrame],
    side_b: tuple[str, Any, pd.DataFrame],
    metric_cols: Sequence[str],
    **bootstrap: Any,
) -> list[dict[str, Any]]:
    """Rows of one comparison at one (k_a, k_b): per shared seed, then pooled."""
    (name_a, k_a, rows_a), (name_b, k_b, rows_b) = side_a, side_b
    where = f"comparison {label} at k {k_a}/{k_b}"
    seeds_a, videos, true, values_a = _model_matrix(rows_a, "seed", ["EF_pred"], where)
    seeds_b, videos_b, _, values_b = _model_matrix(rows_b, "seed", ["EF_pred"], where)
    if videos != videos_b:
        raise ValueError(f"{where}: the two methods were tested on different videos")
    pred_a, pred_b = values_a["EF_pred"], values_b["EF_pred"]
    if _seed_independent(values_a):
        seeds_a, pred_a = [None], pred_a[:1]
    if _seed_independent(values_b):
        seeds_b, pred_b = [None], pred_b[:1]
    if seeds_a == [None] or seeds_b == [None]:
        seeds = seeds_b if seeds_a == [None] else seeds_a
        ia = [0] * len(seeds) if seeds_a == [None] else list(range(len(seeds)))
        ib = [0] * len(seeds) if seeds_b == [None] else list(range(len(seeds)))
    else:
        seeds = [s for s in seeds_a if s in seeds_b]
        ia = [seeds_a.index(s) for s in seeds]
        ib = [seeds_b.index(s) for s in seeds]
    if not seeds:
        return []
    base = {
        "comparison": label,
        "method_a": name_a,
        "k_a": k_a,
        "method_b": name_b,
        "k_b": k_b,
        "n_videos": len(videos),
    }
    cases = [(s, [i], [j]) for s, i, j in zip(seeds, ia, ib, strict=True)]
    if len(seeds) > 1:
        cases.append(("pooled", ia, ib))
    out = []
    for seed, rows_i, rows_j in cases:
        diffs = paired_bootstrap_difference(
            true,
            pred_a[rows_i],
            pred_b[rows_j],
            n_resamples=int(bootstrap["n_resamples"]),
            seed=int(bootstrap["bootstrap_seed"]),
            level=float(bootstrap["level"]),
        )
        row = {**base, "seed": "all" if seed is None else seed}
        for name in metric_cols:
            row[f"{name}_diff"], row[f"{name}_ci_low"], row[f"{name}_ci_high"] = diffs[name]
        out.append(row)
    return out


def estimate_text(
    value: float, low: float, high: float, sd: float | None = None, decimals: int = 2
) -> str:
    """'9.31 ± 0.45 (8.60 to 10.10)': mean, SD over seeds when there is one, 95% CI."""
    if value is None or not np.isfinite(value):
        return "–"
    text = mean_sd_text(value, sd if sd is not None else math.nan, decimals)
    if low is not None and np.isfinite(low) and np.isfinite(high):
        text += f" ({low:.{decimals}f} to {high:.{decimals}f})"
    return text


def format_ci_table(
    summary: pd.DataFrame,
    group_cols: Sequence[str],
    metric_cols: Sequence[str],
    decimals: int | Mapping[str, int] = 2,
    headers: Mapping[str, str] | None = None,
) -> str:
    """Markdown of a ``summarise_with_ci`` table: cells 'mean ± SD (CI low to high)'.

    A method that is seed-independent at every k with the same numbers at every k (it
    uses no k-shot labels: zero-shot, the VAL median) is one row with k 'any'.
    """
    group_cols, metric_cols = list(group_cols), list(metric_cols)
    headers = dict(headers or {})
    _check_columns(summary, [*group_cols, "n", "seed_dependent"], "summary")

    def _decimals(metric: str) -> int:
        return int(decimals.get(metric, 2)) if isinstance(decimals, Mapping) else int(decimals)

    records = summary.to_dict(orient="records")
    if "k" in group_cols and "method" in group_cols:
        value_cols = [f"{m}_{p}" for m in metric_cols for p in ("mean", "ci_low", "ci_high")]
        collapsed = []
        for method in dict.fromkeys(r["method"] for r in records):
            mine = [r for r in records if r["method"] == method]
            same = all(
                not bool(r["seed_dependent"])
                and all(_same_value(r[c], mine[0][c]) for c in value_cols)
                for r in mine
            )
            collapsed += [{**mine[0], "k": "any"}] if same else mine
        records = collapsed
    columns = [*group_cols, "n", *metric_cols]
    lines = [
        "| " + " | ".join(headers.get(c, c) for c in columns) + " |",
        "|" + "|".join("---" if c in group_cols else "---:" for c in columns) + "|",
    ]
    for row in records:
        cells = [str(row[c]) for c in group_cols] + [str(int(row["n"]))]
        for m in metric_cols:
            cells.append(
                estimate_text(
                    row.get(f"{m}_mean", math.nan),
                    row.get(f"{m}_ci_low", math.nan),
                    row.get(f"{m}_ci_high", math.nan),
                    row.get(f"{m}_sd", math.nan),
                    _decimals(m),
                )
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def format_paired_differences(
    table: pd.DataFrame,
    metric_cols: Sequence[str] = ("mae", "rmse", "r2", "auroc_ef_lt_50"),
    decimals: Mapping[str, int] | None = None,
    headers: Mapping[str, str] | None = None,
) -> str:
    """Markdown of a ``paired_differences`` table: 'difference (CI low to high)' cells.

    ``decimals`` per metric (default 2; ``CI_DECIMALS``), ``headers`` names (``CI_HEADERS``).
    """
    metric_cols = list(metric_cols)
    decimals = {**CI_DECIMALS, **(decimals or {})}
    headers = {**CI_HEADERS, **(headers or {})}
    columns = ["comparison", "k", "seed", "n_videos", *[f"Δ {headers[m]}" for m in metric_cols]]
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join(["---", "---", "---", "---:"] + ["---:"] * len(metric_cols)) + "|",
    ]
    for row in table.to_dict(orient="records"):
        k = row["k_a"] if row["k_a"] == row["k_b"] else f"{row['k_a']} vs {row['k_b']}"
        cells = [str(row["comparison"]), str(k), str(row["seed"]), str(int(row["n_videos"]))]
        for m in metric_cols:
            cells.append(
                estimate_text(
                    row[f"{m}_diff"],
                    row[f"{m}_ci_low"],
                    row[f"{m}_ci_high"],
                    None,
                    decimals.get(m, 2),
                )
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


COVERAGE_EF_RANGES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "ef_lt_40": lambda ef: ef < 40.0,
    "ef_40_55": lambda ef: (ef >= 40.0) & (ef <= 55.0),
    "ef_gt_55": lambda ef: ef > 55.0,
}
"""LVEF ranges of the interval's coverage by range (true EF): reduced (< 40), mid-range
(40-55) and normal or above (> 55). A clinician cares most about the low range, where the
synthetic (and EchoNet-Dynamic) videos are few and the errors largest."""


def coverage_by_ef_range(covered: object, ef_true: object, coverage: str) -> dict[str, np.ndarray]:
    """``{<coverage>_<range>: per video covered (0/1) inside the range, NaN outside}`` for
    ``COVERAGE_EF_RANGES``: means over videos (``video_means``) give each range's coverage."""
    hit = np.asarray(covered, dtype=float)
    true = np.asarray(ef_true, dtype=float)
    return {
        f"{coverage}_{name}": np.where(inside(true), hit, math.nan)
        for name, inside in COVERAGE_EF_RANGES.items()
    }


def bootstrap_settings(evaluation: Any) -> dict[str, Any]:
    """``summarise_with_ci`` / ``paired_differences`` keywords from the typed ``evaluation``
    section (``config.EvaluationConfig``)."""
    return {
        "n_resamples": int(evaluation.bootstrap_resamples),
        "bootstrap_seed": int(evaluation.bootstrap_seed),
        "level": float(evaluation.ci_level),
    }


def conformal_by_model(
    predictions: pd.DataFrame,
    alpha: float,
    model_cols: Sequence[str] = ("method", "k", "seed"),
) -> pd.DataFrame:
    """TEST rows with each model's split-conformal interval calibrated on its calibration
    rows (``kshot.calibration_rows``: role ``calibration``, else ``val``).

    ``predictions``: long, the ``model_cols``, ``role`` (val / calibration / test),
    ``FileName``, ``EF_true``, ``EF_pred``. Adds ``half_width``, ``EF_lower``, ``EF_upper``
    and ``covered`` (1.0 when the interval holds the true EF); a model without VAL rows
    gets NaN there.
    """
    from cardiac_pipeline.echo.kshot import calibration_rows

    model_cols = list(model_cols)
    _check_columns(predictions, [*model_cols, "role", *PREDICTION_KEYS], "predictions")
    parts = []
    for _, group in predictions.groupby(model_cols, sort=False, dropna=False):
        val = calibration_rows(group)
        test = group[group["role"] == "test"].copy()
        if len(val):
            residuals = np.abs(val["EF_pred"].to_numpy(float) - val["EF_true"].to_numpy(float))
            half_width = conformal_half_width(residuals, alpha)
            lower, upper = prediction_interval(test["EF_pred"], half_width)
            covered = (test["EF_true"] >= lower) & (test["EF_true"] <= upper)
            test = test.assign(
                half_width=half_width,
                EF_lower=lower,
                EF_upper=upper,
                covered=covered.astype(float),
            )
        else:
            test = test.assign(half_width=math.nan, EF_lower=math.nan, EF_upper=math.nan)
            test["covered"] = math.nan
        parts.append(test)
    return pd.concat(parts, ignore_index=True)


def ci_table_preamble(bootstrap: Mapping[str, Any], alpha: float) -> str:
    """What the cells of a ``format_ci_table`` table mean, for a reader of the markdown."""
    return (
        f"TEST metrics: mean ± SD over seeds ({100 * bootstrap['level']:g}% bootstrap CI over "
        f"TEST videos, {bootstrap['n_resamples']} resamples). n: models (seeds); a model that "
        "uses no k-shot labels counts once (k 'any'). "
        f"{coverage_key(alpha)}: share of TEST videos inside the {100 * (1 - alpha):g}% "
        "conformal interval calibrated on VAL videos that did not pick the epoch.\n\n"
    )


def split_reference_methods(summary: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, float]]:
    """For ``plots.mae_vs_k``: rows of the methods that change with k (lines) and the MAE of
    those that do not (zero-shot, the VAL median: horizontal reference lines)."""
    references = {}
    for method, rows in summary.groupby("method", sort=False):
        if not rows["seed_dependent"].any() and rows["mae_mean"].nunique() == 1:
            references[str(method)] = float(rows["mae_mean"].iloc[0])
    lines = summary[~summary["method"].isin(references)]
    return (lines if len(lines) else summary), references
