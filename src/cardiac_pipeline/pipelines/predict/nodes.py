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

from cardiac_pipeline.config import record, section
from cardiac_pipeline.model.predict import (
    default_checkpoint,
    interval_level,
    predict_folder,
    resolve_checkpoint,
)
from cardiac_pipeline.reporting.predict_report import prediction_report_html
from cardiac_pipeline.tracking import (
    log_metrics,
    loggable,
    loggable_names,
    with_loggable_names,
)
from cardiac_pipeline.validation import check_predict_inputs

logger = logging.getLogger(__name__)


def predict_input_folder(
    predict: dict[str, Any],
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Predictions, unreadable files, and per-video details (attention, frames, model)."""
    predict = section("predict", predict)
    check_predict_inputs(predict)
    if predict.model:
        model, why = predict.model, "given as predict.model"
    else:
        model, why = default_checkpoint(predict.models_dir)
    checkpoint, source = resolve_checkpoint(model)
    logger.info("predict: model %s (%s)", source, why)
    # quality.min_frames null: one clip's span (predict_folder's rule)
    quality = {k: v for k, v in record(predict.quality).items() if v is not None}
    started = time.perf_counter()
    predictions, failures, attention = predict_folder(
        predict.input_dir,
        checkpoint,
        n_clips=predict.n_clips,
        device=predict.device,
        size=predict.size,
        load_batch=predict.load_batch,
        quality=quality,
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
    """The HTML report; logs it and both tables as artifacts of the active MLflow run,
    with the videos' names as ``mlflow.yml``'s ``log_paths`` allows (``tracking``)."""
    html = _report(predictions, prediction_failures, prediction_details, predict)
    if mlflow.active_run() is None:
        return html
    folder = Path(predict["input_dir"]).expanduser()
    files = [*predictions["file"], *prediction_failures["file"]]
    names = loggable_names({str(name): folder / str(name) for name in files})
    shared = {
        "predictions.csv": with_loggable_names(predictions, "file", names),
        "prediction_failures.csv": with_loggable_names(prediction_failures, "file", names),
    }
    details = {
        "model_source": loggable(str(prediction_details["model_source"])),
        "videos": {names.get(k, k): v for k, v in prediction_details["videos"].items()},
        "interval_level": prediction_details.get("interval_level"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, table in shared.items():
            table.to_csv(Path(tmp) / name, index=False)
        unchanged = details["model_source"] == prediction_details["model_source"] and all(
            name == shown for name, shown in names.items()
        )
        report = html if unchanged else _report(*shared.values(), details, predict)
        (Path(tmp) / "predict_report.html").write_text(report, encoding="utf-8")
        for name in (*shared, "predict_report.html"):
            mlflow.log_artifact(str(Path(tmp) / name), artifact_path="predict")
    return html


def _report(
    predictions: pd.DataFrame, failures: pd.DataFrame, details: dict[str, Any], predict: dict
) -> str:
    return prediction_report_html(
        predictions,
        failures,
        details["videos"],
        title=section("predict", predict).report_title,
        model_source=details["model_source"],
        interval_level=details.get("interval_level"),
    )
