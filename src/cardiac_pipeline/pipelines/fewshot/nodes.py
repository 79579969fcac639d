"""Nodes of the fewshot pipeline, one set per model: k-shot split -> CardiacCLIP -> evaluation;
then every model's metrics combined and summarised over seeds.

Each model is one MLflow run nested under the pipeline's run, tagged with k, seed and
method (``tracking.model_run``, which also works in ParallelRunner's worker processes);
training logs per-epoch metrics there (a run resumed after a crash continues the same
MLflow run), evaluation reopens it for test metrics, plots, predictions and the checkpoint.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from matplotlib.figure import Figure

from cardiac_pipeline.config import FewshotConfig, keys_of
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
    split = k_shot_split(
        video_index,
        k=int(k),
        seed=int(seed),
        val_size=fewshot.get("val_size"),
        val_seed=int(fewshot.get("val_seed", 0)),
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


def train_fewshot_model(
    clip_store: ClipStore,
    k_shot_split: pd.DataFrame,
    backbone: dict[str, Any],
    cardiac_clip: dict[str, Any],
    clips: dict[str, Any],
    training: dict[str, Any],
    evaluation: dict[str, Any],
    pretrained_backbone: Path | None = None,
) -> dict[str, Any]:
    """Train one CardiacCLIP on its split; returns its checkpoint (best validation MAE).

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
        clip_store, k_shot_split, arch=arch, clips=clips, training=run_training
    )
    with model_run(work_dir, name, tags) as run_id:
        if run_id:
            log_params({**arch, "clips": clips, "training": training, "k": k, "seed": seed})
            mlflow.log_metric("n_train", int((k_shot_split["role"] == "train").sum()))
        checkpoint, result = recipe.train_on_split(
            clip_store,
            k_shot_split,
            arch=arch,
            clips=clips,
            training=run_training,
            eval_batch_size=int(evaluation.get("batch_size", 1)),
            on_epoch_end=lambda epoch, metrics: log_metrics(metrics, step=epoch),
        )
        checkpoint["meta"]["mlflow_run_id"] = run_id
        checkpoint["meta"]["split"] = name
        if run_id:
            log_history(result.history)
            _log_figure(plots.training_curves(result.history), "plots/training_curves.png")
            _log_table(result.history, "training_history.csv")
    return checkpoint


def evaluate_fewshot_model(
    clip_store: ClipStore,
    video_index: pd.DataFrame,
    k_shot_split: pd.DataFrame,
    fewshot_model: dict[str, Any],
    evaluation: dict[str, Any],
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Figure]]:
    """Test one model: per-video predictions, its metrics rows (with the constant
    predictors' on the same split) and its plots."""
    share_cores()
    name = model_name(k_shot_split)
    k, seed = recipe.split_k_seed(k_shot_split)
    test = k_shot_split[k_shot_split["role"] == "test"]
    table, attention = recipe.predict_on_table(clip_store, test, fewshot_model, evaluation)
    metrics = ef_metrics(table["EF_true"], table["EF_pred"])
    baselines = split_baselines(k_shot_split, table["EF_true"])
    method = fewshot_model["arch"]["cardiac_clip"].get("method", "cardiac_clip")
    rows = [{"split": name, "method": method, "k": k, "seed": seed, **metrics}]
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
        "%s: test MAE %.2f (constants: %s), RMSE %.2f, R2 %.3f",
        name,
        metrics["mae"],
        ", ".join(f"{b} {v['mae']:.2f}" for b, v in baselines.items()),
        metrics["rmse"],
        metrics["r2"],
    )
    return table, pd.DataFrame(rows), figures


def combine_fewshot_metrics(*model_metrics: pd.DataFrame) -> pd.DataFrame:
    """Every model's metrics rows in one table (grid order)."""
    return pd.concat(model_metrics, ignore_index=True)


def summarise_fewshot(fewshot_metrics: pd.DataFrame) -> tuple[pd.DataFrame, str, Figure]:
    """Mean and SD over seeds per (method, k): a CSV, a markdown table and MAE-versus-k plot."""
    if fewshot_metrics["k"].isna().all():  # a user split file: one model, no k grid
        summary = summarise_over_seeds(fewshot_metrics, ["method"], METRIC_COLUMNS)
        markdown = format_mean_sd(summary, ["method"], METRIC_COLUMNS)
        figure = plots.mae_by_range_bar(
            summary, "Test MAE per method (split file)", "method", "mae_mean", "n", "mae_sd"
        )
        log_metrics({f"{row.method}.mae_mean": row.mae_mean for row in summary.itertuples()})
    else:
        summary = summarise_over_seeds(fewshot_metrics, ["method", "k"], METRIC_COLUMNS)
        markdown = format_mean_sd(summary, ["method", "k"], METRIC_COLUMNS)
        figure = plots.mae_vs_k(summary)
        log_metrics(
            {f"{row.method}.k{row.k}.mae_mean": row.mae_mean for row in summary.itertuples()}
        )
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
