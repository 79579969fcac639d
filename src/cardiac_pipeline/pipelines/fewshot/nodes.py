"""Nodes of the fewshot pipeline, one set per model: k-shot split -> CardiacCLIP -> evaluation;
then every model's metrics combined and summarised over seeds.

Each model is one MLflow run nested under the pipeline's run, tagged with k, seed and
method (``tracking.model_run``, which also works in ParallelRunner's worker processes);
training logs per-epoch metrics there (a run resumed after a crash continues the same
MLflow run), evaluation reopens it for test metrics, plots, predictions and the checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cardiac_pipeline.config import Recipe, recipe_of, record, section
from cardiac_pipeline.echo import plots
from cardiac_pipeline.echo.attention import ATTENTION_KEYS, attention_summary
from cardiac_pipeline.echo.clipstore import ClipStore
from cardiac_pipeline.echo.kshot import k_shot_split, read_split_file
from cardiac_pipeline.echo.metrics import (
    CI_DECIMALS,
    CI_HEADERS,
    bootstrap_ef_metrics,
    bootstrap_settings,
    ci_table_preamble,
    coverage_by_ef_range,
    ef_metrics,
    format_ci_table,
    split_baselines,
    split_reference_methods,
    summarise_with_ci,
)
from cardiac_pipeline.echo.ood import OOD_FLAG
from cardiac_pipeline.echo.uncertainty import coverage_key, prediction_interval
from cardiac_pipeline.io import LOCK_FILE, build_lock
from cardiac_pipeline.model import recipe
from cardiac_pipeline.model.adaptation import adaptation
from cardiac_pipeline.model.benchmark import zero_shot_predictions
from cardiac_pipeline.model.ood import ood_columns
from cardiac_pipeline.pipelines.workers import share_cores
from cardiac_pipeline.tracking import (
    child_run,
    log_history,
    log_metrics,
    log_params,
    loggable_names,
    model_run,
    with_loggable_names,
)

logger = logging.getLogger(__name__)

METRIC_COLUMNS = ["mae", "rmse", "r2", "bias", "auroc_ef_lt_50", "auroc_ef_lt_40"]
OOD_SHARE = "ood_share"  # share of a model's TEST videos flagged out of distribution


USER_SPLIT = "user_split"  # the model trained on ``fewshot.split_file``


def split_name(k: int, seed: int) -> str:
    return f"k{k}_seed{seed}"


def model_names(fewshot: Any) -> list[str]:
    """The models a fewshot run trains: one per (k, seed), or one on the user's split file."""
    fewshot = section("fewshot", fewshot)
    if fewshot.split_file:
        return [USER_SPLIT]
    return [split_name(int(k), int(seed)) for k in fewshot.shots for seed in fewshot.seeds]


def check_grid(fewshot: Any, built: list[str]) -> None:
    """Fail when the parameters at run time ask for other models than the pipeline holds.

    The pipeline is built from the project's configuration (conf/ and ``--config`` run
    files, ``--params`` too where Kedro passes them on before the pipelines are built);
    a grid that differs at run time would otherwise train the old grid under new names.
    """
    wanted = model_names(fewshot)
    if sorted(wanted) != sorted(built):
        raise ValueError(
            f"parameters 'fewshot': the run asks for models {wanted} but the pipeline was "
            f"built for {built}; set fewshot.shots/seeds/split_file in conf/ or in a run "
            "file (kedro run --config conf/runs/<file>.yml), not only at run time"
        )


def make_k_shot_split(
    video_index: pd.DataFrame, fewshot: dict[str, Any], *, k: int, seed: int, built: list[str]
) -> pd.DataFrame:
    """The k-shot split of one (k, seed): k TRAIN videos per EF level, the fixed VAL and TEST."""
    check_grid(fewshot, built)
    grid = section("fewshot", fewshot)
    split = k_shot_split(
        video_index,
        k=int(k),
        seed=int(seed),
        val_size=grid.val_size,
        val_seed=grid.val_seed,
        calibration_size=grid.calibration_size,
    )
    logger.info("k=%s seed=%s: %s", k, seed, split["role"].value_counts().to_dict())
    return split


def read_user_split(
    video_index: pd.DataFrame, fewshot: dict[str, Any], *, built: list[str]
) -> pd.DataFrame:
    """The user's split file (``fewshot.split_file``) as the one split of the run."""
    check_grid(fewshot, built)
    return read_split_file(section("fewshot", fewshot).split_file, video_index)


def model_name(split: pd.DataFrame) -> str:
    """``k<k>_seed<seed>`` of a sampled split, ``user_split`` for a split file without them."""
    k, seed = recipe.split_k_seed(split)
    return split_name(k, seed) if k is not None and seed is not None else USER_SPLIT


def build_frame_features(
    clip_store: ClipStore,
    frame_features_folder: Path,
    backbone: dict[str, Any],
    cardiac_clip: dict[str, Any],
    clips: dict[str, Any],
    training: dict[str, Any],
    *inputs: Any,
    with_checkpoint: bool,
) -> Any:
    """The frozen trunk's features of every video the splits use (TRAIN, VAL and TEST):
    what the cached adaptation modes train and predict on, in its store under
    ``frame_features_folder`` (one per feature key). ``inputs``: the pretrain
    checkpoint first when ``with_checkpoint``, then every model's split.

    Shared by every (k, seed) and every method of the same backbone and scales; a video
    already stored is not encoded again. ``{}`` (no store) when ``training.adaptation`` is
    ``full`` or the backbone starts from random weights.
    """
    from cardiac_pipeline.model.features import (
        FeatureStore,
        build_feature_store,
        feature_precision,
        feature_store_key,
        key_digest,
    )
    from cardiac_pipeline.model.train import resolve_device

    share_cores()
    pretrained_backbone, splits = (inputs[0], inputs[1:]) if with_checkpoint else (None, inputs)
    training = section("training", training)
    if not adaptation(training.adaptation).needs_frame_features:
        return {}
    backbone = recipe.with_pretrained(
        section("backbone", backbone), str(pretrained_backbone) if pretrained_backbone else None
    )
    if not recipe.starts_pretrained(backbone):
        return {}  # a random start trains the whole network (recipe.effective_recipe)
    arch = recipe.Arch(
        backbone=backbone, cardiac_clip=section("cardiac_clip", cardiac_clip), adapters=None
    )
    model = recipe.build_cardiac_clip(arch, seed=0)
    spec = recipe.clip_spec(section("clips", clips))
    names = sorted({str(n) for split in splits for n in split["FileName"]})
    cached_stage = training.cached_stage()
    device = resolve_device(cached_stage.device)
    precision = feature_precision(cached_stage.amp, device)
    key = feature_store_key(model, clip_store, spec, backbone.name, precision)
    root = Path(frame_features_folder) / key_digest(key)
    build_feature_store(model, clip_store, root, names, spec, key=key, device=device)
    return FeatureStore(root)


def train_fewshot_model(
    clip_store: ClipStore,
    k_shot_split: pd.DataFrame,
    backbone: dict[str, Any],
    cardiac_clip: dict[str, Any],
    clips: dict[str, Any],
    training: dict[str, Any],
    evaluation: dict[str, Any],
    frame_features: Any = None,
    pretrained_backbone: Path | None = None,
) -> dict[str, Any]:
    """Train one CardiacCLIP on its split; returns its checkpoint (best validation MAE).

    ``frame_features``: the frame-feature store that the cached adaptation modes train on.

    ``backbone.pretrained: pretrain`` starts from ``pretrained_backbone`` (the pretrain
    pipeline's checkpoint); any other value is passed to the backbone factory as it is.
    VAL is scored with ``evaluation.batch_size`` videos per forward pass, like TEST.
    """
    share_cores()
    typed = recipe_of(
        backbone=backbone,
        cardiac_clip=cardiac_clip,
        clips=clips,
        training=training,
        evaluation=evaluation,
    )
    name = model_name(k_shot_split)
    k, seed = recipe.split_k_seed(k_shot_split)
    typed = _run_recipe(typed, pretrained_backbone, seed)
    tags = {"k": k, "seed": seed, "method": typed.cardiac_clip.method}
    work_dir = recipe.work_folder(clip_store, k_shot_split, typed, features=frame_features)
    # one training per work folder: a run meeting another one training it waits, resumes
    with (
        build_lock(work_dir / LOCK_FILE, f"training {name}"),
        model_run(work_dir, name, tags) as run_id,
    ):
        if run_id:
            arch = {"backbone": record(typed.backbone), "cardiac_clip": record(typed.cardiac_clip)}
            logged = {"clips": record(typed.clips), "training": training, "k": k, "seed": seed}
            log_params({**arch, **logged})
            log_params(
                {"backbone": {"weights_fingerprint": recipe.weights_fingerprint(typed.backbone)}}
            )
            mlflow.log_metric("n_train", int((k_shot_split["role"] == "train").sum()))
        checkpoint, result = recipe.train_on_split(
            clip_store,
            k_shot_split,
            typed,
            on_epoch_end=lambda epoch, metrics: log_metrics(metrics, step=epoch),
            features=frame_features,
        )
        recipe.calibrate_interval(
            checkpoint, clip_store, k_shot_split, typed.evaluation, features=frame_features
        )
        checkpoint["meta"]["mlflow_run_id"] = run_id
        checkpoint["meta"]["split"] = name
        if run_id:
            log_history(result.history)
            _log_figure(plots.training_curves(result.history), "plots/training_curves.png")
            _log_table(result.history, "training_history.csv")
    return checkpoint


def _run_recipe(typed: Recipe, pretrained_backbone: Path | None, seed: int | None) -> Recipe:
    """The recipe of one model: the pretrain checkpoint resolved, the split's seed (a user
    split file records none: 0)."""
    backbone = recipe.with_pretrained(
        typed.backbone, str(pretrained_backbone) if pretrained_backbone else None
    )
    training = dataclasses.replace(typed.training, seed=seed or 0)
    return dataclasses.replace(typed, backbone=backbone, training=training)


def predict_zero_shot_reference(
    clip_store: ClipStore,
    k_shot_split: pd.DataFrame,
    backbone: dict[str, Any],
    clips: dict[str, Any],
    evaluation: dict[str, Any],
    pretrained_backbone: Path | None = None,
) -> pd.DataFrame:
    """The zero-shot CLIP of the run's backbone on the TEST videos (every model of a run
    shares them): the reference that shows what adaptation adds. Empty for a backbone
    that starts from random weights (no CLIP to ask)."""
    share_cores()
    backbone = recipe.with_pretrained(
        section("backbone", backbone), str(pretrained_backbone) if pretrained_backbone else None
    )
    if not recipe.starts_pretrained(backbone):
        return pd.DataFrame(columns=["FileName", "EF_true", "EF_pred"])
    test = k_shot_split[k_shot_split["role"] == "test"]
    n_clips = section("evaluation", evaluation).n_clips
    return zero_shot_predictions(clip_store, test, backbone, section("clips", clips), n_clips)


def evaluate_fewshot_model(
    clip_store: ClipStore,
    video_index: pd.DataFrame,
    k_shot_split: pd.DataFrame,
    fewshot_model: dict[str, Any],
    evaluation: dict[str, Any],
    zero_shot: pd.DataFrame | None = None,
    frame_features: Any = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Figure]]:
    """Test one model: per-video predictions, its metrics rows and its plots.

    Next to the model the references on the same TEST videos: the constants of its split
    and the zero-shot CLIP of its backbone (no labels: what adaptation adds). The per-video
    table holds the model's ``EF_pred`` with its conformal interval (``EF_lower``,
    ``EF_upper``; the checkpoint's ``interval``) and each reference as ``EF_pred_<method>``.
    Metrics rows carry a bootstrap CI (``<m>_ci_low``, ``<m>_ci_high``) of every metric
    and the TEST coverage of the interval.
    """
    share_cores()
    evaluation = section("evaluation", evaluation)
    alpha = evaluation.interval_alpha
    coverage = coverage_key(alpha)
    bootstrap = bootstrap_settings(evaluation)
    name = model_name(k_shot_split)
    k, seed = recipe.split_k_seed(k_shot_split)
    test = k_shot_split[k_shot_split["role"] == "test"]
    table, attention = recipe.predict_on_table(
        clip_store, test, fewshot_model, evaluation, features=frame_features
    )
    table = _with_interval(table, fewshot_model.get("interval"))
    table = _with_ood(table, attention, fewshot_model.get("ood"))
    metrics = _metrics_with_ci(table, table["EF_pred"], bootstrap, _video_means(table, coverage))
    baselines = split_baselines(k_shot_split, table["EF_true"])
    method = fewshot_model["arch"]["cardiac_clip"]["method"]
    metrics.update(_attention_metrics(attention, video_index))
    rows = [{"split": name, "method": method, "k": k, "seed": seed, **metrics}]
    references = {b: np.full(len(table), v["constant"]) for b, v in baselines.items()}
    if zero_shot is not None and len(zero_shot):
        by_file = zero_shot.set_index("FileName")["EF_pred"]
        references[ZERO_SHOT] = by_file.loc[table["FileName"]].to_numpy(dtype=float)
    for reference, values in references.items():
        table[f"EF_pred_{reference}"] = values
        rows.append(
            {
                "split": name,
                "method": reference,
                "k": k,
                "seed": seed,
                **_metrics_with_ci(table, values, bootstrap),
            }
        )
    figures = _evaluation_figures(name, table, attention, video_index, evaluation)
    run_id = fewshot_model["meta"].get("mlflow_run_id")
    if run_id:
        with child_run(name, {}, run_id=run_id):
            log_metrics({f"test_{m}": v for m, v in metrics.items()})
            for baseline, values in baselines.items():
                log_metrics({f"test_{baseline}_{m}": values[m] for m in METRIC_COLUMNS})
            for key, fig in figures.items():
                _log_figure(fig, f"plots/{key}")
            paths = video_index.set_index("FileName")["path"]
            names = loggable_names(paths.loc[table["FileName"]].to_dict())
            _log_table(with_loggable_names(table, "FileName", names), "test_predictions.csv")
            _log_checkpoint(fewshot_model)
    logger.info(
        "%s: test MAE %.2f (references: %s), RMSE %.2f, R2 %.3f, %s %.2f",
        name,
        metrics["mae"],
        ", ".join(f"{r['method']} {r['mae']:.2f}" for r in rows[1:]),
        metrics["rmse"],
        metrics["r2"],
        coverage,
        metrics[coverage],
    )
    if "mfl_entropy" in metrics:
        logger.info(
            "%s: MFL attention (1.0 = mean pooling): entropy %.3f, peak %.2f, at ED %.2f, "
            "at ES %.2f",
            name,
            *(metrics[key] for key in ATTENTION_KEYS),
        )
    return table.assign(split=name), pd.DataFrame(rows), figures


def combine_fewshot_tables(*tables: pd.DataFrame) -> pd.DataFrame:
    """Every model's rows (metrics, or per-video predictions) in one table, grid order."""
    return pd.concat(tables, ignore_index=True)


ZERO_SHOT = "zero_shot"


def _with_interval(table: pd.DataFrame, interval: dict[str, Any] | None) -> pd.DataFrame:
    """TEST predictions with the model's conformal interval (NaN for a model without one)."""
    if not interval:
        return table.assign(EF_lower=math.nan, EF_upper=math.nan, covered=math.nan)
    lower, upper = prediction_interval(table["EF_pred"], float(interval["half_width"]))
    covered = (table["EF_true"] >= lower) & (table["EF_true"] <= upper)
    return table.assign(EF_lower=lower, EF_upper=upper, covered=covered.astype(float))


def _with_ood(
    table: pd.DataFrame, attention: dict[str, Any], description: dict[str, Any] | None
) -> pd.DataFrame:
    """TEST predictions with the out-of-distribution flag (1.0 / 0.0; NaN for a model
    without a description of its calibration videos), its score and percentile."""
    columns = ood_columns(attention, list(table["FileName"]), description)
    columns[OOD_FLAG] = columns[OOD_FLAG].astype("Float64").astype(float)
    return pd.concat([table.reset_index(drop=True), columns], axis=1)


def _video_means(table: pd.DataFrame, coverage: str) -> dict[str, np.ndarray]:
    """Metrics that are means of a per-video value: the coverage, overall and per EF range
    (``echo.metrics.COVERAGE_EF_RANGES``), and the share flagged out of distribution."""
    covered = table["covered"].to_numpy(dtype=float)
    return {
        coverage: covered,
        **coverage_by_ef_range(covered, table["EF_true"], coverage),
        OOD_SHARE: table[OOD_FLAG].to_numpy(dtype=float),
    }


def _metrics_with_ci(
    table: pd.DataFrame,
    pred: object,
    bootstrap: dict[str, Any],
    video_means: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """``ef_metrics`` with each metric's bootstrap CI, and the ``video_means`` (mean over
    the videos where the value is defined; NaN where none is)."""
    metrics = ef_metrics(table["EF_true"], pred)
    means = dict(video_means or {})
    for name, values in means.items():
        defined = values[np.isfinite(values)]
        metrics[name] = float(defined.mean()) if defined.size else math.nan
    intervals = bootstrap_ef_metrics(
        table["EF_true"],
        pred,
        n_resamples=bootstrap["n_resamples"],
        seed=bootstrap["bootstrap_seed"],
        level=bootstrap["level"],
        video_means=means,
    )
    for name, (low, high) in intervals.items():
        metrics[f"{name}_ci_low"], metrics[f"{name}_ci_high"] = low, high
    return metrics


def summarise_fewshot(
    fewshot_metrics: pd.DataFrame,
    fewshot_test_predictions: pd.DataFrame,
    evaluation: dict[str, Any],
) -> tuple[pd.DataFrame, str, Figure]:
    """Per (method, k): mean ± SD over seeds and a bootstrap CI over TEST videos.

    From the per-video predictions, so that a CI is that of the seed-averaged metric on
    the same videos; the references (constants, zero-shot) that do not change with the
    seed count once. Returns a CSV, a markdown table and the MAE-versus-k plot.
    """
    evaluation = section("evaluation", evaluation)
    alpha = evaluation.interval_alpha
    coverage = coverage_key(alpha)
    bootstrap = bootstrap_settings(evaluation)
    by_split = {name: table for name, table in fewshot_test_predictions.groupby("split")}
    long = _long_predictions(fewshot_metrics, by_split)
    user_split = fewshot_metrics["k"].isna().all()  # a split file: one model, no k grid
    groups = ["method"] if user_split else ["method", "k"]
    per_video = _video_means(long, coverage)
    long = long.assign(**per_video)
    means = {name: name for name in per_video}
    summary = summarise_with_ci(long, groups, video_means=means, **bootstrap)
    markdown = ci_table_preamble(bootstrap, alpha) + format_ci_table(
        summary,
        groups,
        [*METRIC_COLUMNS, *means],
        decimals={**CI_DECIMALS, OOD_SHARE: 3},
        headers={**CI_HEADERS, **_range_headers(coverage)},
    )
    if user_split:
        figure = plots.mae_by_range_bar(
            summary, "Test MAE per method (split file)", "method", "mae_mean", "n", "mae_sd"
        )
        log_metrics({f"{row.method}.mae_mean": row.mae_mean for row in summary.itertuples()})
    else:
        lines, references = split_reference_methods(summary)
        figure = plots.mae_vs_k(lines, reference_lines=references)
        log_metrics(
            {f"{row.method}.k{row.k}.mae_mean": row.mae_mean for row in summary.itertuples()}
        )
    if mlflow.active_run() is not None:
        _log_table(summary, "fewshot_summary.csv")
        _log_figure(figure, "plots/mae_vs_k.png")
    logger.info("Few-shot summary (test set):\n%s", markdown)
    return summary, markdown, figure


def _range_headers(coverage: str) -> dict[str, str]:
    """Column titles of the summary's coverage by EF range and OOD share."""
    ranges = {"ef_lt_40": "EF<40", "ef_40_55": "EF 40-55", "ef_gt_55": "EF>55"}
    return {f"{coverage}_{r}": f"{coverage} {label}" for r, label in ranges.items()} | {
        OOD_SHARE: "OOD share"
    }


def _long_predictions(metrics: pd.DataFrame, predictions: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per (split, method, TEST video): the model's and each reference's EF_pred,
    and the model's ``covered`` and ``out_of_distribution`` (NaN for a reference)."""
    parts = []
    for row in metrics[["split", "method", "k", "seed"]].to_dict(orient="records"):
        table = predictions[row["split"]]
        column = f"EF_pred_{row['method']}"
        is_reference = column in table
        parts.append(
            pd.DataFrame(
                {
                    **row,
                    "FileName": table["FileName"].to_numpy(),
                    "EF_true": table["EF_true"].to_numpy(dtype=float),
                    "EF_pred": table[column if is_reference else "EF_pred"].to_numpy(float),
                    **{
                        name: math.nan
                        if is_reference or name not in table
                        else table[name].to_numpy(dtype=float)
                        for name in ("covered", OOD_FLAG)
                    },
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def _evaluation_figures(
    name: str,
    table: pd.DataFrame,
    attention: dict[str, dict[str, Any]],
    video_index: pd.DataFrame,
    evaluation: Any,
) -> dict[str, Figure]:
    from cardiac_pipeline.echo.metrics import mae_by_range

    y_true, y_pred = table["EF_true"], table["EF_pred"]
    figures = {
        "scatter.png": plots.scatter_pred_vs_true(
            y_true, y_pred, title=f"{name}: predicted vs true LVEF"
        ),
        "bland_altman.png": plots.bland_altman(y_true, y_pred, title=f"{name}: Bland-Altman"),
        "mae_by_range.png": plots.mae_by_range_bar(
            mae_by_range(y_true, y_pred), title=f"{name}: error by LVEF range"
        ),
    }
    n_videos = evaluation.attention_plot_videos
    if n_videos and attention:
        chosen = _attention_examples(table, n_videos)
        meta = video_index.set_index("FileName")
        weights, frames, titles, ed, es = [], [], [], [], []
        for file_name in chosen:
            item = attention[file_name]
            weights.append(item["attention"][0])
            frames.append(item["frame_indices"][0])
            row = table.set_index("FileName").loc[file_name]
            titles.append(f"{file_name}: EF {row.EF_true:.0f}%, predicted {row.EF_pred:.0f}%")
            ed.append(meta.loc[file_name].get("ED_frame") if file_name in meta.index else None)
            es.append(meta.loc[file_name].get("ES_frame") if file_name in meta.index else None)
        figures["mfl_attention.png"] = plots.attention_over_frames(
            weights, frames, titles, ed_frames=ed, es_frames=es
        )
    return figures


def _attention_metrics(
    attention: dict[str, dict[str, Any]], video_index: pd.DataFrame
) -> dict[str, float]:
    """``echo.attention`` summaries of the model's MFL weights on TEST against the traced
    ED/ES frames (none for a model without attention)."""
    if not attention:
        return {}
    columns = [c for c in ("ED_frame", "ES_frame") if c in video_index]
    meta = video_index.set_index("FileName")[columns].reindex(list(attention))

    def frame(value: Any) -> float | None:
        return None if value is None or pd.isna(value) else float(value)

    phases = {
        name: (frame(row.get("ED_frame")), frame(row.get("ES_frame")))
        for name, row in meta.to_dict(orient="index").items()
    }
    return attention_summary(attention, phases)


def _attention_examples(table: pd.DataFrame, n: int) -> list[str]:
    """Videos spread over the EF range (lowest to highest true EF)."""
    ordered = table.sort_values("EF_true")["FileName"].tolist()
    if len(ordered) <= n:
        return ordered
    step = (len(ordered) - 1) / (n - 1) if n > 1 else 0
    return [ordered[round(i * step)] for i in range(n)]


def _log_figure(fig: Figure, artifact_file: str) -> None:
    if mlflow.active_run() is not None:
        mlflow.log_figure(fig, artifact_file)


def _log_table(table: pd.DataFrame, file_name: str) -> None:
    if mlflow.active_run() is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / file_name
        table.to_csv(path, index=False)
        mlflow.log_artifact(str(path))


def _log_checkpoint(checkpoint: dict[str, Any]) -> None:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cardiac_clip.pt"
        torch.save(checkpoint, path)
        mlflow.log_artifact(str(path), artifact_path="model")
