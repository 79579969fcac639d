"""Nodes of the benchmark pipeline: every method on identical k-shot splits."""

from __future__ import annotations

import logging
import time
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from cardiac_pipeline.echo import plots
from cardiac_pipeline.echo.clipstore import ClipStore
from cardiac_pipeline.echo.kshot import k_shot_split
from cardiac_pipeline.echo.metrics import (
    ef_metrics,
    format_mean_sd,
    split_baselines,
    summarise_over_seeds,
)
from cardiac_pipeline.model.benchmark import check_methods, layered_recipe, run_method
from cardiac_pipeline.params import check_keys
from cardiac_pipeline.tracking import child_run, flatten_params, log_metrics

logger = logging.getLogger(__name__)

METRICS = ["mae", "rmse", "r2", "auroc_ef_lt_50"]


BENCHMARK_KEYS = ("variant", "work_dir", "recipe", "variants", "methods")
GRID_KEYS = ("shots", "seeds", "val_size", "methods", "recipe")


def _variant(benchmark: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The chosen variant's name and grid (``benchmark.variant``: full or quick)."""
    check_keys("benchmark", benchmark, BENCHMARK_KEYS)
    name = benchmark.get("variant", "full")
    if name not in benchmark["variants"]:
        raise ValueError(f"benchmark.variant {name!r} not in {sorted(benchmark['variants'])}")
    grid = benchmark["variants"][name]
    check_keys(f"benchmark.variants.{name}", grid, GRID_KEYS)
    return name, grid


def make_benchmark_splits(
    video_index: pd.DataFrame, benchmark: dict[str, Any]
) -> dict[str, pd.DataFrame]:
    """One k-shot split per (k, seed) of the variant, shared by every method."""
    _, grid = _variant(benchmark)
    return {
        f"k{k}_seed{seed}": k_shot_split(
            video_index, k=int(k), seed=int(seed), val_size=grid.get("val_size"), val_seed=0
        )
        for k in grid["shots"]
        for seed in grid["seeds"]
    }


def run_benchmark(
    clip_store: ClipStore,
    benchmark_splits: dict[str, pd.DataFrame],
    pretrained_backbone: str,
    benchmark: dict[str, Any],
    backbone: dict[str, Any],
    cardiac_clip: dict[str, Any],
    clips: dict[str, Any],
    training: dict[str, Any],
    evaluation: dict[str, Any],
    frame_features: Any = None,
) -> pd.DataFrame:
    """Metrics of every (method, k, seed); each one is an MLflow run tagged method, k, seed.

    ``frame_features`` (the frame-feature store) is shared by the methods adapted on it.

    The fewshot recipe, with ``benchmark.recipe`` over it (CPU-sized clips and epochs for a
    grid of many runs) and the variant's own ``recipe`` over that (the quick variant's
    shorter adaptation), is the base that every method's own overrides start from.
    """
    variant, grid = _variant(benchmark)
    base = layered_recipe(
        {
            "backbone": backbone,
            "cardiac_clip": cardiac_clip,
            "clips": clips,
            "training": training,
            "evaluation": evaluation,
        },
        [
            ("benchmark.recipe", benchmark.get("recipe")),
            (f"benchmark.variants.{variant}.recipe", grid.get("recipe")),
        ],
    )
    check_methods(benchmark["methods"], list(grid["methods"]), base)
    rows = []
    zero_shot_cache: dict[str, pd.DataFrame] = {}
    for split_name, split in benchmark_splits.items():
        k, seed = int(split["k"].iloc[0]), int(split["seed"].iloc[0])
        test = split[split["role"] == "test"]
        for baseline, values in split_baselines(split, test["EF"]).items():
            rows.append(
                {"method": baseline, "k": k, "seed": seed, **{m: values[m] for m in METRICS}}
            )
        for name in grid["methods"]:
            method = benchmark["methods"][name]
            tags = {"method": name, "k": k, "seed": seed, "pipeline": "benchmark"}
            with child_run(f"{name}-{split_name}", tags) as run_id:
                started = time.perf_counter()
                if method.get("kind") == "zero_shot" and name in zero_shot_cache:
                    predictions = zero_shot_cache[name]  # uses no labels: same for every split
                else:
                    predictions = run_method(
                        name,
                        method,
                        clip_store,
                        split,
                        base=base,
                        pretrained_backbone=pretrained_backbone,
                        cache_dir=benchmark["work_dir"],
                        features=frame_features,
                    )
                    if method.get("kind") == "zero_shot":
                        zero_shot_cache[name] = predictions
                metrics = ef_metrics(predictions["EF_true"], predictions["EF_pred"])
                seconds = time.perf_counter() - started
                if run_id:
                    import mlflow

                    mlflow.log_params(flatten_params({"method": method, "k": k, "seed": seed}))
                log_metrics({**{f"test_{m}": v for m, v in metrics.items()}, "seconds": seconds})
            logger.info("%s %s: MAE %.2f (%.0f s)", name, split_name, metrics["mae"], seconds)
            rows.append(
                {
                    "method": name,
                    "k": k,
                    "seed": seed,
                    "seconds": seconds,
                    **{m: metrics[m] for m in METRICS},
                }
            )
    return pd.DataFrame(rows)


def summarise_benchmark(benchmark_metrics: pd.DataFrame) -> tuple[pd.DataFrame, str, Figure]:
    """Mean ± SD over seeds per (method, k): CSV, markdown table and MAE-versus-k plot."""
    summary = summarise_over_seeds(benchmark_metrics, ["method", "k"], METRICS)
    markdown = format_mean_sd(summary, ["method", "k"], METRICS)
    figure = plots.mae_vs_k(summary)
    log_metrics({f"{r.method}.k{r.k}.mae_mean": r.mae_mean for r in summary.itertuples()})
    logger.info("Benchmark (test set):\n%s", markdown)
    return summary, markdown, figure
