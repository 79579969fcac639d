"""Method of discs against volumes worked out by hand (cylinder, ellipsoid, made-up tracings)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cardiac_pipeline.echo.discs import (
    ejection_fraction,
    ejection_fraction_from_tracings,
    strip_video_suffix,
    trace_lv_cavity,
    volume_from_tracing,
)
from cardiac_pipeline.echo.echonet import EchoNetFormatError, read_volume_tracings


def soft_ellipse(
    size: int, cx: float, cy: float, semi_long: float, semi_short: float, angle_deg: float = 0.0
) -> np.ndarray:
    """Supersampled occupancy of an ellipse whose long axis is vertical, then rotated."""
    oversample = 8
    offsets = (np.arange(oversample) + 0.5) / oversample - 0.5
    ys, xs = np.mgrid[0:size, 0:size].astype(float)
    theta = math.radians(angle_deg)
    mask = np.zeros((size, size))
    for dy in offsets:
        for dx in offsets:
            x, y = xs + dx - cx, ys + dy - cy
            along = -x * math.sin(theta) + y * math.cos(theta)
            across = x * math.cos(theta) + y * math.sin(theta)
            mask += (along / semi_long) ** 2 + (across / semi_short) ** 2 <= 1.0
    return mask / oversample**2


def midpoint_rule_ellipsoid(semi_long: float, semi_short: float, n: int = 20) -> float:
    """What 20 exact discs of a prolate ellipsoid give: sum pi/4 d_i^2 L/n."""
    length = 2 * semi_long
    z = -semi_long + (np.arange(n) + 0.5) / n * length
    d = 2 * semi_short * np.sqrt(1 - (z / semi_long) ** 2)
    return float(np.sum(math.pi / 4 * d**2) * length / n)


def test_volume_from_tracing_matches_hand_computed_discs():
    axis = np.array([[10.0, 0.0], [10.0, 10.0]])  # L = 10
    chords = np.array([[[8.0, y], [12.0, y]] for y in np.arange(20) * 0.5 + 0.25])  # d = 4
    expected_px3 = math.pi / 4 * 16 * 10  # 125.66 pixel^3
    assert volume_from_tracing(axis, chords, pixel_spacing_cm=1.0) == pytest.approx(expected_px3)
    # the mL factor is spacing^3
    assert volume_from_tracing(axis, chords, pixel_spacing_cm=0.2) == pytest.approx(
        expected_px3 * 0.008
    )
    # flat EchoNet rows (X1, Y1, X2, Y2) work the same
    assert volume_from_tracing(axis.reshape(4), chords.reshape(-1, 4), 1.0) == pytest.approx(
        expected_px3
    )


def test_trace_of_rectangle_is_a_cylinder():
    mask = np.zeros((112, 112))
    mask[20:60, 40:60] = 1.0  # 40 rows x 20 columns; edges at half pixels
    tracing = trace_lv_cavity(mask)
    (ax, ay), (bx, by) = tracing.long_axis
    assert ay < by  # apex at the top
    assert math.hypot(bx - ax, by - ay) == pytest.approx(40.0, abs=0.05)
    widths = np.hypot(*(tracing.chords[:, 1] - tracing.chords[:, 0]).T)
    assert widths == pytest.approx(np.full(20, 20.0), abs=0.05)
    volume = volume_from_tracing(tracing.long_axis, tracing.chords, pixel_spacing_cm=1.0)
    assert volume == pytest.approx(math.pi / 4 * 20**2 * 40, rel=0.005)


@pytest.mark.parametrize("angle", [0.0, 25.0, -40.0])
def test_trace_of_ellipse_matches_discs_of_the_ellipsoid(angle):
    mask = soft_ellipse(112, 56.0, 50.0, 30.0, 13.0, angle)
    tracing = trace_lv_cavity(mask)
    volume = volume_from_tracing(tracing.long_axis, tracing.chords, pixel_spacing_cm=1.0)
    assert volume == pytest.approx(midpoint_rule_ellipsoid(30.0, 13.0), rel=0.01)
    (ax, ay), (bx, by) = tracing.long_axis
    assert math.hypot(bx - ax, by - ay) == pytest.approx(60.0, abs=0.3)
    assert ay < by  # the end nearer the transducer is the apex
    # chords are perpendicular to the long axis and ordered apex -> base
    axis_dir = np.array([bx - ax, by - ay]) / 60.0
    chord_dirs = tracing.chords[:, 1] - tracing.chords[:, 0]
    cosines = chord_dirs @ axis_dir / np.linalg.norm(chord_dirs, axis=1)
    assert np.abs(cosines).max() < 1e-6
    centres = tracing.chords.mean(axis=1)
    assert np.all(np.diff((centres - [ax, ay]) @ axis_dir) > 0)


def test_binary_mask_is_accepted_and_close_to_soft():
    soft = soft_ellipse(112, 56.0, 50.0, 30.0, 13.0)
    hard = soft >= 0.5
    v_soft = volume_from_tracing(*_pair(trace_lv_cavity(soft)), pixel_spacing_cm=1.0)
    v_hard = volume_from_tracing(*_pair(trace_lv_cavity(hard)), pixel_spacing_cm=1.0)
    assert v_hard == pytest.approx(v_soft, rel=0.03)


def _pair(tracing):
    return tracing.long_axis, tracing.chords


def test_empty_or_bad_mask_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        trace_lv_cavity(np.zeros((112, 112)))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        trace_lv_cavity(np.ones((2, 8, 8)))


def test_ejection_fraction():
    assert ejection_fraction(100.0, 40.0) == pytest.approx(60.0)
    out = ejection_fraction(np.array([50.0, 0.0]), np.array([25.0, 0.0]))
    assert out[0] == pytest.approx(50.0)
    assert math.isnan(out[1])


def _rows(name: str, frame: int, scale: float, n: int = 20) -> list[tuple]:
    """A cylinder tracing (L = 40 * scale, d = 20 * scale) in EchoNet row order."""
    length, width = 40.0 * scale, 20.0 * scale
    rows = [(name, 50.0, 10.0, 50.0, 10.0 + length, frame)]
    for i in range(n):
        y = 10.0 + (i + 0.5) * length / n
        rows.append((name, 50.0 + width / 2, y, 50.0 - width / 2, y, frame))
    return rows


def test_ejection_fraction_from_tracings_in_echonet_format():
    rows = (
        _rows("0XAAA.avi", 12, 0.8)  # ES listed first, as in EchoNet
        + _rows("0XAAA.avi", 40, 1.0)
        + _rows("0XBBB.avi", 70, 1.0)  # ED listed first
        + _rows("0XBBB.avi", 85, 0.5)
        + _rows("0XCCC.avi", 5, 1.0)  # only one traced frame
    )
    table = pd.DataFrame(rows, columns=["FileName", "X1", "Y1", "X2", "Y2", "Frame"])
    result = ejection_fraction_from_tracings(table, pixel_spacing_cm=1.0).set_index("FileName")
    assert list(result.index) == ["0XAAA", "0XBBB", "0XCCC"]
    full = math.pi / 4 * 20**2 * 40
    assert result.loc["0XAAA", "EDV"] == pytest.approx(full)
    assert result.loc["0XAAA", "ESV"] == pytest.approx(full * 0.8**3)
    assert result.loc["0XAAA", "EF"] == pytest.approx((1 - 0.8**3) * 100)
    assert (result.loc["0XAAA", "ED_frame"], result.loc["0XAAA", "ES_frame"]) == (40, 12)
    assert result.loc["0XBBB", "EF"] == pytest.approx((1 - 0.5**3) * 100)
    assert (result.loc["0XBBB", "ED_frame"], result.loc["0XBBB", "ES_frame"]) == (70, 85)
    assert math.isnan(result.loc["0XCCC", "EF"])
    assert result.loc["0XCCC", "traced_frames"] == 1


def test_read_volume_tracings_checks_header_and_names_file(tmp_path):
    good = tmp_path / "VolumeTracings.csv"
    table = pd.DataFrame(
        _rows("0XAAA.avi", 1, 1.0), columns=["FileName", "X1", "Y1", "X2", "Y2", "Frame"]
    )
    good.write_text("\ufeff" + table.to_csv(index=False), encoding="utf-8")  # BOM like EchoNet
    read = read_volume_tracings(good)
    assert list(read.columns) == ["FileName", "X1", "Y1", "X2", "Y2", "Frame"]
    assert (read["FileName"] == "0XAAA").all()  # suffix removed, as in FileList
    bad = tmp_path / "Bad.csv"
    table.drop(columns=["Frame"]).to_csv(bad, index=False)
    with pytest.raises(EchoNetFormatError, match="Bad.csv.*Frame"):
        read_volume_tracings(bad)
    assert read_volume_tracings(tmp_path / "Missing.csv") is None  # tracings are optional


def test_ingestion_and_labels_share_one_disc_volume(tmp_path):
    """The ED/ES frames ingestion reads and the EF recomputed from tracings agree."""
    from cardiac_pipeline.echo.echonet import end_diastole_end_systole_frames

    rows = _rows("0XAAA.avi", 40, 1.0) + _rows("0XAAA.avi", 12, 0.8)
    table = pd.DataFrame(rows, columns=["FileName", "X1", "Y1", "X2", "Y2", "Frame"])
    path = tmp_path / "VolumeTracings.csv"
    table.to_csv(path, index=False)
    frames = end_diastole_end_systole_frames(read_volume_tracings(path)).set_index("FileName")
    labels = ejection_fraction_from_tracings(table).set_index("FileName")
    assert frames.loc["0XAAA"].tolist() == [40, 12]
    assert (labels.loc["0XAAA", "ED_frame"], labels.loc["0XAAA", "ES_frame"]) == (40, 12)


def test_strip_video_suffix():
    assert strip_video_suffix("0X1A2B.avi") == "0X1A2B"
    assert strip_video_suffix("0X1A2B.AVI") == "0X1A2B"
    assert strip_video_suffix("0X1A2B") == "0X1A2B"
