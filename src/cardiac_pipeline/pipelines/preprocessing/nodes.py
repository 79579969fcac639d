"""Nodes of the preprocessing pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from cardiac_pipeline.config import section
from cardiac_pipeline.echo.clipstore import ClipStore, build_clip_store, store_key

STORE_OPTIONS = ("fit", "grey_tolerance")


def decode_clip_store(
    video_index: pd.DataFrame,
    echonet_root: str | Path,
    preprocessing: dict[str, Any],
    clip_store_folder: Path,
) -> ClipStore:
    """Decode every usable video once into its store under ``clip_store_folder``.

    The store of this dataset and these parameters is ``<folder>/<store_key>``; entries
    that match their source video are kept, so a rerun (or a resumed interrupted one)
    decodes only what is missing or changed.
    """
    preprocessing = section("preprocessing", preprocessing)
    options = {k: getattr(preprocessing, k) for k in STORE_OPTIONS}
    size = preprocessing.size
    root = Path(clip_store_folder) / store_key(echonet_root, {"size": size, **options})
    build_clip_store(video_index, root, size=size, workers=preprocessing.workers, **options)
    return ClipStore(root)
