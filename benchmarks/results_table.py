"""Rewrite the README's results table from stored per-run metrics (no hand-pasted numbers).

Usage:
    python benchmarks/results_table.py                  # from docs/results/fewshot_default_metrics.csv
    python benchmarks/results_table.py --metrics data/08_reporting/benchmark_metrics.csv
    python benchmarks/results_table.py --check          # exit 1 if README.md is out of date

``--metrics`` is a metrics CSV with one row per (method, k, seed) (the benchmark's or the
fewshot pipeline's), or a Kedro versioned folder of one (``<name>.csv/<version>/<name>.csv``),
whose newest version is read. The table goes between the ``<!-- results:start -->`` and
``<!-- results:end -->`` lines of the README: MAE mean ± SD over seeds, one row per method
and one column per k.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from cardiac_pipeline.echo.metrics import mean_sd_text, summarise_over_seeds

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_METRICS = Path("docs/results/fewshot_default_metrics.csv")
START, END = "<!-- results:start -->", "<!-- results:end -->"
# Rows in reading order: the method, its ablations, the other learners, then the constants.
METHOD_ORDER = (
    "cardiac_clip",
    "cardiac_clip_mean_pool",
    "cardiac_clip_no_echozoom",
    "cardiac_clip_random_init",
    "zero_shot",
    "linear_probe",
    "echonet_r2plus1d",
    "mean_predictor",
    "val_median_predictor",
)


def metrics_file(path: Path) -> Path:
    """The CSV itself, or the newest version inside a Kedro versioned folder of it."""
    if path.is_file():
        return path
    versions = sorted(path.glob(f"*/{path.name}")) if path.is_dir() else []
    if not versions:
        raise SystemExit(f"{path}: no metrics CSV there; run the benchmark or fewshot pipeline")
    return versions[-1]


def results_block(metrics: pd.DataFrame, source: str) -> str:
    """The markdown between the markers: a caption and one MAE table (method x k)."""
    missing = {"method", "k", "mae"} - set(metrics.columns)
    if missing:
        raise SystemExit(f"{source}: column(s) {sorted(missing)} missing; is it a metrics table?")
    summary = summarise_over_seeds(metrics, ["method", "k"], ["mae"])
    shots = sorted(summary["k"].unique())
    known = [m for m in METHOD_ORDER if m in set(summary["method"])]
    methods = known + sorted(set(summary["method"]) - set(known))
    seeds = sorted(summary["n"].unique())
    lines = [
        f"TEST MAE in LVEF points, mean ± SD over {'/'.join(map(str, seeds))} seeds per cell, "
        f"from `{source}` (regenerate: `python benchmarks/results_table.py`).",
        "",
        "| method | " + " | ".join(f"k = {k}" for k in shots) + " |",
        "|---|" + "---:|" * len(shots),
    ]
    cells = summary.set_index(["method", "k"])
    for method in methods:
        row = [
            mean_sd_text(cells.loc[(method, k), "mae_mean"], cells.loc[(method, k), "mae_sd"])
            if (method, k) in cells.index
            else "–"
            for k in shots
        ]
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def rewrite(readme: str, block: str) -> str:
    """README text with the block between the markers replaced (markers kept)."""
    if (
        readme.count(START) != 1
        or readme.count(END) != 1
        or readme.index(START) > readme.index(END)
    ):
        raise SystemExit(f"README needs exactly one '{START}' line followed by one '{END}' line")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{block}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", type=Path, default=DEFAULT_METRICS)
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    parser.add_argument("--check", action="store_true", help="exit 1 if the README differs")
    args = parser.parse_args(argv)
    metrics_path, readme_path = (
        p if p.is_absolute() else ROOT / p for p in (args.metrics, args.readme)
    )
    source = metrics_file(metrics_path)
    shown = source.relative_to(ROOT) if source.is_relative_to(ROOT) else source.name
    text = readme_path.read_text(encoding="utf-8")
    new = rewrite(text, results_block(pd.read_csv(source), str(shown)))
    if args.check:
        if new != text:
            print(
                f"{readme_path}: results table out of date; run python benchmarks/results_table.py"
            )
            return 1
        return 0
    if new != text:
        from cardiac_pipeline.echo.clipstore import atomic_write

        atomic_write(readme_path, lambda f: f.write(new.encode("utf-8")), fsync=False)
    print(f"{readme_path}: results table from {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
