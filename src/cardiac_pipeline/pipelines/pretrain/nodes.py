"""Nodes of the pretrain pipeline: source corpus (a clip store) -> pretrained backbone."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from cardiac_pipeline.config import record, section
from cardiac_pipeline.echo.clipstore import ClipStore
from cardiac_pipeline.echo.synthetic import GENERATOR_VERSION
from cardiac_pipeline.errors import UserError
from cardiac_pipeline.model.pretrain import read_checkpoint_meta
from cardiac_pipeline.pipelines.pretrain.datasets import PretrainedCheckpoints
from cardiac_pipeline.pipelines.synthetic.nodes import generate_synthetic_folder
from cardiac_pipeline.tracking import flatten_params, log_metrics

logger = logging.getLogger(__name__)

REPORTS_FILE = "Reports.csv"
TRAINING_KEYS = (
    "epochs",
    "batch_size",
    "frames",
    "period",
    "target_fps",
    "lr",
    "weight_decay",
    "seed",
    "warmup_epochs",
    "lr_schedule",
)
# Spelt out in conf/base at these values, they are left out of the config hash: the
# checkpoints pretrained before the keys existed stay current.
NEUTRAL_DEFAULTS = {"warmup_epochs": 0.0, "lr_schedule": "constant"}


def generate_pretrain_corpus(pretrain: dict[str, Any]) -> Path:
    """The source-site corpus of video-report pairs at ``pretrain.corpus_root`` (generated
    once; regenerated when ``pretrain.corpus`` or the generator changes)."""
    pretrain = section("pretrain", pretrain)
    return generate_synthetic_folder(pretrain.corpus_root, record(pretrain.corpus))


def open_pretrain_corpus(pretrain_raw: Path) -> tuple[ClipStore, pd.DataFrame]:
    """The corpus's clip store and its videos (``FileList.csv``): the generator renders the
    frames straight into the store (``output: clip_store``), so nothing is ingested or
    decoded here; a video the list names but the store lacks stops the run."""
    root = Path(pretrain_raw)
    store = ClipStore(root)
    index = pd.read_csv(root / "FileList.csv")
    missing = [name for name in index["FileName"].astype(str) if name not in store]
    if missing:
        raise UserError(
            f"{root}: {len(missing)} videos of FileList.csv have no clip store entry (e.g. "
            f"{missing[0]}); delete the folder and run again to regenerate the corpus"
        )
    log_metrics({"pretrain.corpus.usable": len(index)})
    return store, index


def _run_pretraining(
    arch: str,
    store: ClipStore,
    table: pd.DataFrame,
    training: dict[str, Any],
    device: str,
    progress: bool,
):
    from cardiac_pipeline.model.backbone import create_backbone
    from cardiac_pipeline.model.pretrain import pretrain_clip

    backbone = create_backbone(arch, seed=int(training["seed"]))
    return pretrain_clip(backbone, store, table, device=device, progress=progress, **training)


def pretraining_pairs(pretrain_video_index: pd.DataFrame, pretrain_raw: Path) -> pd.DataFrame:
    """Every usable video with its report (``Reports.csv``), sorted by FileName."""
    reports_path = Path(pretrain_raw) / REPORTS_FILE
    if not reports_path.is_file():
        raise FileNotFoundError(f"{reports_path}: the pretraining corpus has no reports")
    reports = pd.read_csv(reports_path)
    if not {"FileName", "Report"} <= set(reports.columns):
        raise ValueError(f"{reports_path}: needs columns FileName, Report")
    table = pretrain_video_index[["FileName"]].merge(reports, on="FileName", how="left")
    no_report = table["Report"].isna() | (table["Report"].astype(str).str.strip() == "")
    if no_report.any():
        logger.warning(
            "%s: %d usable videos have no report and are left out of pretraining (e.g. %s)",
            reports_path,
            int(no_report.sum()),
            ", ".join(table.loc[no_report, "FileName"].astype(str).head(3)),
        )
    return table[~no_report].sort_values("FileName").reset_index(drop=True)


def pretraining_config(
    pretrain: dict[str, Any], preprocessing: dict[str, Any], pairs: int
) -> dict[str, Any]:
    """What identifies a pretrained checkpoint (its ``meta.config``; hashed with the arch)."""
    pretrain = section("pretrain", pretrain)
    training = {key: getattr(pretrain, key) for key in TRAINING_KEYS}
    return {
        "generator_version": GENERATOR_VERSION,
        "corpus": record(pretrain.corpus),
        "size": section("preprocessing", preprocessing).size,
        "pairs": pairs,
        **{k: v for k, v in training.items() if NEUTRAL_DEFAULTS.get(k, object()) != v},
    }


def pretrain_backbone(
    pretrain_clip_store: ClipStore,
    pretrain_video_index: pd.DataFrame,
    pretrain_raw: Path,
    pretrain: dict[str, Any],
    preprocessing: dict[str, Any],
    pretrained_backbones: PretrainedCheckpoints,
) -> Path:
    """Pretrain the CLIP on the corpus's video-report pairs, unless this config was before.

    ``pretrained_backbones`` lists the checkpoints on disk by config hash; a match is
    returned as its path (the dataset restores it). Else this config is pretrained under
    its build lock (a run pretraining it already is waited for) and kept there.
    """
    from cardiac_pipeline.model.pretrain import config_hash

    table = pretraining_pairs(pretrain_video_index, pretrain_raw)
    config = pretraining_config(pretrain, preprocessing, len(table))
    pretrain = section("pretrain", pretrain)
    arch = pretrain.arch
    wanted = config_hash({"arch": arch, **config})
    if wanted in pretrained_backbones:
        logger.info("Pretrained backbone for this config found (%s); not pretraining", wanted)
        return pretrained_backbones[wanted]
    with pretrained_backbones.building(wanted):
        if wanted in pretrained_backbones:
            logger.info("Pretrained backbone %s kept by another run meanwhile; reusing", wanted)
            return pretrained_backbones[wanted]
        checkpoint = _pretrain(arch, table, config, wanted, pretrain, pretrain_clip_store)
        return pretrained_backbones.keep(checkpoint)


def _pretrain(
    arch: str,
    table: pd.DataFrame,
    config: dict[str, Any],
    wanted: str,
    pretrain: dict[str, Any],
    pretrain_clip_store: ClipStore,
) -> dict[str, Any]:
    logger.info("Pretraining %s on %d video-report pairs", arch, len(table))
    training = {key: getattr(pretrain, key) for key in TRAINING_KEYS}
    model, history = _run_pretraining(
        arch, pretrain_clip_store, table, training, pretrain.device, pretrain.progress
    )
    checkpoint = {
        "arch": arch,
        "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
        "meta": {"config_hash": wanted, "config": config, "history": history.to_dict("list")},
    }
    _log_pretraining(config, history)
    return checkpoint


def _log_pretraining(config: dict[str, Any], history: pd.DataFrame) -> None:
    if mlflow.active_run() is None:
        return
    mlflow.log_params(flatten_params({"pretrain": config}))
    for row in history.to_dict("records"):
        log_metrics({"pretrain.loss": row["loss"]}, step=int(row["epoch"]))
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "pretrain_history.csv"
        history.to_csv(csv, index=False)
        mlflow.log_artifact(str(csv), artifact_path="pretrained_backbone")


def report_pretraining(pretrained_backbone: Path) -> pd.DataFrame:
    """The loss curve stored in the checkpoint (also when pretraining was skipped)."""
    meta = read_checkpoint_meta(pretrained_backbone) or {}
    history = pd.DataFrame(meta.get("history", {}))
    if not history.empty:
        logger.info(
            "Pretraining loss by epoch: %s", [round(v, 3) for v in history["loss"].tolist()]
        )
    return history
