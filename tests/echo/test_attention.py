import math

import numpy as np
import pytest

from cardiac_pipeline.echo.attention import attention_summary


def test_uniform_weights_read_one_and_a_peak_on_es_reads_high():
    frames = np.arange(0, 32, 4)[None, :]  # one clip, frames 0, 4, ..., 28
    uniform = {"a": {"attention": np.full((1, 8), 1 / 8), "frame_indices": frames}}
    summary = attention_summary(uniform, {"a": (1.0, 13.0)})
    assert summary == pytest.approx(
        {"mfl_entropy": 1.0, "mfl_peak": 1.0, "mfl_ed": 1.0, "mfl_es": 1.0}
    )

    weights = np.full((1, 8), 0.3 / 7)
    weights[0, 3] = 0.7  # frame 12, nearest the ES frame 13
    peaked = attention_summary(
        {"a": {"attention": weights, "frame_indices": frames}}, {"a": (1.0, 13.0)}
    )
    assert peaked["mfl_es"] == pytest.approx(0.7 * 8)
    assert peaked["mfl_ed"] == pytest.approx(0.3 / 7 * 8)
    assert peaked["mfl_entropy"] < 0.8 and peaked["mfl_peak"] == pytest.approx(5.6)


def test_phases_outside_the_clip_or_unknown_are_left_out():
    frames = np.arange(0, 32, 4)[None, :]
    item = {"attention": np.full((1, 8), 1 / 8), "frame_indices": frames}
    summary = attention_summary({"a": item, "b": item}, {"a": (90.0, None), "b": (None, math.nan)})
    assert math.isnan(summary["mfl_ed"]) and math.isnan(summary["mfl_es"])
    assert summary["mfl_entropy"] == pytest.approx(1.0)


def test_mismatched_shapes_name_the_video():
    bad = {"v1": {"attention": np.full((1, 8), 1 / 8), "frame_indices": np.arange(4)[None, :]}}
    with pytest.raises(ValueError, match="v1"):
        attention_summary(bad, {})
