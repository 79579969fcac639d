"""Out-of-distribution flags of a model: its calibration videos' description in the
checkpoint, and new videos scored against it (the math: ``echo.ood``).

The embeddings are the pooled video embeddings that ``train.predict_videos`` returns per
video (``attention[name]["video_embedding"]``). A checkpoint keeps the description as
tensors and plain numbers, so it still loads with ``weights_only=True``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from cardiac_pipeline.echo import ood
from cardiac_pipeline.echo.ood import OOD_COLUMNS

logger = logging.getLogger(__name__)


def embedding_matrix(
    attention: Mapping[str, Mapping[str, Any]], names: Sequence[str]
) -> np.ndarray:
    """``(videos, D)`` pooled embeddings of ``names``, in that order."""
    missing = [n for n in names if "video_embedding" not in attention.get(n, {})]
    if missing:
        raise ValueError(f"no video embedding for {len(missing)} videos (e.g. {missing[0]})")
    return np.stack([np.asarray(attention[n]["video_embedding"], dtype=float) for n in names])


def describe_calibration(
    attention: Mapping[str, Mapping[str, Any]], names: Sequence[str], quantile: float
) -> dict[str, Any] | None:
    """The checkpoint's ``ood`` entry from its calibration videos; None when too few."""
    if len(names) < ood.MIN_CALIBRATION_VIDEOS:
        logger.warning(
            "%d calibration videos: too few to describe them, no out-of-distribution flags "
            "for this model (needs >= %d)",
            len(names),
            ood.MIN_CALIBRATION_VIDEOS,
        )
        return None
    description = ood.describe(embedding_matrix(attention, names), quantile)
    if description["expected_flag_rate"] > 2 * (1 - quantile):
        logger.warning(
            "%d calibration videos: the out-of-distribution flag fires for about %.1f%% of "
            "in-distribution videos, not %.1f%% (more calibration videos: "
            "fewshot.calibration_size)",
            description["n"],
            100 * description["expected_flag_rate"],
            100 * (1 - quantile),
        )
    return {
        k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in description.items()
    }


def ood_columns(
    attention: Mapping[str, Mapping[str, Any]],
    names: Sequence[str],
    description: Mapping[str, Any] | None,
) -> pd.DataFrame:
    """``OOD_COLUMNS`` for ``names`` (in order); NA / NaN without a description."""
    if not description:
        return pd.DataFrame(
            {
                OOD_COLUMNS[0]: pd.array([pd.NA] * len(names), dtype="boolean"),
                OOD_COLUMNS[1]: math.nan,
                OOD_COLUMNS[2]: math.nan,
            },
            index=range(len(names)),
        )
    scored = ood.score_videos(embedding_matrix(attention, names), description)
    return pd.DataFrame(
        {
            OOD_COLUMNS[0]: pd.array(scored["out_of_distribution"], dtype="boolean"),
            OOD_COLUMNS[1]: scored["score"],
            OOD_COLUMNS[2]: scored["percentile"],
        }
    )


def checkpoint_description(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The checkpoint's description, or None (logged once) for a model stored without one."""
    description = checkpoint.get("ood")
    if not description:
        logger.info(
            "model has no description of its calibration videos (made before "
            "out-of-distribution flags, or with too few): out-of-distribution flags are "
            "not available for it"
        )
        return None
    return dict(description)
