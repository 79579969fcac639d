"""Evaluation figures for LVEF prediction, one function a figure, each returning a Figure.

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas attached, never through
pyplot: no global figure registry, no window, no backend switch, so they can be made from
pipeline nodes, worker processes and threads alike. Save with ``fig.savefig(path)``; in a
notebook a returned Figure displays itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cardiac_pipeline.echo.metrics import (
    _as_finite_1d,
    _paired,
    ef_metrics,
    limits_of_agreement,
)

# One style for every figure (Okabe-Ito colours: distinguishable with colour blindness).
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
REFERENCE_COLOURS = ("#555555", "#999999", "#B07AA1", "#8C6D31")
ED_COLOUR = "#0072B2"
ES_COLOUR = "#D55E00"
TITLE_SIZE = 12
LABEL_SIZE = 11
TICK_SIZE = 9.5
NOTE_SIZE = 9.5
DPI = 120
EF_LABEL = "LVEF (%)"
EF_UNIT = "LVEF %"


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)  # attaches itself: savefig / notebook display work without pyplot
    return figure


def _style(ax: Axes, title: str | None, xlabel: str, ylabel: str) -> None:
    if title:
        ax.set_title(title, fontsize=TITLE_SIZE)
    ax.set_xlabel(xlabel, fontsize=LABEL_SIZE)
    ax.set_ylabel(ylabel, fontsize=LABEL_SIZE)
    ax.tick_params(labelsize=TICK_SIZE)
    ax.grid(True, color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _signed(value: float, decimals: int = 2) -> str:
    """'+1.23' / '−1.23' with a typographic minus, as on the axes."""
    return f"{value:+.{decimals}f}".replace("-", "−")


def _point_alpha(n: int) -> float:
    """Opaque points for a handful of videos, translucent for a full test split."""
    return float(np.clip(10.0 / math.sqrt(max(n, 1)), 0.25, 0.85))


def scatter_pred_vs_true(
    y_true: object,
    y_pred: object,
    title: str = "Predicted vs true LVEF",
    ef_limits: tuple[float, float] = (0.0, 100.0),
) -> Figure:
    """Predicted against true LVEF with the identity line; n, MAE, RMSE, R2 in the corner."""
    true, pred = _paired(y_true, y_pred)
    metrics = ef_metrics(true, pred, reduced_ef_thresholds=())
    figure = _new_figure(5.2, 5.0)
    ax = figure.add_subplot()
    ax.plot(ef_limits, ef_limits, color="#555555", linestyle="--", linewidth=1.2, label="identity")
    ax.scatter(
        true,
        pred,
        s=18,
        color=COLOURS[0],
        alpha=_point_alpha(true.size),
        edgecolors="none",
        label="videos",
    )
    ax.set_xlim(ef_limits)
    ax.set_ylim(ef_limits)
    ax.set_aspect("equal")
    r2 = "n/a" if math.isnan(metrics["r2"]) else f"{metrics['r2']:.2f}"
    ax.text(
        0.03,
        0.97,
        f"n = {metrics['n']}\nMAE = {metrics['mae']:.2f}\nRMSE = {metrics['rmse']:.2f}\nR² = {r2}",
        transform=ax.transAxes,
        va="top",
        ha="left",
        fontsize=NOTE_SIZE,
        bbox={"boxstyle": "round,pad=0.4", "facecolor": "white", "edgecolor": "#cccccc"},
    )
    _style(ax, title, f"True {EF_LABEL}", f"Predicted {EF_LABEL}")
    return figure


def bland_altman(
    y_true: object,
    y_pred: object,
    title: str = "Bland-Altman: predicted vs true LVEF",
    z: float = 1.96,
) -> Figure:
    """Difference (pred - true) against the mean of the two, with bias and limits of agreement.

    Lines carry the labels 'bias', 'upper limit' and 'lower limit' (for tests and legends);
    the limits are bias ± z·SD (sample SD) and are left out when SD is undefined (n = 1).
    """
    true, pred = _paired(y_true, y_pred)
    stats = limits_of_agreement(true, pred, z=z)
    mean = (true + pred) / 2.0
    difference = pred - true
    figure = _new_figure(6.4, 4.6)
    ax = figure.add_subplot()
    ax.scatter(
        mean,
        difference,
        s=18,
        color=COLOURS[0],
        alpha=_point_alpha(true.size),
        edgecolors="none",
    )
    ax.axhline(0.0, color="#bbbbbb", linewidth=0.9, label="zero")
    ax.axhline(stats["bias"], color=COLOURS[1], linewidth=1.6, label="bias")
    notes = [("bias", stats["bias"], f"bias: {_signed(stats['bias'])}")]
    if math.isfinite(stats["sd"]):
        for name, sign in (("upper limit", "+"), ("lower limit", "−")):
            value = stats["upper"] if sign == "+" else stats["lower"]
            ax.axhline(value, color=COLOURS[1], linewidth=1.2, linestyle="--", label=name)
            notes.append((name, value, f"bias {sign} {z:g} SD: {_signed(value)}"))
    # Symmetric y range around the data and the lines, so the bias reads against zero.
    extent = max(np.abs(difference).max(), *(abs(v) for _, v, _ in notes), 1.0) * 1.2
    ax.set_ylim(-extent, extent)
    for _, value, text in notes:
        ax.annotate(
            text,
            xy=(1.0, value),
            xycoords=("axes fraction", "data"),
            xytext=(-4, 3),
            textcoords="offset points",
            ha="right",
            va="bottom",
            fontsize=NOTE_SIZE,
            color=COLOURS[1],
            bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none"},
        )
    _style(
        ax,
        title,
        f"Mean of true and predicted {EF_LABEL}",
        f"Predicted − true {EF_LABEL}",
    )
    return figure


def mae_by_range_bar(
    table: pd.DataFrame,
    title: str = "Error by true LVEF range",
    range_col: str = "range",
    mae_col: str = "mae",
    n_col: str = "n",
    sd_col: str | None = None,
) -> Figure:
    """Bars of MAE per true-LVEF range (a ``mae_by_range`` table), n written above each bar.

    ``sd_col`` adds error bars, e.g. the SD over seeds of a summarised table.
    """
    needed = [range_col, mae_col, n_col] + ([sd_col] if sd_col else [])
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ValueError(f"mae_by_range_bar: column(s) {missing} not in table")
    if table.empty:
        raise ValueError("mae_by_range_bar: table has no rows")
    labels = table[range_col].astype(str).tolist()
    mae = table[mae_col].to_numpy(dtype=float)
    counts = table[n_col].to_numpy()
    errors = table[sd_col].to_numpy(dtype=float) if sd_col else None
    figure = _new_figure(max(4.5, 1.0 + 0.9 * len(labels)), 3.8)
    ax = figure.add_subplot()
    x = np.arange(len(labels))
    ax.bar(
        x,
        np.nan_to_num(mae),
        width=0.65,
        color=COLOURS[0],
        yerr=None if errors is None else np.nan_to_num(errors),
        capsize=4 if errors is not None else 0,
        error_kw={"elinewidth": 1.0, "ecolor": "#333333"},
    )
    top = np.nan_to_num(mae + (np.nan_to_num(errors) if errors is not None else 0.0))
    ceiling = max(float(np.max(top)), 1.0) * 1.18
    ax.set_ylim(0.0, ceiling)
    for xi, height, count, value in zip(x, top, counts, mae, strict=True):
        text = f"n={int(count)}" if math.isfinite(value) else f"n={int(count)}\n(no videos)"
        ax.text(xi, height + ceiling * 0.015, text, ha="center", va="bottom", fontsize=NOTE_SIZE)
    ax.set_xticks(x, labels)
    _style(ax, title, f"True {EF_LABEL}", f"MAE ({EF_UNIT})")
    ax.grid(False, axis="x")
    return figure


def _known_frame(frames: Sequence[object] | None, i: int) -> float | None:
    if frames is None:
        return None
    value = frames[i]
    if value is None or value is pd.NA:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def attention_over_frames(
    weights_list: Sequence[object],
    frame_indices_list: Sequence[object],
    titles: Sequence[str],
    ed_frames: Sequence[object] | None = None,
    es_frames: Sequence[object] | None = None,
    uniform_line: bool = True,
) -> Figure:
    """MFL attention weights over the frames of a few videos, one small panel a video.

    x is the source-video frame number of each clip frame, so the end-diastole (ED) and
    end-systole (ES) frames of the tracings (vertical lines, where known and inside the
    clip's span; None/NaN = unknown) show which cardiac phases the model attended to. The
    dotted line is the uniform weight 1/T (mean pooling): frames above it were favoured.
    """
    count = len(weights_list)
    if count == 0:
        raise ValueError("attention_over_frames: no videos given")
    for name, seq in (("frame_indices_list", frame_indices_list), ("titles", titles)):
        if len(seq) != count:
            raise ValueError(f"attention_over_frames: {name} has {len(seq)} entries, want {count}")
    for name, seq in (("ed_frames", ed_frames), ("es_frames", es_frames)):
        if seq is not None and len(seq) != count:
            raise ValueError(f"attention_over_frames: {name} has {len(seq)} entries, want {count}")

    arrays = []
    for i in range(count):
        weights = _as_finite_1d(weights_list[i], f"weights_list[{i}]")
        frames = _as_finite_1d(frame_indices_list[i], f"frame_indices_list[{i}]")
        if weights.shape != frames.shape:
            raise ValueError(
                f"attention_over_frames: video {i} ({titles[i]}) has {weights.size} weights "
                f"but {frames.size} frame indices"
            )
        arrays.append((weights, frames))
    top = max(float(w.max()) for w, _ in arrays) * 1.12

    figure = _new_figure(7.5, 0.9 + 1.9 * count)
    axes = figure.subplots(count, 1, squeeze=False)[:, 0]
    legend: dict[str, object] = {}
    for i, (ax, (weights, frames)) in enumerate(zip(axes, arrays, strict=True)):
        ax.vlines(frames, 0.0, weights, color=COLOURS[2], linewidth=1.6, alpha=0.8)
        ax.plot(frames, weights, "o", color=COLOURS[2], markersize=3.5, label="attention weight")
        if uniform_line:
            ax.axhline(
                1.0 / weights.size,
                color="#777777",
                linestyle=":",
                linewidth=1.2,
                label="uniform 1/T (mean pooling)",
            )
        span = (frames.min(), frames.max())
        pad = max(1.0, 0.02 * (span[1] - span[0]))
        ax.set_xlim(span[0] - pad, span[1] + pad)
        outside = []
        for phase, marks, colour in (("ED", ed_frames, ED_COLOUR), ("ES", es_frames, ES_COLOUR)):
            frame = _known_frame(marks, i)
            if frame is None:
                continue
            if span[0] <= frame <= span[1]:
                name = "end-diastole (ED)" if phase == "ED" else "end-systole (ES)"
                ax.axvline(frame, color=colour, linestyle="--", linewidth=1.4, label=name)
            else:
                outside.append(f"{phase} frame {frame:g} outside clip")
        if outside:
            ax.text(
                0.99,
                0.97,
                "; ".join(outside),
                transform=ax.transAxes,
                ha="right",
                va="top",
                fontsize=NOTE_SIZE - 1,
                color="#555555",
            )
        last = i == count - 1
        _style(ax, None, "Source video frame" if last else "", "Attention")
        ax.set_title(str(titles[i]), fontsize=LABEL_SIZE, loc="left")
        ax.set_ylim(0.0, top)
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    # One legend for the whole figure, above the panels (entries from every panel).
    figure.legend(
        list(legend.values()),
        list(legend.keys()),
        loc="outside upper center",
        ncol=min(len(legend), 3),
        fontsize=NOTE_SIZE,
        frameon=False,
    )
    return figure


# past len(COLOURS) methods the colours repeat; the marker and line style then differ
MARKERS = ("o", "s", "^")


def mae_vs_k(
    summary_df: pd.DataFrame,
    method_col: str = "method",
    k_col: str = "k",
    mean_col: str = "mae_mean",
    sd_col: str = "mae_sd",
    reference_lines: Mapping[str, float] | None = None,
    title: str = "Few-shot LVEF error vs shots per level",
) -> Figure:
    """MAE (mean ± SD over seeds) against k, one line a method (a ``summarise_over_seeds``
    table); ``reference_lines`` adds labelled horizontal lines, e.g. mean predictor, zero-shot.
    """
    needed = [method_col, k_col, mean_col, sd_col]
    missing = [c for c in needed if c not in summary_df.columns]
    if missing:
        raise ValueError(f"mae_vs_k: column(s) {missing} not in table")
    if summary_df.empty:
        raise ValueError("mae_vs_k: table has no rows")
    figure = _new_figure(8.0, 4.4)
    ax = figure.add_subplot()
    methods = list(dict.fromkeys(summary_df[method_col]))  # first-appearance order
    offsets = np.linspace(-0.04, 0.04, len(methods)) if len(methods) > 1 else [0.0]
    for j, method in enumerate(methods):
        rows = summary_df[summary_df[method_col] == method].sort_values(k_col)
        k = rows[k_col].to_numpy(dtype=float)
        ax.errorbar(
            k * 2.0 ** offsets[j],  # small shift on the log axis so error bars do not overlap
            rows[mean_col].to_numpy(dtype=float),
            yerr=np.nan_to_num(rows[sd_col].to_numpy(dtype=float)),
            marker=MARKERS[(j // len(COLOURS)) % len(MARKERS)],
            markersize=5,
            linewidth=1.6,
            linestyle=("-", "--", ":")[(j // len(COLOURS)) % 3],
            capsize=4,
            color=COLOURS[j % len(COLOURS)],
            label=str(method),
        )
    for j, (name, value) in enumerate((reference_lines or {}).items()):
        ax.axhline(
            value,
            color=REFERENCE_COLOURS[j % len(REFERENCE_COLOURS)],
            linestyle=("--", ":", "-.")[j % 3],
            linewidth=1.3,
            label=f"{name} ({value:.2f})",
        )
    ks = np.sort(summary_df[k_col].unique().astype(float))
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [f"{k:g}" for k in ks])
    ax.minorticks_off()
    ax.set_xlim(ks.min() / 1.35, ks.max() * 1.35)
    _style(ax, title, "k (labelled videos per integer LVEF level)", f"Test MAE ({EF_UNIT})")
    ax.legend(fontsize=NOTE_SIZE, frameon=False, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return figure


def training_curves(
    history_df: pd.DataFrame,
    epoch_col: str = "epoch",
    loss_col: str = "train_loss",
    val_col: str = "val_mae",
    run_col: str | None = None,
    title: str | None = "Training",
    loss_label: str = "Loss (CE + KL + L1)",
) -> Figure:
    """Training loss and validation MAE per epoch, side by side; the best epoch (the one
    model selection keeps) is starred. ``run_col`` draws one line per run (e.g. seed)."""
    needed = [epoch_col, loss_col, val_col] + ([run_col] if run_col else [])
    missing = [c for c in needed if c not in history_df.columns]
    if missing:
        raise ValueError(f"training_curves: column(s) {missing} not in history table")
    if history_df.empty:
        raise ValueError("training_curves: history table has no rows")
    figure = _new_figure(9.0, 3.6)
    loss_ax, val_ax = figure.subplots(1, 2)
    runs = [(None, history_df)] if run_col is None else list(history_df.groupby(run_col, sort=True))
    for j, (run, history) in enumerate(runs):
        history = history.sort_values(epoch_col)
        colour = COLOURS[j % len(COLOURS)]
        label = None if run is None else f"{run_col} {run}"
        loss_ax.plot(
            history[epoch_col], history[loss_col], color=colour, linewidth=1.5, label=label
        )
        val = history.dropna(subset=[val_col])
        val_ax.plot(
            val[epoch_col], val[val_col], color=colour, linewidth=1.5, marker=".", label=label
        )
        if not val.empty:
            best = val.loc[val[val_col].idxmin()]
            val_ax.plot(
                best[epoch_col],
                best[val_col],
                "*",
                color=colour,
                markersize=13,
                markeredgecolor="black",
                markeredgewidth=0.6,
                label=f"best {best[val_col]:.2f} @ epoch {best[epoch_col]:g}",
            )
    _style(loss_ax, "Training loss", "Epoch", loss_label)
    _style(val_ax, "Validation MAE", "Epoch", f"MAE ({EF_UNIT})")
    val_ax.legend(fontsize=NOTE_SIZE, frameon=False)
    if run_col is not None:
        loss_ax.legend(fontsize=NOTE_SIZE, frameon=False)
    if title:
        figure.suptitle(title, fontsize=TITLE_SIZE + 1)
    return figure
