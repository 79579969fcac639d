"""LVEF for new, unlabelled videos in a folder, with a trained CardiacCLIP checkpoint.

The model comes from a local checkpoint file, a fewshot_models folder, or an MLflow run
(``runs:/<id>`` or a bare run id: its artifact ``model/cardiac_clip.pt``, read from the
configured tracking store). Videos are read one batch at a time (bounded memory), cut
into the same evenly spaced test-time clips as evaluation, and averaged per video
(``train.predict_videos``). Unreadable files are listed with their reason and skipped;
the rest are predicted. Everything is deterministic: no randomness at inference.
"""

from __future__ import annotations

import logging
import math
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from cardiac_pipeline.echo.clips import (
    ClipSpec,
    clip_at,
    clip_span,
    effective_period,
    eval_clip_starts,
)
from cardiac_pipeline.echo.inputs import (
    InputVideo,
    input_quality_flags,
    list_videos,
    read_input_video,
)
from cardiac_pipeline.echo.ood import OOD_COLUMNS, OOD_FLAG
from cardiac_pipeline.echo.ranges import RANGE_COLUMNS
from cardiac_pipeline.echo.uncertainty import prediction_interval
from cardiac_pipeline.errors import UserError
from cardiac_pipeline.model import recipe, train
from cardiac_pipeline.model.ood import checkpoint_description, ood_columns
from cardiac_pipeline.model.train import predict_videos

logger = logging.getLogger(__name__)

MLFLOW_CHECKPOINT_ARTIFACT = "model/cardiac_clip.pt"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
PREDICTION_COLUMNS = (
    "file",
    "anonymous_id",
    "EF_pred",
    "EF_lower",
    "EF_upper",
    *RANGE_COLUMNS,
    "n_clips",
    "EF_clip_sd",
    "n_frames",
    "fps",
    "flags",
    *OOD_COLUMNS,
)


class InMemoryClipDataset(Dataset):
    """Evaluation clips of already-loaded, unlabelled videos (``EchoClipDataset`` needs EF).

    Items match ``EchoClipDataset(train=False)``: ``clip`` ``(N, T, C, H, W)`` uint8,
    ``ef`` None, ``file_name``, ``start`` (N,) and ``frame_indices`` (N, T).
    """

    def __init__(
        self,
        videos: list[tuple[str, np.ndarray, float]],
        spec: ClipSpec,
        n_clips: int | Literal["all"],
    ) -> None:
        self.videos = videos
        self.spec = spec
        self.n_clips = n_clips

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> dict[str, Any]:
        name, video, fps = self.videos[i]
        starts = eval_clip_starts(video.shape[0], self.spec, self.n_clips, fps)
        clip = np.stack([clip_at(video, int(s), self.spec, fps) for s in starts])
        period = effective_period(self.spec, fps)
        indices = starts[:, None] + period * np.arange(self.spec.frames)[None, :]
        return {
            "clip": torch.from_numpy(np.ascontiguousarray(clip)),
            "ef": None,
            "file_name": name,
            "start": torch.from_numpy(starts),
            "frame_indices": torch.from_numpy(indices),
        }


def default_checkpoint(models_dir: str | os.PathLike) -> tuple[Path, str]:
    """The model to use when none is named, and why: the newest run's best on VAL.

    ``models_dir`` is ``data/06_models/fewshot_models``: ``<version>/fewshot_models/*.pt``,
    one checkpoint per (k, seed), versions named by Kedro's sortable timestamps (a plain
    folder of ``.pt`` files is one run). Among the newest run's checkpoints the one with the
    lowest ``meta.selected_val_mae`` (the VAL MAE of its selected epoch) wins: VAL is the only
    labelled data model selection may look at, so TEST stays untouched. Ties, and
    checkpoints without a VAL score (ranked last), go by natural name order (k1 before
    k2 before k16).
    """
    root = Path(models_dir)
    run, found = root, sorted(root.glob("*.pt"))
    if not found:
        versions = sorted(p for p in root.glob("*") if p.is_dir() and not p.name.startswith("."))
        for version in reversed(versions):
            found = sorted(version.glob("*/*.pt")) or sorted(version.glob("*.pt"))
            if found:
                run = version
                break
    if not found:
        raise FileNotFoundError(
            f"{root}: no checkpoint found (run the fewshot pipeline first, or give predict.model)"
        )
    scored = [(_val_mae(path), _natural(path.stem), path) for path in found]
    mae, _, best = min(scored, key=lambda item: (item[0], item[1]))
    where = f"fewshot run {run.name}" if run != root else root.name
    if math.isfinite(mae):
        why = f"lowest VAL MAE ({mae:.2f}) of the {len(found)} models of the newest {where}"
    else:
        why = f"first by name of the {len(found)} models of the newest {where} (no VAL score)"
    return best, why


def latest_checkpoint(models_dir: str | os.PathLike) -> Path:
    """The checkpoint ``default_checkpoint`` picks (a folder given as ``predict.model``)."""
    return default_checkpoint(models_dir)[0]


def _val_mae(path: Path) -> float:
    try:
        meta = recipe.load_checkpoint(path).get("meta") or {}
        value = float(meta.get("selected_val_mae", meta.get("best_val_mae")))  # older: best_
    except Exception:  # no VAL score, or no checkpoint at all: refused by name if picked
        return math.inf
    return value if math.isfinite(value) else math.inf


def _natural(name: str) -> tuple[Any, ...]:
    """``k16_seed0`` after ``k2_seed0``: digit runs compare as numbers."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


MODEL_HINT = (
    "give a fewshot model: a .pt of data/06_models/fewshot_models, that folder, or the "
    "MLflow run id of a k<k>_seed<seed> run (runs:/<id>)"
)
# what a checkpoint of another kind is, by its ``format`` (one without: a backbone's)
OTHER_CHECKPOINTS: dict[Any, str] = {
    train.CHECKPOINT_FORMAT: "a training state (a work folder's last.pt), not a fewshot model",
    None: "a backbone checkpoint (such as the pretrained backbone), not a fewshot model",
}


def read_model_file(path: str | os.PathLike, name: str | None = None) -> dict[str, Any]:
    """The fewshot model in ``path``; a ``UserError`` saying what the file (``name``, by
    default the path) is instead."""
    where = f"predict.model {name or str(path)!r}"
    if not Path(path).is_file():
        raise UserError(f"{where}: file not found; {MODEL_HINT}")
    try:
        checkpoint = recipe.load_checkpoint(path)
    except Exception as error:  # the unpickler fails in many ways on other files
        raise UserError(
            f"{where}: not a checkpoint (unreadable as one: {type(error).__name__}); {MODEL_HINT}"
        ) from None
    form = checkpoint.get("format") if isinstance(checkpoint, dict) else "?"
    if form != recipe.CHECKPOINT_FORMAT:
        kind = OTHER_CHECKPOINTS.get(form, f"a checkpoint of another kind (format {form!r})")
        raise UserError(f"{where}: {kind}; {MODEL_HINT}")
    return checkpoint


def mlflow_model_uri(model: str) -> str | None:
    """The artifact URI of an MLflow model reference (run id, ``runs:/``, URI), else None."""
    if _RUN_ID.match(model):
        return f"runs:/{model}/{MLFLOW_CHECKPOINT_ARTIFACT}"
    if model.startswith("runs:/") and model.rstrip("/").count("/") == 1:
        return f"{model.rstrip('/')}/{MLFLOW_CHECKPOINT_ARTIFACT}"
    if "://" in model or model.startswith(("runs:/", "models:/")):
        return model
    return None


def check_mlflow_model(model: str) -> None:
    """A ``UserError`` unless the MLflow run of ``model`` (a run id or ``runs:/<id>``) holds
    a model; other URIs are checked when fetched. Reads the configured tracking store."""
    uri = mlflow_model_uri(model)
    if uri is None or not uri.startswith("runs:/"):
        return
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    run_id, _, artifact = uri[len("runs:/") :].partition("/")
    client = MlflowClient()
    try:
        client.get_run(run_id)
    except MlflowException:
        raise UserError(
            f"predict.model {model!r}: no such MLflow run in the tracking store; {MODEL_HINT}"
        ) from None
    folder = artifact.rpartition("/")[0] or None
    if artifact not in {entry.path for entry in client.list_artifacts(run_id, folder)}:
        raise UserError(
            f"predict.model {model!r}: the MLflow run has no model ({artifact}); {MODEL_HINT}"
        )


def check_model(model: str) -> None:
    """A ``UserError`` for what ``resolve_checkpoint`` would refuse, found before any
    video is read (an MLflow model is looked up, not fetched)."""
    path = Path(model).expanduser()
    if path.is_dir():
        try:
            path = latest_checkpoint(path)
        except FileNotFoundError:
            raise UserError(
                f"predict.model {model!r}: no .pt in the folder; {MODEL_HINT}"
            ) from None
    if path.is_file():
        read_model_file(path, model if path == Path(model).expanduser() else str(path))
    elif mlflow_model_uri(model) is None:
        raise UserError(f"predict.model {model!r}: file not found; {MODEL_HINT}")
    else:
        check_mlflow_model(model)


def resolve_checkpoint(model: str | os.PathLike) -> tuple[dict[str, Any], str]:
    """The checkpoint dict and a description of where it came from.

    ``model``: a checkpoint file; a folder (``default_checkpoint``); ``runs:/<run id>``
    (optionally ``/<artifact path>``), a bare 32-hex MLflow run id, or any MLflow artifact
    URI (``models:/...``, ``mlflow-artifacts:/...``) pointing at the ``.pt`` or at a folder
    holding ``cardiac_clip.pt``. MLflow reads the configured tracking store (set it first).
    Anything that is not a fewshot model is a ``UserError`` naming it.
    """
    text = str(model)
    path = Path(text).expanduser()
    if path.is_file():
        return read_model_file(path), str(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        return read_model_file(found), str(found)
    uri = mlflow_model_uri(text)
    if uri is None:
        raise UserError(f"predict.model {text!r}: file not found; {MODEL_HINT}")
    check_mlflow_model(text)
    import mlflow

    # into a folder removed after reading: without dst_path MLflow leaves a copy in /tmp
    with tempfile.TemporaryDirectory(prefix="cardiac-model-") as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        except Exception as exc:  # MlflowException and store errors alike
            raise UserError(
                f"predict.model {text!r}: cannot fetch the model from MLflow "
                f"({type(exc).__name__}); {MODEL_HINT}"
            ) from None
        if local.is_dir():
            local = next(iter(sorted(local.rglob("*.pt"))), local / "cardiac_clip.pt")
        return read_model_file(local, text), uri


def _failure(path: Path, exc: Exception) -> dict[str, str]:
    reason = str(exc)
    # messages name the file; keep only the file name, never a (possibly PHI-bearing) path
    reason = reason.replace(str(path), path.name)
    return {"file": path.name, "reason": f"{type(exc).__name__}: {reason}"}


def predict_folder(
    folder: str | os.PathLike,
    checkpoint: dict[str, Any],
    *,
    n_clips: int | Literal["all"] = 2,
    device: str = "auto",
    size: int = 112,
    load_batch: int = 8,
    quality: dict[str, Any] | None = None,
    progress: bool = False,
    model: torch.nn.Module | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, dict[str, Any]]]:
    """Predict LVEF for every video in ``folder``: (predictions, failures, attention).

    predictions: one row per readable video, columns ``PREDICTION_COLUMNS`` (``EF_lower``,
    ``EF_upper``: the model's conformal interval, NaN for a model stored without one;
    range probabilities named after the LVEF ranges, in order bin 0..4; ``flags`` a
    ``;``-joined list from ``input_quality_flags``, empty when none, led by
    ``out_of_distribution`` for a video unlike the model's calibration videos; that flag,
    the score and its percentile among the calibration videos are also columns, NA for a
    model stored without their description). failures: ``file, reason``.
    attention: ``{file: {attention (N, T), frame_indices (N, T), start (N,), frames}}``
    where ``frames`` holds a few model-ready frames for reports. ``load_batch`` videos are
    held in memory at a time. ``quality`` overrides ``input_quality_flags`` thresholds
    (``min_frames`` defaults to one clip's span).
    """
    spec = recipe.clip_spec(checkpoint["clips"])
    n_clips = n_clips if n_clips == "all" else int(n_clips)
    model = model or recipe.model_from_checkpoint(checkpoint)
    quality = dict(quality or {})
    half_width = interval_half_width(checkpoint, n_clips)
    description = checkpoint_description(checkpoint)
    rows: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    attention: dict[str, dict[str, Any]] = {}
    paths = list_videos(folder)
    started = time.perf_counter()
    for first in range(0, len(paths), max(1, load_batch)):
        batch: list[InputVideo] = []
        for path in paths[first : first + max(1, load_batch)]:
            try:
                batch.append(read_input_video(path, size))
            except Exception as exc:  # any unreadable file is listed, never fatal
                failures.append(_failure(path, exc))
                logger.warning("%s: skipped (%s)", path.name, failures[-1]["reason"])
        if not batch:
            continue
        dataset = InMemoryClipDataset(
            [(v.display_name, v.frames, v.fps) for v in batch], spec, n_clips
        )
        table, attn = predict_videos(model, dataset, device=device, progress=progress)
        by_name = table.set_index("FileName")
        names = [v.display_name for v in batch]
        shift = ood_columns(attn, names, description).set_index(pd.Index(names))
        for video in batch:
            pred = by_name.loc[video.display_name]
            source = None if video.kind == "dicom" else (video.source_height, video.source_width)
            unlike = shift.at[video.display_name, OOD_FLAG]
            flags = [OOD_FLAG] if pd.notna(unlike) and bool(unlike) else []
            flags += input_quality_flags(
                video.frames,
                video.fps,
                source_size=source,
                grey=video.grey,
                expected_size=size,
                **{"min_frames": clip_span(spec, video.fps), **quality},
            )
            row: dict[str, Any] = {
                "file": video.display_name,
                "anonymous_id": video.anonymous_id or "",
                "EF_pred": float(pred["EF_pred"]),
                "EF_lower": np.nan,
                "EF_upper": np.nan,
            }
            if half_width is not None:
                lower, upper = prediction_interval(row["EF_pred"], half_width)
                row.update(EF_lower=float(lower), EF_upper=float(upper))
            for k, column in enumerate(RANGE_COLUMNS):
                row[column] = float(pred.get(f"p_bin_{k}", np.nan))
            row.update(
                n_clips=int(pred["n_clips"]),
                EF_clip_sd=float(pred["EF_clip_sd"]),
                n_frames=int(video.frames.shape[0]),
                fps=float(video.fps),
                flags=";".join(flags),
                **shift.loc[video.display_name].to_dict(),
            )
            rows.append(row)
            entry = dict(attn.get(video.display_name, {}))
            picks = np.linspace(0, video.frames.shape[0] - 1, 4).round().astype(int)
            entry["frames"] = video.frames[picks].copy()
            entry["frame_numbers"] = picks
            attention[video.display_name] = entry
    elapsed = time.perf_counter() - started
    logger.info("predicted %d videos (%d failed) in %.1f s", len(rows), len(failures), elapsed)
    predictions = pd.DataFrame(rows, columns=list(PREDICTION_COLUMNS))
    predictions[OOD_FLAG] = predictions[OOD_FLAG].astype("boolean")
    return predictions, pd.DataFrame(failures, columns=["file", "reason"]), attention


def interval_half_width(checkpoint: dict[str, Any], n_clips: int | str) -> float | None:
    """The checkpoint's conformal half-width, or None when it was stored without one.

    The interval was calibrated on VAL predictions of ``interval.n_clips`` clips per video;
    predicting with another number of clips changes how noisy a prediction is, so it is
    said in the log (the interval is still given).
    """
    interval = checkpoint.get("interval") or {}
    if "half_width" not in interval:
        logger.info("model has no stored prediction interval (trained without VAL videos)")
        return None
    calibrated = interval.get("n_clips")
    if calibrated is not None and str(calibrated) != str(n_clips):
        logger.warning(
            "prediction interval calibrated with %s clips per video, predicting with %s "
            "(set predict.n_clips to %s for the stated coverage)",
            calibrated,
            n_clips,
            calibrated,
        )
    return float(interval["half_width"])


def interval_level(checkpoint: dict[str, Any]) -> float | None:
    """The coverage the checkpoint's interval aims at (0.9 for alpha 0.1), or None."""
    interval = checkpoint.get("interval") or {}
    return 1.0 - float(interval["alpha"]) if "alpha" in interval else None
