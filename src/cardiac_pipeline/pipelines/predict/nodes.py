"""Nodes of the predict pipeline: resolve the model, predict the folder, report, track.

The model is ``predict.model``: a checkpoint path, an MLflow run id / ``runs:/<id>`` (its
``model/cardiac_clip.pt`` artifact, from the configured tracking store) or, when null, the
model of the newest fewshot run under ``predict.models_dir`` with the lowest VAL MAE
(``model.predict.default_checkpoint``); the log says which and why. A folder without a
video is a ``UserError`` (exit status 2), not an empty result. Metrics and the
tables/report go to the pipeline's MLflow run.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from cardiac_pipeline.config import PredictConfig, build_section
from cardiac_pipeline.model.predict import (
    default_checkpoint,
    interval_level,
    predict_folder,
    prediction_report_html,
    resolve_checkpoint,
)
from cardiac_pipeline.tracking import log_metrics, loggable
from cardiac_pipeline.validation import check_predict_inputs

logger = logging.getLogger(__name__)


def predict_input_folder(
    predict: dict[str, Any],
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Predictions, unreadable files, and per-video details (attention, frames, model)."""
    check_predict_inputs(build_section(PredictConfig, predict, "predict"))
    if predict.get("model"):
        model, why = predict["model"], "given as predict.model"
    else:
        model, why = default_checkpoint(predict["models_dir"])
    checkpoint, source = resolve_checkpoint(model)
    logger.info("predict: model %s (%s)", source, why)
    n_clips = predict.get("n_clips", 2)
    started = time.perf_counter()
    predictions, failures, attention = predict_folder(
        predict["input_dir"],
        checkpoint,
        n_clips=n_clips if n_clips == "all" else int(n_clips),
        device=predict.get("device", "auto"),
        size=int(predict.get("size", 112)),
        load_batch=int(predict.get("load_batch", 8)),
        quality=predict.get("quality") or None,
    )
    elapsed = time.perf_counter() - started
    metrics = {
        "n_predicted": len(predictions),
        "n_failed": len(failures),
        "n_flagged": int((predictions["flags"].fillna("") != "").sum()),
        "n_out_of_distribution": int(predictions["out_of_distribution"].fillna(False).sum()),
        "predict_seconds": elapsed,
        "videos_per_s": len(predictions) / elapsed if elapsed > 0 else 0.0,
    }
    log_metrics(metrics)
    if mlflow.active_run() is not None:
        mlflow.set_tags({"predict.model": loggable(str(source)), "predict.model_rule": why})
    logger.info(
        "predict: %d videos, %d unreadable, %.2f videos/s",
        len(predictions),
        len(failures),
        metrics["videos_per_s"],
    )
    details = {"model_source": source, "videos": attention}
    details["interval_level"] = interval_level(checkpoint)
    return predictions, failures, details


def report_predictions(
    predictions: pd.DataFrame,
    prediction_failures: pd.DataFrame,
    prediction_details: dict[str, Any],
    predict: dict[str, Any],
) -> str:
    """The HTML report; logs it and both tables as artifacts of the active MLflow run."""
    html = prediction_report_html(
        predictions,
        prediction_failures,
        prediction_details["videos"],
        title=str(predict.get("report_title", "LVEF predictions")),
        model_source=prediction_details["model_source"],
        interval_level=prediction_details.get("interval_level"),
    )
    if mlflow.active_run() is not None:
        with tempfile.TemporaryDirectory() as tmp:
            for name, table in (
                ("predictions.csv", predictions),
                ("prediction_failures.csv", prediction_failures),
            ):
                table.to_csv(Path(tmp) / name, index=False)
                mlflow.log_artifact(str(Path(tmp) / name), artifact_path="predict")
            (Path(tmp) / "predict_report.html").write_text(html, encoding="utf-8")
            mlflow.log_artifact(str(Path(tmp) / "predict_report.html"), artifact_path="predict")
    return html
