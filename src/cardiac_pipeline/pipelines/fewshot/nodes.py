"""Nodes of the fewshot pipeline, one set per model: k-shot split -> CardiacCLIP -> evaluation;
then every model's metrics combined and summarised over seeds.

Each model is one MLflow run nested under the pipeline's run, tagged with k, seed and
method (``tracking.model_run``, which also works in ParallelRunner's worker processes);
training logs per-epoch metrics there (a run resumed after a crash continues the same
MLflow run), evaluation reopens it for test metrics, plots, predictions and the checkpoint.
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cardiac_pipeline.config import FewshotConfig, build_section, keys_of
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
    ef_metrics,
    format_ci_table,
    interval_alpha,
    split_baselines,
    split_reference_methods,
    summarise_with_ci,
)
from cardiac_pipeline.echo.uncertainty import coverage_key, prediction_interval
from cardiac_pipeline.model import recipe
from cardiac_pipeline.model.benchmark import zero_shot_predictions
from cardiac_pipeline.params import check_keys
from cardiac_pipeline.pipelines.workers import share_cores
from cardiac_pipeline.tracking import (
    child_run,
    log_history,
    log_metrics,
    log_params,
    model_run,
)

logger = logging.getLogger(__name__)

METRIC_COLUMNS = ["mae", "rmse", "r2", "bias", "auroc_ef_lt_50", "auroc_ef_lt_40"]
FEWSHOT_KEYS = keys_of(FewshotConfig)


USER_SPLIT = "user_split"  # the model trained on ``fewshot.split_file``


def split_name(k: int, seed: int) -> str:
    return f"k{k}_seed{seed}"


def model_names(fewshot: dict[str, Any]) -> list[str]:
    """The models a fewshot run trains: one per (k, seed), or one on the user's split file."""
    check_keys("fewshot", fewshot, FEWSHOT_KEYS)
    if fewshot.get("split_file"):
        return [USER_SPLIT]
    return [split_name(int(k), int(seed)) for k in fewshot["shots"] for seed in fewshot["seeds"]]


def check_grid(fewshot: dict[str, Any], built: list[str]) -> None:
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
    grid = build_section(FewshotConfig, fewshot, "fewshot")
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
    return read_split_file(fewshot["split_file"], video_index)


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
    mode, cached_stage, _ = recipe.adaptation_settings(training)
    if mode == "full":
        return {}
    backbone = recipe.with_pretrained(
        backbone, str(pretrained_backbone) if pretrained_backbone else None
    )
    if not recipe.starts_pretrained({"backbone": backbone}):
        return {}  # a random start trains the whole network (recipe: adaptation full)
    model = recipe.build_cardiac_clip({"backbone": backbone, "cardiac_clip": cardiac_clip}, seed=0)
    spec = recipe.clip_spec(clips)
    names = sorted({str(n) for split in splits for n in split["FileName"]})
    device = resolve_device(cached_stage.get("device", "auto"))
    precision = feature_precision(str(cached_stage.get("amp", "auto")), device)
    key = feature_store_key(model, clip_store, spec, backbone["name"], precision)
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
    recipe.check_recipe(
        {
            "backbone": backbone,
            "cardiac_clip": cardiac_clip,
            "clips": clips,
            "training": training,
            "evaluation": evaluation,
        }
    )
    backbone = recipe.with_pretrained(
        backbone, str(pretrained_backbone) if pretrained_backbone else None
    )
    arch = {"backbone": backbone, "cardiac_clip": cardiac_clip}
    name = model_name(k_shot_split)
    k, seed = recipe.split_k_seed(k_shot_split)
    tags = {"k": k, "seed": seed, "method": cardiac_clip.get("method", "cardiac_clip")}
    run_training = {**training, "seed": seed}
    work_dir = recipe.work_folder(
        clip_store,
        k_shot_split,
        arch=arch,
        clips=clips,
        training=run_training,
        features=frame_features,
    )
    with model_run(work_dir, name, tags) as run_id:
        if run_id:
            log_params({**arch, "clips": clips, "training": training, "k": k, "seed": seed})
            log_params({"backbone": {"weights_fingerprint": recipe.weights_fingerprint(arch)}})
            mlflow.log_metric("n_train", int((k_shot_split["role"] == "train").sum()))
        checkpoint, result = recipe.train_on_split(
            clip_store,
            k_shot_split,
            arch=arch,
            clips=clips,
            training=run_training,
            eval_batch_size=int(evaluation.get("batch_size", 1)),
            on_epoch_end=lambda epoch, metrics: log_metrics(metrics, step=epoch),
            features=frame_features,
        )
        recipe.calibrate_interval(
            checkpoint, clip_store, k_shot_split, evaluation, features=frame_features
        )
        checkpoint["meta"]["mlflow_run_id"] = run_id
        checkpoint["meta"]["split"] = name
        if run_id:
            log_history(result.history)
            _log_figure(plots.training_curves(result.history), "plots/training_curves.png")
            _log_table(result.history, "training_history.csv")
    return checkpoint


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
        backbone, str(pretrained_backbone) if pretrained_backbone else None
    )
    if not recipe.starts_pretrained({"backbone": backbone}):
        return pd.DataFrame(columns=["FileName", "EF_true", "EF_pred"])
    settings = {
        "backbone": backbone,
        "clips": clips,
        "evaluation": {"n_clips": evaluation.get("n_clips", 2)},
    }
    test = k_shot_split[k_shot_split["role"] == "test"]
    return zero_shot_predictions(clip_store, test, settings)


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
    alpha = interval_alpha(evaluation)
    coverage = coverage_key(alpha)
    bootstrap = bootstrap_settings(evaluation)
    name = model_name(k_shot_split)
    k, seed = recipe.split_k_seed(k_shot_split)
    test = k_shot_split[k_shot_split["role"] == "test"]
    table, attention = recipe.predict_on_table(
        clip_store, test, fewshot_model, evaluation, features=frame_features
    )
    table = _with_interval(table, fewshot_model.get("interval"))
    metrics = _metrics_with_ci(table, table["EF_pred"], bootstrap, coverage, table["covered"])
    baselines = split_baselines(k_shot_split, table["EF_true"])
    method = fewshot_model["arch"]["cardiac_clip"].get("method", "cardiac_clip")
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
            _log_table(table, "test_predictions.csv")
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


def _metrics_with_ci(
    table: pd.DataFrame,
    pred: object,
    bootstrap: dict[str, Any],
    coverage: str | None = None,
    covered: object = None,
) -> dict[str, float]:
    """``ef_metrics`` with each metric's bootstrap CI and, given ``covered``, the coverage."""
    metrics = ef_metrics(table["EF_true"], pred)
    means = {}
    if coverage is not None:
        covered = np.asarray(covered, dtype=float)
        metrics[coverage] = float(covered.mean()) if np.isfinite(covered).all() else math.nan
        if np.isfinite(covered).all():
            means[coverage] = covered
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
    alpha = interval_alpha(evaluation)
    coverage = coverage_key(alpha)
    bootstrap = bootstrap_settings(evaluation)
    by_split = {name: table for name, table in fewshot_test_predictions.groupby("split")}
    long = _long_predictions(fewshot_metrics, by_split)
    user_split = fewshot_metrics["k"].isna().all()  # a split file: one model, no k grid
    groups = ["method"] if user_split else ["method", "k"]
    summary = summarise_with_ci(long, groups, video_means={coverage: "covered"}, **bootstrap)
    markdown = ci_table_preamble(bootstrap, alpha) + format_ci_table(
        summary,
        groups,
        [*METRIC_COLUMNS, coverage],
        decimals=CI_DECIMALS,
        headers=CI_HEADERS,
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


def _long_predictions(metrics: pd.DataFrame, predictions: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per (split, method, TEST video): the model's and each reference's EF_pred."""
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
                    "covered": math.nan
                    if is_reference or "covered" not in table
                    else table["covered"].to_numpy(dtype=float),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def _evaluation_figures(
    name: str,
    table: pd.DataFrame,
    attention: dict[str, dict[str, Any]],
    video_index: pd.DataFrame,
    evaluation: dict[str, Any],
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
    n_videos = int(evaluation.get("attention_plot_videos", 4))
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
