"""The end-of-run screens: every line within 100 columns, every row whole, '–' for gaps."""

from __future__ import annotations

import math

import pandas as pd

from cardiac_pipeline.reporting.terminal import WIDTH, predictions_screen, summary_screen

PATH = "data/08_reporting/fewshot_summary.md/2026-12-06T09.00.00.000Z/fewshot_summary.md"


def summary(ood: bool) -> pd.DataFrame:
    rows = []
    methods = ["cardiac_clip", "linear_probe_on_a_very_long_method_name_" * 3, "zero_shot"]
    for method in methods:
        for k in (1, 2, 4, 16):
            fixed = method == "zero_shot"
            rows.append(
                {
                    "method": method,
                    "k": k,
                    "n": 1 if fixed else 3,
                    "seed_dependent": not fixed,
                    "mae_mean": 12.3456 if fixed else 10.0 / k,
                    "mae_sd": math.nan if fixed else 0.66,
                    "mae_ci_low": 107.06,
                    "mae_ci_high": 108.51,
                    "coverage_90_mean": math.nan if fixed else 0.913,
                    **({"ood_share_mean": 0.0125} if ood else {}),
                }
            )
    return pd.DataFrame(rows)


def assert_fits(screen: str) -> list[str]:
    lines = screen.splitlines()
    assert all(len(line) <= WIDTH for line in lines), [len(line) for line in lines]
    return lines


def test_fewshot_summary_fits_100_columns_one_line_per_row() -> None:
    lines = assert_fits(summary_screen(summary(ood=True), "Few-shot summary (TEST)", PATH))
    assert lines[0] == "Few-shot summary (TEST)" and lines[-1] == f"Full table: {PATH}"
    header, rows = lines[1], lines[3:-1]
    assert header.split()[:3] == ["method", "k", "n"] and "cover 90%" in header
    assert header.endswith("OOD")
    assert len(rows) == 4 + 4 + 1  # zero_shot: one row, k 'any'
    model = [r for r in rows if r.startswith("cardiac_clip ")]
    assert len(model) == 4 and "5.00 ± 0.66 (107.06–108.51)" in model[1]
    assert model[0].split()[-2:] == ["91%", "1.2%"]
    long = [r for r in rows if r.startswith("linear_probe")]
    assert len(long) == 4 and all("…" in r and r.split()[-1] == "1.2%" for r in long)
    (zero,) = [r for r in rows if r.startswith("zero_shot")]
    assert zero.split()[1:4] == ["any", "1", "12.35"] and zero.split()[-2:] == ["–", "1.2%"]


def test_summary_without_ood_or_k_shows_dashes() -> None:
    table = summary(ood=False).drop(columns=["k"]).drop_duplicates("method")
    lines = assert_fits(summary_screen(table, "Few-shot summary (split file)", PATH))
    rows = lines[3:-1]
    assert len(rows) == 3 and all(row.split()[-1] == "–" for row in rows)
    assert all(row.split()[1] == "–" for row in rows)  # no k column: the split file's model


def test_predictions_screen_shortens_names_and_flags_never_wraps() -> None:
    predictions = pd.DataFrame(
        {
            "file": ["a_very_long_file_name_from_some_clinic_" * 3 + "x.avi", "b.mp4"] * 20,
            "EF_pred": [41.2, math.nan] * 20,
            "EF_lower": [33.0, math.nan] * 20,
            "EF_upper": [49.4, math.nan] * 20,
            "flags": ["out_of_distribution;non_standard_size 80x64;low_fps 12" * 2, ""] * 20,
        }
    )
    path = "data/07_model_output/predictions.csv/v/predictions.csv"
    lines = assert_fits(predictions_screen(predictions, 1, path, report="report.html"))
    assert lines[0] == "Predictions: 40 videos, 1 unreadable"
    rows = lines[3:-3]
    assert len(rows) == 25 and lines[-3] == "… and 15 more videos"
    assert lines[-2:] == [f"Full table: {path}", "Report: report.html"]
    assert rows[0].split()[1:3] == ["41", "33–49"] and "….avi" not in rows[0]
    assert rows[0].split()[0].endswith("x.avi") and "…" in rows[0].split()[0]
    assert rows[1].split() == ["b.mp4", "–", "–", "none"]
