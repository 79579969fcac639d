"""Evaluation metrics for LVEF prediction: the one metrics function and its summaries.

Everything here works on plain arrays of ejection fraction in percent (0-100), so the same
numbers come out of a notebook, a test and the evaluation pipeline. The metrics are the
ones readers of the LVEF literature expect next to MAE: RMSE, R2, bias (mean signed error)
and the AUROC of flagging reduced EF (EF < 50 % and EF < 40 %) from the predicted EF.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

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


def format_mean_sd(
    summary: pd.DataFrame,
    group_cols: Sequence[str],
    metric_cols: Sequence[str],
    decimals: int | Mapping[str, int] = 2,
    headers: Mapping[str, str] | None = None,
    show_n: bool = True,
) -> str:
    """Markdown table of a ``summarise_over_seeds`` result, cells like '6.64 ± 0.21'.

    ``decimals`` is one number or a per-metric mapping (e.g. 3 for AUROC); ``headers``
    renames columns for readers (e.g. {'mae': 'MAE (LVEF %)'}).
    """
    group_cols, metric_cols = list(group_cols), list(metric_cols)
    headers = dict(headers or {})
    _check_columns(summary, group_cols, "group_cols")
    needed = [f"{m}_{part}" for m in metric_cols for part in ("mean", "sd")]
    _check_columns(summary, needed + (["n"] if show_n else []), "summary")

    def _decimals(metric: str) -> int:
        if isinstance(decimals, Mapping):
            return int(decimals.get(metric, 2))
        return int(decimals)

    columns = group_cols + (["n"] if show_n else []) + metric_cols
    lines = [
        "| " + " | ".join(headers.get(c, c) for c in columns) + " |",
        "|" + "|".join("---" if c in group_cols else "---:" for c in columns) + "|",
    ]
    # Row dicts keep each column's own type (iterrows would turn k=1 into 1.0 in an
    # all-numeric table).
    for row in summary.to_dict(orient="records"):
        cells = [str(row[c]) for c in group_cols]
        if show_n:
            cells.append(str(int(row["n"])))
        cells += [mean_sd_text(row[f"{m}_mean"], row[f"{m}_sd"], _decimals(m)) for m in metric_cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
