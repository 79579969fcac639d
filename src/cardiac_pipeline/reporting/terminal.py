"""The last screen of a run: compact tables for a terminal, each row one whole line.

Pure text functions (no Kedro, no printing): ``hooks.EndOfRunHook`` prints their result
after the run, outside the log handler, whose fixed columns would wrap a wide table into
fragments. Every line fits ``width`` columns (100 by default): a cell that would not fit
is shortened with '…', never wrapped, and the full table's path follows the table.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import pandas as pd

from cardiac_pipeline.reporting.predict_report import _present  # None, NaN, '' are gaps

WIDTH = 100
MISSING = "–"
PREDICTION_ROWS = 25  # per-video rows shown; the rest are in the full table
_COVERAGE = re.compile(r"^coverage_(\d+)_mean$")


def summary_screen(
    summary: pd.DataFrame,
    title: str,
    full_table: str,
    *,
    ci_level: float = 0.95,
    width: int = WIDTH,
) -> str:
    """One row per (method, k) of a ``summarise_with_ci`` table: MAE ± SD over seeds with
    its CI, the interval's coverage and the out-of-distribution share (``OOD``, '–' when
    the table has no ``ood_share`` column). A method that uses no k-shot labels (same
    numbers at every k, seed-independent) is one row with k 'any'."""
    coverage = next((c for c in summary.columns if _COVERAGE.match(c)), None)
    ood = next((c for c in ("ood_share_mean", "ood_share") if c in summary.columns), None)
    level = f"{100 * ci_level:g}% CI"
    header = ["method", "k", "n", f"MAE ± SD ({level})", _coverage_header(coverage), "OOD"]
    rows = [
        [
            str(row["method"]),
            str(row.get("k", MISSING)),
            str(int(row["n"])),
            _estimate(row),
            _percent(row.get(coverage) if coverage else None),
            _percent(row.get(ood) if ood else None, decimals=1),
        ]
        for row in _one_row_per_reference(summary)
    ]
    lines = [title, *_table(header, rows, width, shrink=((0, 12),), right=(1, 2, 3, 4, 5))]
    return "\n".join([*lines, _clip(f"Full table: {full_table}", width)])


def predictions_screen(
    predictions: pd.DataFrame,
    n_failed: int,
    full_table: str,
    *,
    report: str | None = None,
    width: int = WIDTH,
    max_rows: int = PREDICTION_ROWS,
) -> str:
    """One row per video: file, EF, interval, flags; the first ``max_rows`` videos, then
    where the full table and the ``report`` are."""
    header = ["file", "EF %", "interval", "flags"]
    rows = [
        [
            str(row["file"]),
            _number(row.get("EF_pred")),
            _interval(row.get("EF_lower"), row.get("EF_upper")),
            _text(row.get("flags")) or "none",
        ]
        for row in predictions.head(max_rows).to_dict(orient="records")
    ]
    title = f"Predictions: {_count(len(predictions), 'video')}, {n_failed} unreadable"
    shrink = ((3, 30), (0, 30), (3, 10), (0, 10))  # flags, then file names, then both more
    lines = [title, *_table(header, rows, width, shrink=shrink, right=(1, 2), middle=0)]
    if len(predictions) > max_rows:
        lines.append(f"… and {_count(len(predictions) - max_rows, 'more video')}")
    lines.append(_clip(f"Full table: {full_table}", width))
    if report:
        lines.append(_clip(f"Report: {report}", width))
    return "\n".join(lines)


def _one_row_per_reference(summary: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows; a method with the same seed-independent MAE at every k once, with k 'any'."""
    records = summary.to_dict(orient="records")
    if "k" not in summary.columns:
        return records
    out: list[dict[str, Any]] = []
    for method in dict.fromkeys(r["method"] for r in records):
        mine = [r for r in records if r["method"] == method]
        constant = len({round(float(r["mae_mean"]), 9) for r in mine}) == 1 and not any(
            bool(r.get("seed_dependent", True)) for r in mine
        )
        out += [{**mine[0], "k": "any"}] if constant else mine
    return out


def _table(
    header: Sequence[str],
    rows: list[list[str]],
    width: int,
    *,
    shrink: Sequence[tuple[int, int]],
    right: Sequence[int] = (),
    middle: int | None = None,
) -> list[str]:
    """Header, rule and rows in columns two spaces apart; the ``(column, least width)`` of
    ``shrink`` give up width in turn ('…' at a cell's end, or in the middle for column
    ``middle``) until every line fits."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    for column, least in shrink:
        excess = sum(widths) + 2 * (len(widths) - 1) - width
        least = max(least, len(header[column]))
        if excess > 0 and widths[column] > least:
            widths[column] = max(least, widths[column] - excess)

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, (cell, size) in enumerate(zip(cells, widths, strict=True)):
            cell = _shorten(cell, size, middle=i == middle)
            out.append(cell.rjust(size) if i in right else cell.ljust(size))
        return _clip("  ".join(out).rstrip(), width)

    return [line(header), "-" * min(width, sum(widths) + 2 * (len(widths) - 1))] + [
        line(row) for row in rows
    ]


def _shorten(text: str, size: int, middle: bool = False) -> str:
    if len(text) <= size:
        return text
    if middle:
        head = (size - 1) // 2
        return text[:head] + "…" + text[len(text) - (size - 1 - head) :]
    return text[: size - 1] + "…"


def _clip(line: str, width: int) -> str:
    return _shorten(line, width)


def _text(value: Any) -> str:
    return str(value).strip() if _present(value) else ""


def _number(value: Any, decimals: int = 0) -> str:
    return f"{float(value):.{decimals}f}" if _present(value) else MISSING


def _percent(value: Any, decimals: int = 0) -> str:
    return f"{100 * float(value):.{decimals}f}%" if _present(value) else MISSING


def _interval(low: Any, high: Any) -> str:
    return f"{float(low):.0f}–{float(high):.0f}" if _present(low) and _present(high) else MISSING


def _estimate(row: dict[str, Any]) -> str:
    """'7.78 ± 0.66 (7.06–8.51)': MAE, SD over seeds when there are several, CI."""
    if not _present(row.get("mae_mean")):
        return MISSING
    text = f"{row['mae_mean']:.2f}"
    if _present(row.get("mae_sd")):
        text += f" ± {row['mae_sd']:.2f}"
    if _present(row.get("mae_ci_low")) and _present(row.get("mae_ci_high")):
        text += f" ({row['mae_ci_low']:.2f}–{row['mae_ci_high']:.2f})"
    return text


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _coverage_header(column: str | None) -> str:
    match = _COVERAGE.match(column or "")
    return f"cover {match.group(1)}%" if match else "coverage"
