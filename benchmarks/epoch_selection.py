"""Which epoch the cached stage keeps: the lowest VAL MAE ("best") or the schedule's end ("last").

Trains CardiacCLIP (cached adaptation, the recipe of the benchmark's variant) on the benchmark's
k-shot splits once per rule and prints, per (k, seed) and as means over seeds, each kept
model's MAE on three sets of videos:

  VAL   the ``val_size`` videos that pick the epoch (optimistic for "best" by construction);
  CAL   the ``calibration_size`` other VAL videos, which pick nothing: the fair judge;
  TEST  the benchmark's TEST videos (reported, never used to choose).

Needs the data, the pretrained backbone and the frame features on disk: run
``kedro run --pipeline fewshot`` (or the benchmark) first. From the project root:

    python benchmarks/epoch_selection.py                       # k 1, 8, 16; seeds 0-2; ~5 min
    python benchmarks/epoch_selection.py --shots 1,16 --seeds 0 --csv out.csv
    python benchmarks/epoch_selection.py --rules last --max-batches none   # no batch cap

Runs go under ``data/06_models/epoch_selection`` (resumable); the synthetic data is a
phantom, so its figures say how the rule behaves there, not on EchoNet.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from cardiac_pipeline.config import override, section
from cardiac_pipeline.model.benchmark import run_method
from cardiac_pipeline.pipelines.benchmark.nodes import (
    base_recipe,
    make_benchmark_split,
    split_names,
    variant_methods,
)

RULES = ("best", "last")
SETS = {"val": "VAL", "calibration": "CAL", "test": "TEST"}


def _mae(predictions: pd.DataFrame, role: str) -> float:
    rows = predictions[predictions["role"] == role]
    return float((rows["EF_pred"] - rows["EF_true"]).abs().mean())


def _recipe(params: dict, rule: str, max_batches: int | None | str):
    recipe = base_recipe(
        params["benchmark"],
        **{s: params[s] for s in ("backbone", "cardiac_clip", "clips", "training", "evaluation")},
    )
    cached = {"select_epoch": rule}
    if max_batches != "conf":
        cached["max_batches_per_epoch"] = max_batches
    return override(recipe, {"training": {"cached": cached}}, "epoch_selection")


def run(
    shots: list[int],
    seeds: list[int],
    work_dir: Path,
    rules: list[str],
    max_batches: int | None | str = "conf",
) -> pd.DataFrame:
    """One row per (rule, k, seed): the kept model's MAE on VAL, CAL and TEST."""
    bootstrap_project(Path.cwd())
    rows = []
    with KedroSession.create() as session:
        context = session.load_context()
        catalog, params = context.catalog, context.params
        index, store = catalog.load("video_index"), catalog.load("clip_store")
        features, backbone = catalog.load("frame_features"), catalog.load("pretrained_backbone")
        benchmark = params["benchmark"]
        grid = {"splits": split_names(benchmark), "methods": variant_methods(benchmark)}
        method = section("benchmark", benchmark).methods["cardiac_clip"]
        for rule in rules:
            recipe = _recipe(params, rule, max_batches)
            for k in shots:
                for seed in seeds:
                    split = make_benchmark_split(index, benchmark, k=k, seed=seed, **grid)
                    predictions = run_method(
                        "cardiac_clip",
                        method,
                        store,
                        split,
                        base=recipe,
                        pretrained_backbone=backbone,
                        cache_dir=work_dir,
                        progress=False,
                        features=features,
                    )
                    row = {"rule": rule, "k": k, "seed": seed}
                    row.update({n: round(_mae(predictions, r), 3) for r, n in SETS.items()})
                    rows.append(row)
                    print(", ".join(f"{key} {value}" for key, value in row.items()), flush=True)
    return pd.DataFrame(rows)


def summary(table: pd.DataFrame) -> str:
    """Means over seeds, one line per (k, rule), as a Markdown table."""
    means = table.groupby(["k", "rule"])[list(SETS.values())].mean().round(2).reset_index()
    header = "| k | kept epoch | " + " | ".join(f"{s} MAE" for s in SETS.values()) + " |"
    lines = [header, "|---:|---|" + "---:|" * len(SETS)]
    for _, row in means.iterrows():
        values = " | ".join(f"{row[s]:.2f}" for s in SETS.values())
        lines.append(f"| {row['k']} | {row['rule']} | {values} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", default="1,8,16", help="comma-separated k (default 1,8,16)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--rules", default="best,last", help="select_epoch values to compare")
    parser.add_argument(
        "--max-batches",
        default="conf",
        help="the cached stage's max_batches_per_epoch: a number, none, or conf (default)",
    )
    parser.add_argument("--work-dir", default="data/06_models/epoch_selection", type=Path)
    parser.add_argument("--csv", type=Path, help="also write the per-run table here")
    args = parser.parse_args()
    rules = args.rules.split(",")
    unknown = sorted(set(rules) - set(RULES))
    if unknown:
        parser.error(f"--rules {unknown}: not among {RULES}")
    cap = args.max_batches
    max_batches = None if cap == "none" else cap if cap == "conf" else int(cap)
    table = run(
        [int(k) for k in args.shots.split(",")],
        [int(s) for s in args.seeds.split(",")],
        args.work_dir,
        rules,
        max_batches,
    )
    if args.csv:
        table.round(4).to_csv(args.csv, index=False)
    print(summary(table))


if __name__ == "__main__":
    main()
