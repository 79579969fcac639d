"""The HTML report of a predict run: one self-contained page a clinician can open.

A table of all videos, then per video a few frames, LVEF with its prediction interval,
range probabilities and MFL attention. Plain numpy/pandas/matplotlib: no torch, no Kedro.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from cardiac_pipeline.echo.ood import OOD_FLAG
from cardiac_pipeline.echo.ranges import LVEF_RANGES, RANGE_COLUMNS
from cardiac_pipeline.echo.uncertainty import interval_text


def _present(value: Any) -> bool:
    """False for None, NaN and empty text (a CSV round trip turns '' into NaN)."""
    if value is None:
        return False
    if isinstance(value, float) and not np.isfinite(value):
        return False
    return str(value).strip() not in ("", "nan", "None")


def _number(value: Any, spec: str, missing: str = "–") -> str:
    return format(float(value), spec) if _present(value) else missing


def _interval_cell(row: Any) -> str:
    if _present(row.get("EF_lower")) and _present(row.get("EF_upper")):
        cell = f"{row['EF_lower']:.0f}–{row['EF_upper']:.0f}"
        return f"{cell} (not guaranteed)" if _out_of_distribution(row) else cell
    return "–"


def _out_of_distribution(row: Any) -> bool:
    """The row's flag, also after a CSV round trip (True, 'True'; NA and '' are False)."""
    return str(row.get(OOD_FLAG)).strip().lower() in ("true", "1", "1.0")


def _ood_paragraph(row: Any, level: str) -> str:
    """What a reader sees first for a video unlike the model's calibration videos."""
    score = _number(row.get("ood_score"), ".1f")
    percentile = _number(row.get("ood_percentile"), ".0f")
    return (
        "<p class='flag'><b>Out of distribution:</b> this video is unlike the videos the "
        f"model was calibrated on (distance {score}, above {percentile}% of theirs); its "
        f"{level} is not guaranteed.</p>"
    )


def _png_base64(image: np.ndarray) -> str:
    import base64

    import cv2

    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return base64.b64encode(encoded.tobytes()).decode("ascii")


def _frame_strip(frames: np.ndarray, gap: int = 4) -> np.ndarray:
    """``(K, C, H, W)`` frames side by side as one OpenCV image (grey or BGR)."""
    tiles = []
    for frame in frames:
        tile = frame[0] if frame.shape[0] == 1 else frame.transpose(1, 2, 0)[..., ::-1]
        tiles.append(tile)
        tiles.append(np.full((tile.shape[0], gap, *tile.shape[2:]), 255, np.uint8))
    return np.ascontiguousarray(np.concatenate(tiles[:-1], axis=1))


def _figure_base64(figure: Any) -> str:
    import base64
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _video_label(row: Any) -> str:
    """File name, with the anonymised id of a DICOM when it has one."""
    name = str(row["file"])
    anonymous = row.get("anonymous_id")
    return f"{name} ({anonymous})" if _present(anonymous) else name


def prediction_report_html(
    predictions: pd.DataFrame,
    failures: pd.DataFrame,
    attention: dict[str, dict[str, Any]],
    *,
    title: str = "LVEF predictions",
    model_source: str = "",
    interval_level: float | None = None,
) -> str:
    """A self-contained HTML page: a table of all videos, then per video a few frames, LVEF
    with its prediction interval, range probabilities and MFL attention.

    Images are embedded as base64 PNG, so the page is one file to share. Videos are named
    by file name (DICOM: file name and anonymised id), never by header content. A value
    that is missing reads '–', never 'nan'. ``interval_level`` (0.9) names the interval.
    """
    from html import escape

    from cardiac_pipeline.echo.plots import attention_over_frames

    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}"
        ".video{border-top:2px solid #444;margin-top:1.5em;padding-top:.5em}"
        ".flag{color:#b00}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f"<p>{len(predictions)} videos predicted, {len(failures)} unreadable."
        + (f" Model: <code>{escape(model_source)}</code>" if model_source else "")
        + "</p>",
    ]
    level = f"{100 * interval_level:g}% interval" if interval_level else "interval"
    if len(predictions):
        parts.append(
            "<h2>Summary</h2><table class='summary'><tr><th>file</th><th>LVEF %</th>"
            f"<th>{escape(level)}</th><th>flags</th></tr>"
        )
        for _, row in predictions.iterrows():
            flags = str(row["flags"]) if _present(row.get("flags")) else "none"
            parts.append(
                f"<tr><td>{escape(_video_label(row))}</td><td>{_number(row['EF_pred'], '.0f')}</td>"
                f"<td>{_interval_cell(row)}</td><td>{escape(flags)}</td></tr>"
            )
        parts.append("</table>")
        if interval_level:
            parts.append(
                f"<p>{escape(level)}: split conformal on the model's errors on held-out validation videos; about "
                f"{100 * interval_level:g}% of videos like the validation videos have their "
                "true LVEF inside it (not a guarantee for unlike input: see flags).</p>"
            )
    if len(failures):
        parts.append("<h2>Unreadable files</h2><table><tr><th>file</th><th>reason</th></tr>")
        for _, row in failures.iterrows():
            parts.append(
                f"<tr><td>{escape(str(row['file']))}</td><td>{escape(str(row['reason']))}</td></tr>"
            )
        parts.append("</table>")
    for _, row in predictions.iterrows():
        name = str(row["file"])
        parts.append(f"<div class='video'><h2>{escape(_video_label(row))}</h2>")
        if _out_of_distribution(row):
            parts.append(_ood_paragraph(row, level))
        if interval_level and _interval_cell(row) != "–":
            estimate = interval_text(
                row["EF_pred"], row["EF_lower"], row["EF_upper"], interval_level
            )
            estimate += " (not guaranteed)" if _out_of_distribution(row) else ""
        else:
            estimate = f"EF {_number(row['EF_pred'], '.0f')}"
        spread = (
            f" (SD over {int(row['n_clips'])} clips {row['EF_clip_sd']:.1f})"
            if _present(row.get("EF_clip_sd")) and _present(row.get("n_clips"))
            else ""
        )
        parts.append(
            f"<p><b>{estimate}</b>{spread}; {_number(row.get('n_frames'), '.0f')} frames at "
            f"{_number(row.get('fps'), 'g')} fps</p>"
        )
        flags = str(row.get("flags")) if _present(row.get("flags")) else ""
        flags = ";".join(f for f in flags.split(";") if f and f != OOD_FLAG)
        if flags:
            parts.append(f"<p class='flag'>Input unlike training data: {escape(flags)}</p>")
        cells = "".join(
            f"<tr><td>{escape(r.name.title())}</td><td>{row[c]:.2f}</td></tr>"
            for r, c in zip(LVEF_RANGES, RANGE_COLUMNS, strict=True)
            if c in row and _present(row[c])
        )
        if cells:
            parts.append(f"<table><tr><th>LVEF range</th><th>probability</th></tr>{cells}</table>")
        item = attention.get(name, {})
        if item.get("frames") is not None:
            numbers = ", ".join(str(int(n)) for n in item.get("frame_numbers", []))
            parts.append(
                f"<p>Frames {escape(numbers)}:<br><img alt='frames' "
                f"src='data:image/png;base64,{_png_base64(_frame_strip(item['frames']))}'></p>"
            )
        if item.get("attention") is not None and item.get("frame_indices") is not None:
            weights, indices = np.asarray(item["attention"]), np.asarray(item["frame_indices"])
            figure = attention_over_frames(
                list(weights),
                list(indices),
                [f"clip {i + 1} (from frame {int(ix[0])})" for i, ix in enumerate(indices)],
            )
            parts.append(
                f"<p>MFL attention over time:<br><img alt='attention' "
                f"src='data:image/png;base64,{_figure_base64(figure)}'></p>"
            )
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)
