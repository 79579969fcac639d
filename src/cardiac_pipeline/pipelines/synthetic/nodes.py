"""Nodes of the synthetic-data pipeline."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from cardiac_pipeline.datasets import SyntheticRequest

logger = logging.getLogger(__name__)


def request_synthetic_dataset(echonet_root: str, synthetic: dict[str, Any]) -> SyntheticRequest:
    """Ask for the synthetic dataset when ``echonet_root`` is the synthetic folder.

    When ``echonet_root`` points elsewhere (a real EchoNet copy) nothing is generated: an
    empty request, which the dataset ignores, so a typo in the path fails at ingestion
    with "folder not found" instead of silently filling it with phantoms.
    """
    if Path(echonet_root).resolve() != Path(synthetic["root"]).resolve():
        logger.info("echonet_root=%s is not the synthetic folder; generating nothing", echonet_root)
        return SyntheticRequest(params={})
    return SyntheticRequest(params=dict(synthetic["generate"]))
