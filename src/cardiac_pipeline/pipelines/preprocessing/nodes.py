"""Nodes of the preprocessing pipeline."""

from __future__ import annotations

from typing import Any

import pandas as pd

from cardiac_pipeline.datasets import ClipStoreRequest


def request_clip_store(
    video_index: pd.DataFrame, echonet_root: str, preprocessing: dict[str, Any]
) -> ClipStoreRequest:
    """Every usable video, decoded once into the clip store (built by the dataset's save)."""
    return ClipStoreRequest(
        index=video_index,
        echonet_root=echonet_root,
        size=int(preprocessing["size"]),
        workers=int(preprocessing.get("workers", 1)),
        options={k: v for k, v in preprocessing.items() if k in ("fit", "grey_tolerance")},
    )
