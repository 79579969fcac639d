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
from cardiac_pipeline.echo.uncertainty import interval_text, prediction_interval
from cardiac_pipeline.model import recipe
from cardiac_pipeline.model.ood import OOD_COLUMNS, OOD_FLAG, checkpoint_description, ood_columns
from cardiac_pipeline.model.prompts import LVEF_RANGES
from cardiac_pipeline.model.train import predict_videos

logger = logging.getLogger(__name__)

MLFLOW_CHECKPOINT_ARTIFACT = "model/cardiac_clip.pt"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
RANGE_COLUMNS = tuple(
    "p_" + re.sub(r"[^a-z0-9]+", "_", r.name.lower()).strip("_") for r in LVEF_RANGES
)
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
    lowest ``meta.best_val_mae`` (the VAL MAE of its selected epoch) wins: VAL is the only
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
        value = float((recipe.load_checkpoint(path).get("meta") or {}).get("best_val_mae"))
    except (TypeError, ValueError):
        return math.inf
    return value if math.isfinite(value) else math.inf


def _natural(name: str) -> tuple[Any, ...]:
    """``k16_seed0`` after ``k2_seed0``: digit runs compare as numbers."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def resolve_checkpoint(model: str | os.PathLike) -> tuple[dict[str, Any], str]:
    """The checkpoint dict and a description of where it came from.

    ``model``: a checkpoint file; a folder (``default_checkpoint``); ``runs:/<run id>``
    (optionally ``/<artifact path>``), a bare 32-hex MLflow run id, or any MLflow artifact
    URI (``models:/...``, ``mlflow-artifacts:/...``) pointing at the ``.pt`` or at a folder
    holding ``cardiac_clip.pt``. MLflow reads the configured tracking store (set it first).
    """
    text = str(model)
    path = Path(text).expanduser()
    if path.is_file():
        return recipe.load_checkpoint(path), str(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        return recipe.load_checkpoint(found), str(found)
    if _RUN_ID.match(text):
        uri = f"runs:/{text}/{MLFLOW_CHECKPOINT_ARTIFACT}"
    elif text.startswith("runs:/") and text.rstrip("/").count("/") == 1:
        uri = f"{text.rstrip('/')}/{MLFLOW_CHECKPOINT_ARTIFACT}"
    elif "://" in text or text.startswith(("runs:/", "models:/")):
        uri = text
    else:
        raise FileNotFoundError(
            f"{text}: model not found (not a checkpoint file, a folder, or an MLflow run id/URI)"
        )
    import mlflow

    # into a folder removed after reading: without dst_path MLflow leaves a copy in /tmp
    with tempfile.TemporaryDirectory(prefix="cardiac-model-") as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        except Exception as exc:  # MlflowException and store errors alike
            raise FileNotFoundError(f"{uri}: cannot fetch the model from MLflow ({exc})") from exc
        if local.is_dir():
            local = next(iter(sorted(local.rglob("*.pt"))), local / "cardiac_clip.pt")
        return recipe.load_checkpoint(local), uri


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


# ---------------------------------------------------------------------------- report


def _present(value: Any) -> bool:
    """False for None, NaN and empty text (a CSV round trip turns '' into NaN)."""
    if value is None:
        return False
    if isinstance(value, float) and not np.isfinite(value):
        return False
    return str(value).strip() not in ("", "nan", "None")


def _number(value: Any, spec: str, missing: str = "–") -> str:
    return format(float(value), spec) if _present(value) else missing


def _interval_cell(row: Any) -> str:
    if _present(row.get("EF_lower")) and _present(row.get("EF_upper")):
        cell = f"{row['EF_lower']:.0f}–{row['EF_upper']:.0f}"
        return f"{cell} (not guaranteed)" if _out_of_distribution(row) else cell
    return "–"


def _out_of_distribution(row: Any) -> bool:
    """The row's flag, also after a CSV round trip (True, 'True'; NA and '' are False)."""
    return str(row.get(OOD_FLAG)).strip().lower() in ("true", "1", "1.0")


def _ood_paragraph(row: Any, level: str) -> str:
    """What a reader sees first for a video unlike the model's calibration videos."""
    score = _number(row.get("ood_score"), ".1f")
    percentile = _number(row.get("ood_percentile"), ".0f")
    return (
        "<p class='flag'><b>Out of distribution:</b> this video is unlike the videos the "
        f"model was calibrated on (distance {score}, above {percentile}% of theirs); its "
        f"{level} is not guaranteed.</p>"
    )


def _png_base64(image: np.ndarray) -> str:
    import base64

    import cv2

    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return base64.b64encode(encoded.tobytes()).decode("ascii")


def _frame_strip(frames: np.ndarray, gap: int = 4) -> np.ndarray:
    """``(K, C, H, W)`` frames side by side as one OpenCV image (grey or BGR)."""
    tiles = []
    for frame in frames:
        tile = frame[0] if frame.shape[0] == 1 else frame.transpose(1, 2, 0)[..., ::-1]
        tiles.append(tile)
        tiles.append(np.full((tile.shape[0], gap, *tile.shape[2:]), 255, np.uint8))
    return np.ascontiguousarray(np.concatenate(tiles[:-1], axis=1))


def _figure_base64(figure: Any) -> str:
    import base64
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _video_label(row: Any) -> str:
    """File name, with the anonymised id of a DICOM when it has one."""
    name = str(row["file"])
    anonymous = row.get("anonymous_id")
    return f"{name} ({anonymous})" if _present(anonymous) else name


def prediction_report_html(
    predictions: pd.DataFrame,
    failures: pd.DataFrame,
    attention: dict[str, dict[str, Any]],
    *,
    title: str = "LVEF predictions",
    model_source: str = "",
    interval_level: float | None = None,
) -> str:
    """A self-contained HTML page: a table of all videos, then per video a few frames, LVEF
    with its prediction interval, range probabilities and MFL attention.

    Images are embedded as base64 PNG, so the page is one file to share. Videos are named
    by file name (DICOM: file name and anonymised id), never by header content. A value
    that is missing reads '–', never 'nan'. ``interval_level`` (0.9) names the interval.
    """
    from html import escape

    from cardiac_pipeline.echo.plots import attention_over_frames

    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}"
        ".video{border-top:2px solid #444;margin-top:1.5em;padding-top:.5em}"
        ".flag{color:#b00}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f"<p>{len(predictions)} videos predicted, {len(failures)} unreadable."
        + (f" Model: <code>{escape(model_source)}</code>" if model_source else "")
        + "</p>",
    ]
    level = f"{100 * interval_level:g}% interval" if interval_level else "interval"
    if len(predictions):
        parts.append(
            "<h2>Summary</h2><table class='summary'><tr><th>file</th><th>LVEF %</th>"
            f"<th>{escape(level)}</th><th>flags</th></tr>"
        )
        for _, row in predictions.iterrows():
            flags = str(row["flags"]) if _present(row.get("flags")) else "none"
            parts.append(
                f"<tr><td>{escape(_video_label(row))}</td><td>{_number(row['EF_pred'], '.0f')}</td>"
                f"<td>{_interval_cell(row)}</td><td>{escape(flags)}</td></tr>"
            )
        parts.append("</table>")
        if interval_level:
            parts.append(
                f"<p>{escape(level)}: split conformal on the model's errors on held-out validation videos; about "
                f"{100 * interval_level:g}% of videos like the validation videos have their "
                "true LVEF inside it (not a guarantee for unlike input: see flags).</p>"
            )
    if len(failures):
        parts.append("<h2>Unreadable files</h2><table><tr><th>file</th><th>reason</th></tr>")
        for _, row in failures.iterrows():
            parts.append(
                f"<tr><td>{escape(str(row['file']))}</td><td>{escape(str(row['reason']))}</td></tr>"
            )
        parts.append("</table>")
    for _, row in predictions.iterrows():
        name = str(row["file"])
        parts.append(f"<div class='video'><h2>{escape(_video_label(row))}</h2>")
        if _out_of_distribution(row):
            parts.append(_ood_paragraph(row, level))
        if interval_level and _interval_cell(row) != "–":
            estimate = interval_text(
                row["EF_pred"], row["EF_lower"], row["EF_upper"], interval_level
            )
            estimate += " (not guaranteed)" if _out_of_distribution(row) else ""
        else:
            estimate = f"EF {_number(row['EF_pred'], '.0f')}"
        spread = (
            f" (SD over {int(row['n_clips'])} clips {row['EF_clip_sd']:.1f})"
            if _present(row.get("EF_clip_sd")) and _present(row.get("n_clips"))
            else ""
        )
        parts.append(
            f"<p><b>{estimate}</b>{spread}; {_number(row.get('n_frames'), '.0f')} frames at "
            f"{_number(row.get('fps'), 'g')} fps</p>"
        )
        flags = str(row.get("flags")) if _present(row.get("flags")) else ""
        flags = ";".join(f for f in flags.split(";") if f and f != OOD_FLAG)
        if flags:
            parts.append(f"<p class='flag'>Input unlike training data: {escape(flags)}</p>")
        cells = "".join(
            f"<tr><td>{escape(r.name.title())}</td><td>{row[c]:.2f}</td></tr>"
            for r, c in zip(LVEF_RANGES, RANGE_COLUMNS, strict=True)
            if c in row and _present(row[c])
        )
        if cells:
            parts.append(f"<table><tr><th>LVEF range</th><th>probability</th></tr>{cells}</table>")
        item = attention.get(name, {})
        if item.get("frames") is not None:
            numbers = ", ".join(str(int(n)) for n in item.get("frame_numbers", []))
            parts.append(
                f"<p>Frames {escape(numbers)}:<br><img alt='frames' "
                f"src='data:image/png;base64,{_png_base64(_frame_strip(item['frames']))}'></p>"
            )
        if item.get("attention") is not None and item.get("frame_indices") is not None:
            weights, indices = np.asarray(item["attention"]), np.asarray(item["frame_indices"])
            figure = attention_over_frames(
                list(weights),
                list(indices),
                [f"clip {i + 1} (from frame {int(ix[0])})" for i, ix in enumerate(indices)],
            )
            parts.append(
                f"<p>MFL attention over time:<br><img alt='attention' "
                f"src='data:image/png;base64,{_figure_base64(figure)}'></p>"
            )
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)
