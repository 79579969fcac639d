"""Nodes of the pretrain pipeline: source corpus -> index -> clip store -> pretrained backbone."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from cardiac_pipeline.config import PretrainConfig, keys_of
from cardiac_pipeline.datasets import ClipStoreRequest, SyntheticRequest
from cardiac_pipeline.echo.clipstore import ClipStore
from cardiac_pipeline.echo.echonet import build_video_index, summarise_ingestion
from cardiac_pipeline.echo.synthetic import GENERATOR_VERSION
from cardiac_pipeline.model.pretrain import read_checkpoint_meta
from cardiac_pipeline.params import check_keys
from cardiac_pipeline.tracking import log_metrics

from .datasets import PretrainRequest

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


def request_pretrain_corpus(pretrain: dict[str, Any]) -> SyntheticRequest:
    """The source-site corpus of video-report pairs (generated once, by the dataset)."""
    return SyntheticRequest(params=dict(pretrain["corpus"]))


def ingest_pretrain_corpus(
    pretrain_raw: Path, ingestion: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate the corpus like any EchoNet folder; usable rows and rejects."""
    index, rejects = build_video_index(pretrain_raw, **ingestion)
    logger.info("%s: %s", pretrain_raw, summarise_ingestion(index, rejects))
    log_metrics({"pretrain.corpus.usable": len(index), "pretrain.corpus.rejected": len(rejects)})
    return index, rejects


def request_pretrain_clip_store(
    pretrain_video_index: pd.DataFrame, pretrain_raw: Path, preprocessing: dict[str, Any]
) -> ClipStoreRequest:
    """Decode the corpus once into its own clip store."""
    return ClipStoreRequest(
        index=pretrain_video_index,
        echonet_root=str(pretrain_raw),
        size=int(preprocessing["size"]),
        workers=int(preprocessing.get("workers", 1)),
    )


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


def request_pretraining(
    pretrain_clip_store: ClipStore,
    pretrain_video_index: pd.DataFrame,
    pretrain_raw: Path,
    pretrain: dict[str, Any],
    preprocessing: dict[str, Any],
) -> PretrainRequest:
    """Pair every usable video with its report; the dataset pretrains unless cached."""
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
    table = table[~no_report].sort_values("FileName").reset_index(drop=True)
    logger.info("Pretraining on %d video-report pairs", len(table))
    check_keys("pretrain", pretrain, keys_of(PretrainConfig))
    training = {key: pretrain[key] for key in TRAINING_KEYS if key in pretrain}
    arch = str(pretrain["arch"])
    config = {
        "generator_version": GENERATOR_VERSION,
        "corpus": pretrain["corpus"],
        "size": int(preprocessing["size"]),
        "pairs": len(table),
        **{k: v for k, v in training.items() if NEUTRAL_DEFAULTS.get(k, object()) != v},
    }
    run = partial(
        _run_pretraining,
        arch,
        pretrain_clip_store,
        table,
        training,
        str(pretrain.get("device", "auto")),
        bool(pretrain.get("progress", True)),
    )
    return PretrainRequest(arch=arch, config=config, run=run)


def report_pretraining(pretrained_backbone: Path) -> pd.DataFrame:
    """The loss curve stored in the checkpoint (also when pretraining was skipped)."""
    meta = read_checkpoint_meta(pretrained_backbone) or {}
    history = pd.DataFrame(meta.get("history", {}))
    if not history.empty:
        logger.info(
            "Pretraining loss by epoch: %s", [round(v, 3) for v in history["loss"].tolist()]
        )
    return history
