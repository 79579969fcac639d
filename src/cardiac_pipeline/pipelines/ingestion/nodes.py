"""Nodes of the ingestion pipeline."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from cardiac_pipeline.config import record, section
from cardiac_pipeline.echo.echonet import build_video_index, summarise_ingestion
from cardiac_pipeline.tracking import log_metrics

logger = logging.getLogger(__name__)


def ingest_echonet(
    echonet_root: Path, ingestion: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate every FileList row against its video; usable rows and rejects with reasons."""
    index, rejects = build_video_index(echonet_root, **record(section("ingestion", ingestion)))
    logger.info("%s: %s", echonet_root, summarise_ingestion(index, rejects))
    counts = {"ingestion.usable": len(index), "ingestion.rejected": len(rejects)}
    counts.update(
        {f"ingestion.rejected.{r}": n for r, n in rejects["reason"].value_counts().items()}
    )
    log_metrics(counts)
    return index, rejects
