"""Nodes of the fewshot pipeline: k-shot splits -> CardiacCLIP per (k, seed) -> evaluation.

Each (k, seed) is one MLflow run nested under the pipeline's run, tagged with k, seed and
method; training logs per-epoch metrics there, evaluation reopens it for test metrics,
plots, predictions and the model checkpoint.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from matplotlib.figure import Figure

from cardiac_pipeline.echo import plots
from cardiac_pipeline.echo.clipstore import ClipStore
from cardiac_pipeline.echo.kshot import k_shot_split, read_split_file
from cardiac_pipeline.echo.metrics import (
    ef_metrics,
    format_mean_sd,
    split_baselines,
    summarise_over_seeds,
)
from cardiac_pipeline.model import recipe
from cardiac_pipeline.params import check_keys
from cardiac_pipeline.tracking import child_run, flatten_params, log_metrics

logger = logging.getLogger(__name__)

METRIC_COLUMNS = ["mae", "rmse", "r2", "bias", "auroc_ef_lt_50", "auroc_ef_lt_40"]
FEWSHOT_KEYS = ("shots", "seeds", "val_size", "val_seed", "split_file")


def split_name(k: int, seed: int) -> str:
    return f"k{k}_seed{seed}"


def make_k_shot_splits(
    video_index: pd.DataFrame, fewshot: dict[str, Any]
) -> dict[str, pd.DataFrame]:
    """One split table per (k, seed) of the grid, or the user's split file when given."""
    check_keys("fewshot", fewshot, FEWSHOT_KEYS)
    if fewshot.get("split_file"):
        split = read_split_file(fewshot["split_file"], video_index)
        return {"user_split": split}
    splits = {}
    for k in fewshot["shots"]:
        for seed in fewshot["seeds"]:
            split = k_shot_split(
                video_index,
                k=int(k),
                seed=int(seed),
                val_size=fewshot.get("val_size"),
                val_seed=int(fewshot.get("val_seed", 0)),
            )
            counts = split["role"].value_counts().to_dict()
            logger.info("k=%s seed=%s: %s", k, seed, counts)
            splits[split_name(int(k), int(seed))] = split
    return splits


def build_frame_features(
    clip_store: ClipStore,
    splits: dict[str, pd.DataFrame],
    backbone: dict[str, Any],
    cardiac_clip: dict[str, Any],
    clips: dict[str, Any],
    training: dict[str, Any],
    pretrained_backbone: Path | None = None,
) -> Any:
    """What the frame-feature store must hold: the frozen trunk's features of every video
    the splits use (TRAIN, VAL and TEST), for training and predicting on cached features.

    Shared by every (k, seed) and every method of the same backbone and scales; a video
    already stored is not encoded again. Nothing to build when ``training.adaptation`` is
    ``full``.
    """
    from cardiac_pipeline.datasets.frame_features import FeatureStoreRequest
    from cardiac_pipeline.model.features import feature_store_key

    mode, _, _ = recipe.adaptation_settings(training)
    if mode == "full":
        return FeatureStoreRequest(model=None, clip_store=clip_store, names=[], spec=None)
    backbone = recipe.with_pretrained(
        backbone, str(pretrained_backbone) if pretrained_backbone else None
    )
    arch = {"backbone": backbone, "cardiac_clip": cardiac_clip}
    model = recipe.build_cardiac_clip(arch, seed=0)
    spec = recipe.clip_spec(clips)
    names = sorted({str(n) for split in splits.values() for n in split["FileName"]})
    key = feature_store_key(model, clip_store, spec, backbone["name"])
    return FeatureStoreRequest(model=model, clip_store=clip_store, names=names, spec=spec, key=key)


def train_fewshot_models(
    clip_store: ClipStore,
    k_shot_splits: dict[str, pd.DataFrame],
    backbone: dict[str, Any],
    cardiac_clip: dict[str, Any],
    clips: dict[str, Any],
    training: dict[str, Any],
    evaluation: dict[str, Any],
    pretrained_backbone: Path | None = None,
    frame_features: Any = None,
) -> dict[str, dict[str, Any]]:
    """Train one CardiacCLIP per split; returns checkpoints (best validation MAE).

    ``frame_features``: the frame-feature store that the cached adaptation modes train on.

    ``backbone.pretrained: pretrain`` starts from ``pretrained_backbone`` (the pretrain
    pipeline's checkpoint); any other value is passed to the backbone factory as it is.
    VAL is scored with ``evaluation.batch_size`` videos per forward pass, like TEST.
    """
    recipe.check_recipe(
        {
            "backbone": backbone,
            "cardiac_clip": cardiac_clip,
            "clips": clips,
            "training": training,
            "evaluation": evaluation,
        }
    )
    models = {}
    backbone = recipe.with_pretrained(
        backbone, str(pretrained_backbone) if pretrained_backbone else None
    )
    arch = {"backbone": backbone, "cardiac_clip": cardiac_clip}
    for name, split in k_shot_splits.items():
        k, seed = recipe.split_k_seed(split)
        tags = {"k": k, "seed": seed, "method": cardiac_clip.get("method", "cardiac_clip")}
        with child_run(name, tags) as run_id:
            if run_id:
                mlflow.log_params(
                    flatten_params(
                        {**arch, "clips": clips, "training": training, "k": k, "seed": seed}
                    )
                )
                mlflow.log_metric("n_train", int((split["role"] == "train").sum()))
            checkpoint, result = recipe.train_on_split(
                clip_store,
                split,
                arch=arch,
                clips=clips,
                training={**training, "seed": seed},
                eval_batch_size=int(evaluation.get("batch_size", 1)),
                on_epoch_end=lambda epoch, metrics: log_metrics(metrics, step=epoch),
                features=frame_features,
            )
            checkpoint["meta"]["mlflow_run_id"] = run_id
            checkpoint["meta"]["split"] = name
            if run_id:
                _log_figure(plots.training_curves(result.history), "plots/training_curves.png")
                _log_table(result.history, "training_history.csv")
        models[name] = checkpoint
    return models


def evaluate_fewshot_models(
    clip_store: ClipStore,
    video_index: pd.DataFrame,
    k_shot_splits: dict[str, pd.DataFrame],
    fewshot_models: dict[str, dict[str, Any]],
    evaluation: dict[str, Any],
    frame_features: Any = None,
) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, dict[str, Figure]]:
    """Test every model; per-video predictions, one metrics row per model, plots.

    A model adapted on cached features is scored from ``frame_features`` (same frozen trunk).
    """
    predictions, rows, figures = {}, [], {}
    for name, checkpoint in fewshot_models.items():
        split = k_shot_splits[name]
        k, seed = recipe.split_k_seed(split)
        test = split[split["role"] == "test"]
        table, attention = recipe.predict_on_table(
            clip_store, test, checkpoint, evaluation, features=frame_features
        )
        metrics = ef_metrics(table["EF_true"], table["EF_pred"])
        baselines = split_baselines(split, table["EF_true"])
        method = checkpoint["arch"]["cardiac_clip"].get("method", "cardiac_clip")
        rows.append({"split": name, "method": method, "k": k, "seed": seed, **metrics})
        for baseline, values in baselines.items():
            rows.append(
                {
                    "split": name,
                    "method": baseline,
                    "k": k,
                    "seed": seed,
                    **{m: values[m] for m in ["n", *METRIC_COLUMNS]},
                }
            )
        predictions[name] = table
        split_figures = _evaluation_figures(name, table, attention, video_index, evaluation)
        figures.update(split_figures)
        run_id = checkpoint["meta"].get("mlflow_run_id")
        if run_id:
            with child_run(name, {}, run_id=run_id):
                log_metrics({f"test_{m}": v for m, v in metrics.items()})
                for baseline, values in baselines.items():
                    log_metrics({f"test_{baseline}_{m}": values[m] for m in METRIC_COLUMNS})
                for key, fig in split_figures.items():
                    _log_figure(fig, f"plots/{key.split('/', 1)[1]}")
                _log_table(table, "test_predictions.csv")
                _log_checkpoint(checkpoint)
        logger.info(
            "%s: test MAE %.2f (constants: %s), RMSE %.2f, R2 %.3f",
            name,
            metrics["mae"],
            ", ".join(f"{b} {v['mae']:.2f}" for b, v in baselines.items()),
            metrics["rmse"],
            metrics["r2"],
        )
    return predictions, pd.DataFrame(rows), figures


def summarise_fewshot(fewshot_metrics: pd.DataFrame) -> tuple[pd.DataFrame, str, Figure]:
    """Mean and SD over seeds per (method, k): a CSV, a markdown table and MAE-versus-k plot."""
    summary = summarise_over_seeds(fewshot_metrics, ["method", "k"], METRIC_COLUMNS)
    markdown = format_mean_sd(summary, ["method", "k"], METRIC_COLUMNS)
    figure = plots.mae_vs_k(summary)
    log_metrics({f"{row.method}.k{row.k}.mae_mean": row.mae_mean for row in summary.itertuples()})
    if mlflow.active_run() is not None:
        _log_table(summary, "fewshot_summary.csv")
        _log_figure(figure, "plots/mae_vs_k.png")
    logger.info("Few-shot summary (test set):\n%s", markdown)
    return summary, markdown, figure


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
        f"{name}/scatter.png": plots.scatter_pred_vs_true(
            y_true, y_pred, title=f"{name}: predicted vs true LVEF"
        ),
        f"{name}/bland_altman.png": plots.bland_altman(
            y_true, y_pred, title=f"{name}: Bland-Altman"
        ),
        f"{name}/mae_by_range.png": plots.mae_by_range_bar(
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
        figures[f"{name}/mfl_attention.png"] = plots.attention_over_frames(
            weights, frames, titles, ed_frames=ed, es_frames=es
        )
    return figures


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
