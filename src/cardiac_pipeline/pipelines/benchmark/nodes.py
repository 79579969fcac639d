"""Nodes of the benchmark pipeline: every method on identical k-shot splits, one node per
(method, k, seed) model (a zero-shot model, which sees no labels, is one node for all)."""

from __future__ import annotations

import logging
import time
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from cardiac_pipeline.config import BenchmarkVariantConfig, Recipe, recipe_of, section
from cardiac_pipeline.echo import plots
from cardiac_pipeline.echo.clipstore import ClipStore
from cardiac_pipeline.echo.kshot import EVALUATED_ROLES, k_shot_split
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
    paired_differences,
    split_baselines,
    split_reference_methods,
    summarise_with_ci,
)
from cardiac_pipeline.echo.uncertainty import coverage_key
from cardiac_pipeline.model.benchmark import benchmark_recipe, run_method, variant_grid
from cardiac_pipeline.pipelines.workers import share_cores
from cardiac_pipeline.tracking import child_run, flatten_params, log_metrics

logger = logging.getLogger(__name__)

METRICS = ["mae", "rmse", "r2", "auroc_ef_lt_50"]


def _variant(benchmark: Any) -> tuple[str, BenchmarkVariantConfig]:
    """The chosen variant's name and grid (``benchmark.variant``: full, quick, ...)."""
    return variant_grid(section("benchmark", benchmark))


def split_names(benchmark: Any) -> list[str]:
    """``k<k>_seed<seed>`` of every split of the chosen variant."""
    _, grid = _variant(benchmark)
    return [f"k{k}_seed{seed}" for k in grid.shots for seed in grid.seeds]


def variant_methods(benchmark: Any) -> list[str]:
    """The methods the chosen variant runs, in its order."""
    return list(_variant(benchmark)[1].methods)


def _check_built(benchmark: Any, splits: list[str], methods: list[str]) -> None:
    """Fail when the run's parameters ask for other splits or methods than the pipeline holds."""
    wanted = (split_names(benchmark), variant_methods(benchmark))
    if (sorted(wanted[0]), sorted(wanted[1])) != (sorted(splits), sorted(methods)):
        raise ValueError(
            f"parameters 'benchmark': the run asks for splits {wanted[0]} and methods "
            f"{wanted[1]} but the pipeline was built for {splits} and {methods}; set the "
            "variant and its grid in conf/ or in a run file (kedro run --config ...)"
        )


def make_benchmark_split(
    video_index: pd.DataFrame,
    benchmark: dict[str, Any],
    *,
    k: int,
    seed: int,
    splits: list[str],
    methods: list[str],
) -> pd.DataFrame:
    """The k-shot split of one (k, seed), shared by every method."""
    _check_built(benchmark, splits, methods)
    _, variant = _variant(benchmark)
    return k_shot_split(
        video_index,
        k=int(k),
        seed=int(seed),
        val_size=variant.val_size,
        val_seed=0,
        calibration_size=variant.calibration_size,
    )


def base_recipe(benchmark: Any, **sections: Any) -> Recipe:
    """The fewshot recipe (``sections``: backbone, cardiac_clip, clips, training,
    evaluation) with the benchmark's layers over it (``model.benchmark.benchmark_recipe``)."""
    return benchmark_recipe(recipe_of(**sections), section("benchmark", benchmark))


PREDICTION_COLUMNS = ["method", "k", "seed", "FileName", "role", "EF_true", "EF_pred"]


def _metrics_row(
    name: str, k: int | None, seed: int | None, predictions: pd.DataFrame, seconds: float
) -> pd.DataFrame:
    """The TEST metrics row of one (method, k, seed); ``predictions`` has VAL and TEST.
    No row for a method left out for the backbone (no predictions; the reason is logged)."""
    tested = predictions[predictions["role"] == "test"]
    if tested.empty:
        return pd.DataFrame(columns=["method", "k", "seed", "seconds", *METRICS])
    metrics = ef_metrics(tested["EF_true"], tested["EF_pred"])
    log_metrics({**{f"test_{m}": v for m, v in metrics.items()}, "seconds": seconds})
    return pd.DataFrame(
        [
            {
                "method": name,
                "k": k,
                "seed": seed,
                "seconds": seconds,
                **{m: metrics[m] for m in METRICS},
            }
        ]
    )


def run_benchmark_method(
    clip_store: ClipStore,
    benchmark_split: pd.DataFrame,
    benchmark: dict[str, Any],
    backbone: dict[str, Any],
    cardiac_clip: dict[str, Any],
    clips: dict[str, Any],
    training: dict[str, Any],
    evaluation: dict[str, Any],
    frame_features: Any = None,
    pretrained_backbone: str | None = None,
    *,
    method: str,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train (or fit) one method on one split and test it: its metrics row and per-video
    VAL and TEST predictions (for bootstrap CIs and conformal coverage), and an MLflow
    run tagged method, k, seed under the pipeline's run. ``frame_features``: the store
    shared by the methods adapted on cached features."""
    share_cores()
    base = base_recipe(
        benchmark,
        backbone=backbone,
        cardiac_clip=cardiac_clip,
        clips=clips,
        training=training,
        evaluation=evaluation,
    )
    benchmark = section("benchmark", benchmark)
    k, seed = int(benchmark_split["k"].iloc[0]), int(benchmark_split["seed"].iloc[0])
    settings = benchmark.methods[method]
    tags = {"method": method, "k": k, "seed": seed, "pipeline": "benchmark"}
    with child_run(f"{method}-k{k}_seed{seed}", tags) as run_id:
        started = time.perf_counter()
        predictions = run_method(
            method,
            settings,
            clip_store,
            benchmark_split,
            base=base,
            pretrained_backbone=pretrained_backbone,
            cache_dir=benchmark.work_dir,
            features=frame_features,
        )
        if run_id:
            import mlflow

            logged = {"method": {"kind": settings.kind, "pretrained": settings.pretrained}}
            logged["method"].update(settings.overrides)
            mlflow.log_params(flatten_params({**logged, "k": k, "seed": seed}))
        row = _metrics_row(method, k, seed, predictions, time.perf_counter() - started)
    logger.info(
        "%s k%s_seed%s: MAE %.2f (%.0f s)",
        method,
        k,
        seed,
        row["mae"].iloc[0],
        row["seconds"].iloc[0],
    )
    return row, predictions.assign(method=method, k=k, seed=seed)[PREDICTION_COLUMNS]


def predict_zero_shot(
    clip_store: ClipStore,
    video_index: pd.DataFrame,
    benchmark: dict[str, Any],
    backbone: dict[str, Any],
    cardiac_clip: dict[str, Any],
    clips: dict[str, Any],
    training: dict[str, Any],
    evaluation: dict[str, Any],
    pretrained_backbone: str | None = None,
    *,
    method: str,
) -> pd.DataFrame:
    """A zero-shot method's VAL and TEST predictions: one model, no labels, so one node for
    every split (VAL too, for its conformal interval)."""
    share_cores()
    base = base_recipe(
        benchmark,
        backbone=backbone,
        cardiac_clip=cardiac_clip,
        clips=clips,
        training=training,
        evaluation=evaluation,
    )
    benchmark = section("benchmark", benchmark)
    rows = video_index[video_index["Split"].isin(["VAL", "TEST"])]
    rows = rows.assign(role=rows["Split"].str.lower())
    started = time.perf_counter()
    predictions = run_method(
        method,
        benchmark.methods[method],
        clip_store,
        rows,
        base=base,
        pretrained_backbone=pretrained_backbone,
        cache_dir=benchmark.work_dir,
    )
    return predictions.assign(seconds=time.perf_counter() - started)


def score_zero_shot(
    benchmark_split: pd.DataFrame, zero_shot_predictions: pd.DataFrame, *, method: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The zero-shot predictions on this split's VAL (validation and calibration) and TEST
    videos: its metrics row and per-video predictions."""
    k, seed = int(benchmark_split["k"].iloc[0]), int(benchmark_split["seed"].iloc[0])
    roles = benchmark_split.loc[
        benchmark_split["role"].isin(list(EVALUATED_ROLES)), ["FileName", "role"]
    ]
    predictions = zero_shot_predictions.drop(columns=["role"], errors="ignore").merge(
        roles, on="FileName"
    )
    tags = {"method": method, "k": k, "seed": seed, "pipeline": "benchmark"}
    with child_run(f"{method}-k{k}_seed{seed}", tags):
        seconds = zero_shot_predictions["seconds"]
        row = _metrics_row(
            method, k, seed, predictions, float(seconds.iloc[0]) if len(seconds) else 0.0
        )
    return row, predictions.assign(method=method, k=k, seed=seed)[PREDICTION_COLUMNS]


def score_constant_predictors(benchmark_split: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The constant predictors (training mean, VAL median) on this split: their metrics
    rows and per-video VAL and TEST predictions."""
    k, seed = int(benchmark_split["k"].iloc[0]), int(benchmark_split["seed"].iloc[0])
    test = benchmark_split[benchmark_split["role"] == "test"]
    baselines = split_baselines(benchmark_split, test["EF"])
    rows = pd.DataFrame(
        [
            {"method": baseline, "k": k, "seed": seed, **{m: values[m] for m in METRICS}}
            for baseline, values in baselines.items()
        ]
    )
    predictions = pd.concat(
        [
            _constant_predictions(benchmark_split, values["constant"], baseline, k, seed)
            for baseline, values in baselines.items()
        ],
        ignore_index=True,
    )
    return rows, predictions


def combine_benchmark_tables(*tables: pd.DataFrame) -> pd.DataFrame:
    """Every (method, k, seed)'s rows (metrics, or per-video predictions) in one table."""
    return pd.concat(tables, ignore_index=True)


def _constant_predictions(
    split: pd.DataFrame, constant: float, method: str, k: int, seed: int
) -> pd.DataFrame:
    """A constant baseline's per-video predictions on VAL and TEST (for CIs and intervals)."""
    rows = split[split["role"].isin(list(EVALUATED_ROLES))]
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
    benchmark, evaluation = section("benchmark", benchmark), section("evaluation", evaluation)
    alpha = evaluation.interval_alpha
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
        for pair in benchmark.comparisons
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
