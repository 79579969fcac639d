"""Evaluation figures: structure of what is drawn, saving to PNG, no pyplot state."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from cardiac_pipeline.echo import plots
from cardiac_pipeline.echo.metrics import mae_by_range, summarise_over_seeds

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TRUE = np.array([40.0, 60.0, 30.0, 70.0])
PRED = np.array([50.0, 64.0, 35.0, 66.0])  # differences +10, +4, +5, -4: bias 3.75


def _save(figure: Figure, path: Path) -> None:
    figure.savefig(path)
    assert path.read_bytes()[:8] == PNG_MAGIC


def _line(ax, label: str):
    matches = [line for line in ax.lines if line.get_label() == label]
    assert len(matches) == 1, f"expected one line labelled {label!r}"
    return matches[0]


def _texts(figure: Figure) -> str:
    return "\n".join(t.get_text() for ax in figure.axes for t in ax.texts)


def test_no_pyplot_figures_are_created(tmp_path: Path) -> None:
    before = plt.get_fignums()
    figure = plots.scatter_pred_vs_true(TRUE, PRED, "test")
    _save(figure, tmp_path / "scatter.png")
    assert plt.get_fignums() == before


def test_scatter_pred_vs_true(tmp_path: Path) -> None:
    figure = plots.scatter_pred_vs_true(TRUE, PRED, "CardiacCLIP 1-shot")
    assert isinstance(figure, Figure)
    (ax,) = figure.axes
    identity = _line(ax, "identity")
    np.testing.assert_allclose(identity.get_xdata(), identity.get_ydata())
    assert ax.get_xlim() == (0.0, 100.0) and ax.get_ylim() == (0.0, 100.0)
    (points,) = ax.collections
    np.testing.assert_allclose(points.get_offsets(), np.column_stack([TRUE, PRED]))
    assert "MAE = 5.75" in _texts(figure)  # (10 + 4 + 5 + 4) / 4
    assert "R²" in _texts(figure)
    assert ax.get_title() == "CardiacCLIP 1-shot"
    assert "LVEF (%)" in ax.get_xlabel() and "LVEF (%)" in ax.get_ylabel()
    _save(figure, tmp_path / "scatter.png")


def test_bland_altman_bias_and_limits_at_right_y(tmp_path: Path) -> None:
    figure = plots.bland_altman(TRUE, PRED, "test")
    (ax,) = figure.axes
    differences = PRED - TRUE
    sd = differences.std(ddof=1)
    assert _line(ax, "bias").get_ydata()[0] == pytest.approx(3.75)
    assert _line(ax, "upper limit").get_ydata()[0] == pytest.approx(3.75 + 1.96 * sd)
    assert _line(ax, "lower limit").get_ydata()[0] == pytest.approx(3.75 - 1.96 * sd)
    (points,) = ax.collections
    np.testing.assert_allclose(
        points.get_offsets(), np.column_stack([(TRUE + PRED) / 2, differences])
    )
    low, high = ax.get_ylim()
    assert low < 3.75 - 1.96 * sd and high > 3.75 + 1.96 * sd
    assert "bias: +3.75" in _texts(figure)
    _save(figure, tmp_path / "bland_altman.png")


def test_bland_altman_single_video_has_no_limits(tmp_path: Path) -> None:
    figure = plots.bland_altman([50.0], [55.0], "one video")
    labels = [line.get_label() for line in figure.axes[0].lines]
    assert "bias" in labels and "upper limit" not in labels
    _save(figure, tmp_path / "ba1.png")


def test_mae_by_range_bar(tmp_path: Path) -> None:
    table = mae_by_range([20.0, 30.0, 50.0, 80.0], [25.0, 28.0, 60.0, 70.0])
    figure = plots.mae_by_range_bar(table)
    (ax,) = figure.axes
    heights = [patch.get_height() for patch in ax.patches]
    # <30: 5, 30–45: 2, 45–55: 10, 55–70: empty (drawn at 0), ≥70: 10
    np.testing.assert_allclose(heights, [5.0, 2.0, 10.0, 0.0, 10.0])
    assert [t.get_text() for t in ax.get_xticklabels()] == table["range"].tolist()
    assert "n=0\n(no videos)" in _texts(figure)
    _save(figure, tmp_path / "by_range.png")
    with pytest.raises(ValueError, match="mae"):
        plots.mae_by_range_bar(table.drop(columns="mae"))


def test_attention_over_frames_panels_and_phase_markers(tmp_path: Path) -> None:
    frames = [np.arange(10, 26, 2), np.arange(0, 8)]
    weights = [np.full(8, 1 / 8), np.linspace(1, 2, 8) / np.linspace(1, 2, 8).sum()]
    figure = plots.attention_over_frames(
        weights, frames, ["video A", "video B"], ed_frames=[12, None], es_frames=[40, np.nan]
    )
    assert len(figure.axes) == 2
    ax_a, ax_b = figure.axes
    assert ax_a.get_title(loc="left") == "video A"
    assert _line(ax_a, "end-diastole (ED)").get_xdata()[0] == 12
    assert _line(ax_a, "uniform 1/T (mean pooling)").get_ydata()[0] == pytest.approx(1 / 8)
    # ES at frame 40 lies outside the clip (frames 10..24): noted, not drawn
    assert "ES frame 40 outside clip" in _texts(figure)
    labels_b = [line.get_label() for line in ax_b.lines]
    assert not any("ED" in label or "ES" in label for label in labels_b)
    np.testing.assert_allclose(_line(ax_b, "attention weight").get_xdata(), frames[1])
    assert ax_a.get_ylim() == ax_b.get_ylim()  # same scale so panels compare
    _save(figure, tmp_path / "attention.png")


def test_attention_over_frames_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="video 0 .*3 weights but 2 frame indices"):
        plots.attention_over_frames([np.ones(3) / 3], [np.arange(2)], ["v"])
    with pytest.raises(ValueError, match="titles has 2 entries"):
        plots.attention_over_frames([np.ones(3) / 3], [np.arange(3)], ["v", "w"])


def test_mae_vs_k(tmp_path: Path) -> None:
    per_seed = pd.DataFrame(
        {
            "method": ["cardiacclip"] * 4 + ["mean_pool"] * 4,
            "k": [1, 1, 8, 8] * 2,
            "mae": [7.0, 7.4, 6.5, 6.7, 7.9, 8.1, 7.2, 7.6],
        }
    )
    summary = summarise_over_seeds(per_seed, ["method", "k"], ["mae"])
    figure = plots.mae_vs_k(summary, reference_lines={"mean predictor": 9.9, "zero-shot": 7.1})
    (ax,) = figure.axes
    assert len(ax.containers) == 2  # one errorbar series a method
    first = ax.containers[0].lines[0]
    np.testing.assert_allclose(first.get_ydata(), [7.2, 6.6])
    assert _line(ax, "mean predictor (9.90)").get_ydata()[0] == pytest.approx(9.9)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"cardiacclip", "mean_pool", "zero-shot (7.10)"} <= set(legend)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "8"]
    _save(figure, tmp_path / "mae_vs_k.png")


def test_mae_vs_k_tells_many_methods_apart() -> None:
    """The benchmark's eight lines (more than the palette's seven colours) stay distinct."""
    summary = pd.DataFrame(
        {"method": [f"m{j}" for j in range(9)], "k": 1, "mae_mean": 9.0, "mae_sd": 0.0}
    )
    (ax,) = plots.mae_vs_k(summary).axes
    styles = {
        (line.get_color(), line.get_marker(), line.get_linestyle())
        for line in (container.lines[0] for container in ax.containers)
    }
    assert len(styles) == 9


def test_training_curves(tmp_path: Path) -> None:
    history = pd.DataFrame(
        {
            "epoch": [1, 2, 3, 4],
            "train_loss": [2.0, 1.5, 1.2, 1.1],
            "val_mae": [9.0, 7.5, 7.8, math.nan],  # last epoch not validated
        }
    )
    figure = plots.training_curves(history)
    loss_ax, val_ax = figure.axes
    np.testing.assert_allclose(loss_ax.lines[0].get_ydata(), history["train_loss"])
    best = _line(val_ax, "best 7.50 @ epoch 2")
    assert best.get_xdata()[0] == 2 and best.get_ydata()[0] == pytest.approx(7.5)
    _save(figure, tmp_path / "training.png")

    two_runs = pd.concat([history.assign(seed=0), history.assign(seed=1)])
    figure = plots.training_curves(two_runs, run_col="seed")
    assert len(figure.axes[0].lines) == 2
    with pytest.raises(ValueError, match="val_mae"):
        plots.training_curves(history.drop(columns="val_mae"))
