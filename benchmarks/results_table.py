"""Rewrite the README's results table from stored per-run metrics (no hand-pasted numbers).

Usage:
    python benchmarks/results_table.py                  # from docs/results/fewshot_default_metrics.csv
    python benchmarks/results_table.py --block benchmark   # from docs/results/benchmark_full_metrics.csv
    python benchmarks/results_table.py --metrics data/08_reporting/fewshot_metrics.csv
    python benchmarks/results_table.py --check          # exit 1 if README.md is out of date

``--metrics`` is a metrics CSV with one row per (method, k, seed) (the benchmark's or the
fewshot pipeline's), or a Kedro versioned folder of one (``<name>.csv/<version>/<name>.csv``),
whose newest version is read. The table goes between the ``<!-- <block>:start -->`` and
``<!-- <block>:end -->`` lines of the README: MAE mean ± SD over seeds, one row per method
and one column per k; a method with the same MAE for every seed (it draws no labels: zero
shot, the VAL median) shows it without an SD.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from cardiac_pipeline.echo.metrics import mean_sd_text, summarise_over_seeds

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_METRICS = {
    "results": Path("docs/results/fewshot_default_metrics.csv"),
    "benchmark": Path("docs/results/benchmark_full_metrics.csv"),
}
# Rows in reading order: the method, its ablations, the other learners, then the constants.
METHOD_ORDER = (
    "cardiac_clip",
    "cardiac_clip_mean_pool",
    "cardiac_clip_no_echozoom",
    "cardiac_clip_random_init",
    "cardiac_clip_temporal",
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


def results_block(metrics: pd.DataFrame, source: str, flag: str = "") -> str:
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
        f"from `{source}` (regenerate: `python benchmarks/results_table.py{flag}`).",
        "",
        "| method | " + " | ".join(f"k = {k}" for k in shots) + " |",
        "|---|" + "---:|" * len(shots),
    ]
    cells = summary.set_index(["method", "k"])
    for method in methods:
        row = [_cell(cells.loc[(method, k)]) if (method, k) in cells.index else "–" for k in shots]
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _cell(row: pd.Series) -> str:
    """Mean ± SD; the mean alone where every seed gave the same MAE (no ± 0.00)."""
    sd = row["mae_sd"]
    return mean_sd_text(row["mae_mean"], float("nan") if abs(sd) < 1e-9 else sd)


def markers(block: str) -> tuple[str, str]:
    return f"<!-- {block}:start -->", f"<!-- {block}:end -->"


def rewrite(readme: str, block: str, name: str = "results") -> str:
    """README text with the block between the ``name`` markers replaced (markers kept)."""
    start, end = markers(name)
    if (
        readme.count(start) != 1
        or readme.count(end) != 1
        or readme.index(start) > readme.index(end)
    ):
        raise SystemExit(f"README needs exactly one '{start}' line followed by one '{end}' line")
    head, rest = readme.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{block}{end}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block", choices=sorted(DEFAULT_METRICS), default="results")
    parser.add_argument("--metrics", type=Path, help="default: the block's file in docs/results")
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    parser.add_argument("--check", action="store_true", help="exit 1 if the README differs")
    args = parser.parse_args(argv)
    metrics = args.metrics or DEFAULT_METRICS[args.block]
    metrics_path, readme_path = (p if p.is_absolute() else ROOT / p for p in (metrics, args.readme))
    source = metrics_file(metrics_path)
    shown = source.relative_to(ROOT) if source.is_relative_to(ROOT) else source.name
    text = readme_path.read_text(encoding="utf-8")
    flag = "" if args.block == "results" else f" --block {args.block}"
    new = rewrite(text, results_block(pd.read_csv(source), str(shown), flag), args.block)
    if args.check:
        if new != text:
            print(
                f"{readme_path}: {args.block} table out of date; run "
                f"python benchmarks/results_table.py{flag}"
            )
            return 1
        return 0
    if new != text:
        from cardiac_pipeline.io import atomic_write

        atomic_write(readme_path, lambda f: f.write(new.encode("utf-8")), fsync=False)
    print(f"{readme_path}: {args.block} table from {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
