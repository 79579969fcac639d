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
    CI_DECIMALS,
    CI_HEADERS,
    CI_METRICS,
    bootstrap_settings,
    ci_table_preamble,
    conformal_by_model,
    ef_metrics,
    format_ci_table,
    format_paired_differences,
    interval_alpha,
    paired_differences,
    split_baselines,
    split_reference_methods,
    summarise_with_ci,
)
from cardiac_pipeline.echo.uncertainty import coverage_key
from cardiac_pipeline.model.benchmark import check_methods, layered_recipe, run_method
from cardiac_pipeline.params import check_keys
from cardiac_pipeline.tracking import child_run, flatten_params, log_metrics

logger = logging.getLogger(__name__)

METRICS = ["mae", "rmse", "r2", "auroc_ef_lt_50"]


BENCHMARK_KEYS = ("variant", "work_dir", "recipe", "variants", "methods", "comparisons")
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
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Metrics of every (method, k, seed), and their per-video VAL and TEST predictions.

    Each (method, k, seed) is an MLflow run tagged method, k, seed. The predictions (long:
    ``method, k, seed, FileName, role, EF_true, EF_pred``, constants included) let the
    summary give bootstrap and paired CIs and conformal coverage.

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
    rows, predicted = [], []
    zero_shot_cache: dict[str, pd.DataFrame] = {}
    for split_name, split in benchmark_splits.items():
        k, seed = int(split["k"].iloc[0]), int(split["seed"].iloc[0])
        test = split[split["role"] == "test"]
        for baseline, values in split_baselines(split, test["EF"]).items():
            rows.append(
                {"method": baseline, "k": k, "seed": seed, **{m: values[m] for m in METRICS}}
            )
            predicted.append(_constant_predictions(split, values["constant"], baseline, k, seed))
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
                    )
                    if method.get("kind") == "zero_shot":
                        zero_shot_cache[name] = predictions
                predicted.append(predictions.assign(method=name, k=k, seed=seed))
                tested = predictions[predictions["role"] == "test"]
                metrics = ef_metrics(tested["EF_true"], tested["EF_pred"])
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
    columns = ["method", "k", "seed", "FileName", "role", "EF_true", "EF_pred"]
    return pd.DataFrame(rows), pd.concat(predicted, ignore_index=True)[columns]


def _constant_predictions(
    split: pd.DataFrame, constant: float, method: str, k: int, seed: int
) -> pd.DataFrame:
    """A constant baseline's per-video predictions on VAL and TEST (for CIs and intervals)."""
    rows = split[split["role"].isin(["val", "test"])]
    return pd.DataFrame(
        {
            "method": method,
            "k": k,
            "seed": seed,
            "FileName": rows["FileName"].to_numpy(),
            "role": rows["role"].to_numpy(),
            "EF_true": rows["EF"].to_numpy(dtype=float),
            "EF_pred": float(constant),
        }
    )


def summarise_benchmark(
    benchmark_metrics: pd.DataFrame,
    benchmark_predictions: pd.DataFrame,
    benchmark: dict[str, Any],
    evaluation: dict[str, Any],
) -> tuple[pd.DataFrame, str, Figure, pd.DataFrame, str]:
    """Per (method, k): mean ± SD over seeds with a bootstrap CI on TEST, and paired CIs.

    From the per-video predictions: each metric's percentile bootstrap CI over TEST videos,
    the TEST coverage of each model's conformal interval (calibrated on its VAL
    predictions, ``evaluation.interval_alpha``), and ``benchmark.comparisons`` as paired
    bootstrap CIs of the differences (per seed and pooled over seeds). Returns the summary
    CSV and markdown, the MAE-versus-k plot, and the paired differences CSV and markdown.
    """
    alpha = interval_alpha(evaluation)
    coverage = coverage_key(alpha)
    bootstrap = bootstrap_settings(evaluation)
    tested = conformal_by_model(benchmark_predictions, alpha)
    summary = summarise_with_ci(
        tested, ["method", "k"], video_means={coverage: "covered"}, **bootstrap
    )
    if "seconds" in benchmark_metrics:
        seconds = benchmark_metrics.groupby(["method", "k"], as_index=False)["seconds"].mean()
        summary = summary.merge(seconds.rename(columns={"seconds": "seconds_mean"}), how="left")
    columns = [*CI_METRICS, coverage]
    markdown = ci_table_preamble(bootstrap, alpha) + format_ci_table(
        summary, ["method", "k"], columns, decimals=CI_DECIMALS, headers=CI_HEADERS
    )
    lines, references = split_reference_methods(summary)
    figure = plots.mae_vs_k(lines, reference_lines=references)
    present = set(summary["method"])
    comparisons = [
        pair
        for pair in benchmark.get("comparisons") or []
        if all(side.partition("@")[0] in present for side in pair)
    ]
    paired = paired_differences(tested, comparisons, **bootstrap)
    paired_markdown = (
        f"Paired differences A - B on the same TEST videos: {100 * bootstrap['level']:g}% "
        f"bootstrap CI ({bootstrap['n_resamples']} resamples of the videos, the same "
        "resample for both methods and every seed). Negative MAE: A errs less.\n\n"
        + format_paired_differences(paired)
        if len(paired)
        else "No comparison of `benchmark.comparisons` has both methods in this run.\n"
    )
    log_metrics({f"{r.method}.k{r.k}.mae_mean": r.mae_mean for r in summary.itertuples()})
    logger.info("Benchmark (test set):\n%s", markdown)
    logger.info("Paired differences (test set):\n%s", paired_markdown)
    return summary, markdown, figure, paired, paired_markdown
