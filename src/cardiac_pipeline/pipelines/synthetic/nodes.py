"""Nodes of the synthetic-data pipeline."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from cardiac_pipeline.config import record, section
from cardiac_pipeline.echo import synthetic

logger = logging.getLogger(__name__)


def generate_synthetic_folder(root: str | Path, params: dict[str, Any]) -> Path:
    """The synthetic dataset at ``root``: ``root`` itself when it is current (nothing is
    generated) or holds data the project did not make (left untouched), else a freshly
    generated folder beside it that the catalog's dataset renames onto ``root``."""
    root = Path(root)
    if synthetic.is_current(root, params):
        logger.info("Synthetic dataset at %s is up to date; not regenerating", root)
        return root
    if synthetic.made_elsewhere(root):
        logger.warning(
            "%s holds a dataset the project did not generate; leaving it untouched", root
        )
        return root
    logger.info("Generating the synthetic dataset for %s", root)
    return synthetic.stage_dataset(root, params)


def generate_synthetic_echonet(echonet_root: str, synthetic_params: dict[str, Any]) -> Path:
    """The embedded target-site dataset at ``synthetic.root`` (see ``generate_synthetic_folder``).

    When ``echonet_root`` points elsewhere (the user's own dataset) nothing is generated,
    so ``kedro run --pipeline synthetic --params=echonet_root=...`` never writes anything.
    """
    typed = section("synthetic", synthetic_params)
    root = Path(typed.root)
    if Path(echonet_root).expanduser().resolve() != root.expanduser().resolve():
        logger.info("echonet_root is not the synthetic folder; generating nothing")
        return root
    # site_overrides null is the generator's own site: left out, so that the stamp of a
    # dataset made before conf spelt the key out still matches
    params = {k: v for k, v in record(typed.generate).items() if v is not None}
    return generate_synthetic_folder(root, params)
