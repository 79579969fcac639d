"""The README's results table is rewritten from stored metrics, between its markers only."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import PROJECT_ROOT

_spec = importlib.util.spec_from_file_location(
    "results_table", PROJECT_ROOT / "benchmarks" / "results_table.py"
)
results_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(results_table)

METRICS = pd.DataFrame(
    {
        "method": ["val_median_predictor", "cardiac_clip", "cardiac_clip", "cardiac_clip"],
        "k": [1, 1, 1, 2],
        "seed": [0, 0, 1, 0],
        "mae": [9.5, 10.0, 12.0, 8.0],
    }
)


def test_table_between_markers_is_replaced_and_the_rest_kept(tmp_path: Path) -> None:
    csv = tmp_path / "metrics.csv"
    METRICS.to_csv(csv, index=False)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:start -->\nstale\n<!-- results:end -->\noutro\n")
    args = ["--metrics", str(csv), "--readme", str(readme)]
    assert results_table.main([*args, "--check"]) == 1
    assert results_table.main(args) == 0
    text = readme.read_text()
    assert text.startswith("intro\n<!-- results:start -->\n") and text.endswith("end -->\noutro\n")
    assert "stale" not in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0] == "| method | k = 1 | k = 2 |"
    # the method first, constants last; mean ± SD over seeds, "–" where a k is missing
    assert rows[1] == "| cardiac_clip | 11.00 ± 1.41 | 8.00 |"
    assert rows[2] == "| val_median_predictor | 9.50 | – |"
    assert results_table.main([*args, "--check"]) == 0


def test_benchmark_block_has_its_own_markers_and_seed_free_rows_show_no_sd(tmp_path: Path) -> None:
    metrics = pd.concat(
        [METRICS, pd.DataFrame({"method": "zero_shot", "k": 1, "seed": [0, 1], "mae": 8.6})]
    )
    csv = tmp_path / "metrics.csv"
    metrics.to_csv(csv, index=False)
    readme = tmp_path / "README.md"
    original = "<!-- results:start -->\nkept\n<!-- results:end -->\n"
    readme.write_text(original + "<!-- benchmark:start -->\nold\n<!-- benchmark:end -->\n")
    args = ["--block", "benchmark", "--metrics", str(csv), "--readme", str(readme)]
    assert results_table.main(args) == 0
    text = readme.read_text()
    assert text.startswith(original) and "old" not in text
    assert "| zero_shot | 8.60 | – |" in text and "--block benchmark" in text


def test_readme_without_markers_is_refused(tmp_path: Path) -> None:
    csv = tmp_path / "metrics.csv"
    METRICS.to_csv(csv, index=False)
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="results:start"):
        results_table.main(["--metrics", str(csv), "--readme", str(readme)])


def test_the_projects_readme_table_matches_its_stored_metrics() -> None:
    assert results_table.main(["--check"]) == 0
    if "<!-- benchmark:start -->" in (PROJECT_ROOT / "README.md").read_text(encoding="utf-8"):
        assert results_table.main(["--block", "benchmark", "--check"]) == 0
