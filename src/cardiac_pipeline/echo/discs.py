"""Single-plane method of discs (modified Simpson's rule) for LV volumes and EF.

EchoNet-Dynamic's labels come from expert tracings of the LV cavity at end-diastole (ED)
and end-systole (ES): a long axis from the apex to the midpoint of the mitral annulus and
~20 chords perpendicular to it. The volume of each frame is

    V = sum_i (pi / 4) * d_i**2 * (L / n)

with L the long-axis length and d_i the n chord lengths. This module computes those
tracings from an LV cavity mask (what the synthetic generator renders) and reads them
back from a VolumeTracings table (what any EchoNet-format folder holds). The reader side
knows nothing of the generator: ingestion uses it on real data too.

Pixel units: tracings are in pixel coordinates of the frame (x = column, y = row, pixel
centres at integer coordinates). Volumes in pixel^3 are turned into millilitres with an
assumed pixel spacing (``DEFAULT_PIXEL_SPACING_CM``); EF is a ratio and does not depend on
it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

# Chords per frame in EchoNet-Dynamic's tracings.
DEFAULT_N_DISCS = 20
# Assumed size of one pixel of a 112x112 EchoNet frame: 1.5 mm, i.e. the frame spans
# 16.8 cm, a typical apical-4-chamber imaging depth. 1 pixel^3 = 0.15^3 mL = 0.003375 mL.
DEFAULT_PIXEL_SPACING_CM = 0.15
VOLUME_TRACINGS_COLUMNS = ("FileName", "X1", "Y1", "X2", "Y2", "Frame")
VIDEO_SUFFIXES = (".avi", ".mp4")


@dataclass(frozen=True)
class DiscTracing:
    """One traced frame: the long axis and the chords, in pixel coordinates.

    ``long_axis`` is ``(2, 2)``: ``[[x_apex, y_apex], [x_base, y_base]]`` (base = mitral
    annulus midpoint). ``chords`` is ``(n, 2, 2)``: ``[[x1, y1], [x2, y2]]`` per disc,
    ordered from apex to base, the first end always on the same side of the axis (so the
    EchoNet loaders' polygon ``x1[1:] + reversed(x2[1:])`` outlines the cavity).
    """

    long_axis: np.ndarray
    chords: np.ndarray

    def rows(self) -> np.ndarray:
        """EchoNet VolumeTracings rows ``(n + 1, 4)`` of X1, Y1, X2, Y2: axis first, then chords."""
        axis = self.long_axis.reshape(1, 4)
        chords = self.chords.reshape(-1, 4)
        return np.concatenate([axis, chords], axis=0)

    def rounded(self, decimals: int) -> DiscTracing:
        """The tracing as it reads back from a CSV written with ``decimals`` digits."""
        return DiscTracing(
            long_axis=np.round(self.long_axis, decimals), chords=np.round(self.chords, decimals)
        )


def volume_from_tracing(
    long_axis: np.ndarray,
    chords: np.ndarray,
    pixel_spacing_cm: float = DEFAULT_PIXEL_SPACING_CM,
) -> float:
    """Method-of-discs volume in mL: ``sum(pi/4 * d_i^2) * L / n`` pixel^3 times spacing^3.

    ``long_axis`` is ``(2, 2)`` (or 4 numbers X1, Y1, X2, Y2); ``chords`` is ``(n, 2, 2)``
    (or ``(n, 4)``).
    """
    axis = np.asarray(long_axis, dtype=float).reshape(4)
    segments = np.asarray(chords, dtype=float).reshape(-1, 4)
    if segments.shape[0] == 0:
        raise ValueError("volume_from_tracing: no chords; need at least one disc")
    length = float(np.hypot(axis[2] - axis[0], axis[3] - axis[1]))
    diameters = np.hypot(segments[:, 2] - segments[:, 0], segments[:, 3] - segments[:, 1])
    cubic_pixels = float(np.sum(np.pi / 4.0 * diameters**2) * length / segments.shape[0])
    return cubic_pixels * pixel_spacing_cm**3


def ejection_fraction(edv: float | np.ndarray, esv: float | np.ndarray) -> float | np.ndarray:
    """EF in percent: ``(EDV - ESV) / EDV * 100``; NaN where EDV is not positive."""
    edv_arr = np.asarray(edv, dtype=float)
    esv_arr = np.asarray(esv, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ef = np.where(edv_arr > 0, (edv_arr - esv_arr) / edv_arr * 100.0, np.nan)
    return float(ef) if ef.ndim == 0 else ef


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample ``image`` at sub-pixel ``(x, y)``; zero outside the frame."""
    padded = np.pad(image, 1)
    xp = np.clip(x + 1.0, 0.0, padded.shape[1] - 1.000001)
    yp = np.clip(y + 1.0, 0.0, padded.shape[0] - 1.000001)
    x0 = np.floor(xp).astype(np.int64)
    y0 = np.floor(yp).astype(np.int64)
    fx = xp - x0
    fy = yp - y0
    top = padded[y0, x0] * (1 - fx) + padded[y0, x0 + 1] * fx
    bottom = padded[y0 + 1, x0] * (1 - fx) + padded[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _run_ends(values: np.ndarray, offsets: np.ndarray, level: float) -> tuple[np.ndarray, ...]:
    """Sub-sample offsets where each row leaves ``values >= level``, walking out from its centre.

    ``values`` is ``(rows, S)`` sampled at ``offsets`` (``S``, symmetric, centre at ``S//2``).
    Returns (low, high) offsets per row; both are 0 where the centre itself is outside.
    """
    centre = values.shape[1] // 2
    inside = values >= level
    step = offsets[1] - offsets[0]
    rows = np.arange(values.shape[0])

    def crossing(direction: int) -> np.ndarray:
        side = inside[:, centre::direction]
        vals = values[:, centre::direction]
        # first sample (walking out) that is outside; the run ends before it
        outside = ~side
        first_out = np.where(outside.any(axis=1), outside.argmax(axis=1), side.shape[1] - 1)
        first_out = np.maximum(first_out, 1)
        v_in = vals[rows, first_out - 1]
        v_out = vals[rows, first_out]
        denom = np.where(v_in - v_out == 0, 1.0, v_in - v_out)
        frac = np.clip((v_in - level) / denom, 0.0, 1.0)
        dist = (first_out - 1 + frac) * step
        return np.where(side[:, 0], dist, 0.0)

    return -crossing(-1), crossing(1)


def trace_lv_cavity(
    mask: np.ndarray,
    n_discs: int = DEFAULT_N_DISCS,
    level: float = 0.5,
    step: float = 0.05,
    apex_up: bool = True,
) -> DiscTracing:
    """Long axis and ``n_discs`` perpendicular chords of an LV cavity mask, as a tracer draws them.

    ``mask`` is ``(H, W)``: boolean, or a soft occupancy in [0, 1] (the boundary is its
    ``level`` crossing, found to sub-pixel precision by bilinear interpolation). The long
    axis is the cavity's principal axis through its centroid, clipped to the boundary; with
    ``apex_up`` (the apical-4-chamber convention: transducer and apex at the top of the
    image) the end nearer the top is the apex, the other the mitral-annulus midpoint.
    Chords sit at the centres of ``n_discs`` equal slices of the axis (midpoint rule).
    """
    full = np.asarray(mask)
    if full.ndim != 2:
        raise ValueError(f"trace_lv_cavity: mask must be (H, W), got shape {full.shape}")
    support_rows = np.flatnonzero(full.any(axis=1))
    support_cols = np.flatnonzero(full.any(axis=0))
    if support_rows.size == 0:
        raise ValueError("trace_lv_cavity: mask is (nearly) empty (area 0.00 pixels)")
    # work on the mask's bounding box (plus a margin): same result, far fewer samples
    top, left = max(int(support_rows[0]) - 2, 0), max(int(support_cols[0]) - 2, 0)
    bottom = min(int(support_rows[-1]) + 3, full.shape[0])
    right = min(int(support_cols[-1]) + 3, full.shape[1])
    weights = np.clip(full[top:bottom, left:right].astype(np.float64), 0.0, 1.0)
    total = weights.sum()
    if total < 4.0:
        raise ValueError(f"trace_lv_cavity: mask is (nearly) empty (area {total:.2f} pixels)")
    height, width = weights.shape
    ys, xs = np.mgrid[0:height, 0:width]
    cx = float((weights * xs).sum() / total)
    cy = float((weights * ys).sum() / total)
    dx = xs - cx
    dy = ys - cy
    cov = np.array(
        [
            [(weights * dx * dx).sum(), (weights * dx * dy).sum()],
            [(weights * dx * dy).sum(), (weights * dy * dy).sum()],
        ]
    )
    eigvals, eigvecs = np.linalg.eigh(cov)
    ux, uy = eigvecs[:, int(np.argmax(eigvals))]
    if (uy < 0) == apex_up:  # make the axis run apex -> base
        ux, uy = -ux, -uy
    reach = float(np.sqrt((dx**2 + dy**2)[weights > 0].max())) + 2.0
    offsets = np.arange(-np.ceil(reach / step), np.ceil(reach / step) + 1) * step
    along = _bilinear(weights, cx + offsets * ux, cy + offsets * uy)[None, :]
    apex_t, base_t = (float(v[0]) for v in _run_ends(along, offsets, level))
    if base_t - apex_t <= 0:
        raise ValueError("trace_lv_cavity: the mask centroid lies outside the cavity")
    cx, cy = cx + left, cy + top  # back to frame coordinates
    weights = np.pad(weights, ((top, full.shape[0] - bottom), (left, full.shape[1] - right)))
    apex = np.array([cx + apex_t * ux, cy + apex_t * uy])
    base = np.array([cx + base_t * ux, cy + base_t * uy])

    positions = apex_t + (np.arange(n_discs) + 0.5) / n_discs * (base_t - apex_t)
    px, py = -uy, ux  # perpendicular; chords start on this side's opposite (x1) end
    centres_x = cx + positions * ux
    centres_y = cy + positions * uy
    sample_x = centres_x[:, None] + offsets[None, :] * px
    sample_y = centres_y[:, None] + offsets[None, :] * py
    across = _bilinear(weights, sample_x, sample_y)
    low, high = _run_ends(across, offsets, level)
    chords = np.stack(
        [
            np.stack([centres_x + low * px, centres_y + low * py], axis=-1),
            np.stack([centres_x + high * px, centres_y + high * py], axis=-1),
        ],
        axis=1,
    )
    return DiscTracing(long_axis=np.stack([apex, base]), chords=chords)


def strip_video_suffix(name: str) -> str:
    """``0X1A...F.avi`` -> ``0X1A...F``: FileList omits the suffix, VolumeTracings keeps it."""
    stem, suffix = os.path.splitext(str(name))
    return stem if suffix.lower() in VIDEO_SUFFIXES else str(name)


def tracing_volumes(tracings: pd.DataFrame, pixel_spacing_cm: float = 1.0) -> pd.DataFrame:
    """Single-plane method-of-discs volume of each traced frame: FileName, Frame, volume.

    Rows of one (FileName, Frame) in file order: the first is the long axis (length L), the
    n after it the disc chords d_i; V = sum_i (pi/4) d_i^2 * L / n, in pixel units times
    ``pixel_spacing_cm`` cubed (mL at cm spacing). A frame with no chord gets NaN.
    """
    length = np.hypot(tracings["X2"] - tracings["X1"], tracings["Y2"] - tracings["Y1"])
    keys = [tracings["FileName"], tracings["Frame"]]
    position = tracings.groupby(keys, sort=False).cumcount()
    work = pd.DataFrame(
        {
            "FileName": tracings["FileName"],
            "Frame": tracings["Frame"],
            "long_axis": length.where(position == 0),
            "chord_sq": (length**2).where(position > 0),
            "is_chord": position > 0,
        }
    )
    grouped = work.groupby(["FileName", "Frame"], sort=False).agg(
        long_axis=("long_axis", "max"),
        chord_sq=("chord_sq", "sum"),
        n_chords=("is_chord", "sum"),
    )
    n = grouped["n_chords"].replace(0, np.nan)
    grouped["volume"] = np.pi / 4 * grouped["chord_sq"] * grouped["long_axis"] / n
    grouped["volume"] *= pixel_spacing_cm**3
    return grouped["volume"].reset_index()


def ejection_fraction_from_tracings(
    tracings: pd.DataFrame,
    pixel_spacing_cm: float = DEFAULT_PIXEL_SPACING_CM,
) -> pd.DataFrame:
    """EDV, ESV and EF per video from VolumeTracings rows in EchoNet's format.

    Rows are grouped by (FileName, Frame) in file order; the first row of each frame is the
    long axis, the rest its chords. Per video, the frame with the largest volume is ED and
    the one with the smallest is ES (EchoNet's convention, whatever the row order). Returns
    one row per video: ``FileName`` (without suffix), ``ED_frame``, ``ES_frame``, ``EDV``,
    ``ESV`` (mL), ``EF`` (%), ``traced_frames``; EF and volumes are NaN for videos with fewer
    than two traced frames (EchoNet's loaders drop those).
    """
    missing = [c for c in VOLUME_TRACINGS_COLUMNS if c not in tracings.columns]
    if missing:
        raise ValueError(f"VolumeTracings table lacks column(s) {missing}")
    out_columns = ["FileName", "ED_frame", "ES_frame", "EDV", "ESV", "EF", "traced_frames"]
    if tracings.empty:
        return pd.DataFrame(columns=out_columns)
    rows = tracings.loc[:, list(VOLUME_TRACINGS_COLUMNS)].copy()
    rows["FileName"] = rows["FileName"].astype(str).map(strip_video_suffix)
    rows["Frame"] = rows["Frame"].astype(int)
    per_frame = tracing_volumes(rows, pixel_spacing_cm).dropna(subset=["volume"])

    by_video = per_frame.groupby("FileName", sort=True)
    ed = per_frame.loc[by_video["volume"].idxmax(), ["FileName", "Frame", "volume"]]
    es = per_frame.loc[by_video["volume"].idxmin(), ["FileName", "Frame", "volume"]]
    table = pd.DataFrame({"FileName": sorted(set(rows["FileName"]))})
    table = table.merge(
        ed.rename(columns={"Frame": "ED_frame", "volume": "EDV"}), on="FileName", how="left"
    ).merge(es.rename(columns={"Frame": "ES_frame", "volume": "ESV"}), on="FileName", how="left")
    table = table.merge(
        by_video.size().rename("traced_frames").reset_index(), on="FileName", how="left"
    )
    table["traced_frames"] = table["traced_frames"].fillna(0).astype(int)
    too_few = table["traced_frames"] < 2
    table.loc[too_few, ["EDV", "ESV", "ED_frame", "ES_frame"]] = np.nan
    table["EF"] = ejection_fraction(table["EDV"].to_numpy(), table["ESV"].to_numpy())
    table["ED_frame"] = table["ED_frame"].astype("Int64")
    table["ES_frame"] = table["ES_frame"].astype("Int64")
    table = table[out_columns]
    return table.reset_index(drop=True)
