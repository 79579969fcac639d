"""LVEF-range prompts, their bin values, the EF -> bin rule, and EchoCLIP-style zero-shot prompts.

The text is upper case like the echo reports EchoCLIP was trained on. Each prompt is
"THE LEFT VENTRICULAR EJECTION FRACTION IS ESTIMATED TO BE" + range name + a short clinical
description (appearance, contractility, wall motion), as in CardiacCLIP.

Binning rule (one rule, consistent with the prompt texts, for real-valued EF):
    EF < 30          -> 0 severely reduced
    30 <= EF < 45    -> 1 moderately reduced   ("30-44%")
    45 <= EF < 55    -> 2 mildly reduced       ("45-54%")
    55 <= EF <= 70   -> 3 normal               ("55-70%")
    EF > 70          -> 4 hyperdynamic         (">70%")
The reference code bins floor(EF) with <=30, 31-45, 46-55, 56-70, >70, which disagrees with
its own prompt texts at the edges: EF in [30, 31), [45, 46), [55, 56) falls one bin lower
there than here, and EF in (70, 71) is "normal" there but "hyperdynamic" here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, TypeVar

import numpy as np
import torch

from cardiac_pipeline.echo.ranges import EF_PROMPT_PREFIX, LVEF_RANGES

LVEF_PROMPTS: tuple[str, ...] = tuple(r.prompt for r in LVEF_RANGES)
BIN_VALUES: tuple[float, ...] = tuple(r.bin_value for r in LVEF_RANGES)  # (15, 37, 50, 62, 85)
# Lower edges of bins 1..3 (EF >= edge) and the edge above which EF is hyperdynamic (EF > 70).
BIN_EDGES: tuple[float, ...] = (30.0, 45.0, 55.0, 70.0)

ArrayLike = TypeVar("ArrayLike", float, np.ndarray, torch.Tensor)


def ef_to_bin(ef: ArrayLike, edges: Sequence[float] = BIN_EDGES) -> ArrayLike:
    """Bin index of an ejection fraction (float, numpy array or tensor; same kind back).

    Bin = number of ``edges[:-1]`` with EF >= edge, plus 1 when EF > ``edges[-1]``: the
    last edge is inclusive of the lower bin (EF 70 is "normal (55-70%)").
    """
    if len(edges) < 1:
        raise ValueError("edges needs at least one value")
    *lower, top = (float(e) for e in edges)
    if isinstance(ef, torch.Tensor):
        bins = torch.zeros_like(ef, dtype=torch.long)
        for edge in lower:
            bins = bins + (ef >= edge).long()
        return bins + (ef > top).long()
    array = np.asarray(ef, dtype=float)
    bins = sum((array >= edge).astype(np.int64) for edge in lower) + (array > top).astype(np.int64)
    return int(bins) if np.ndim(ef) == 0 else bins


ZERO_SHOT_EF_TEMPLATE = EF_PROMPT_PREFIX + " {value}% "
# Candidate EFs: every integer of the clinical range (EF < 10 or > 90 is all but absent; a
# from-scratch text tower has rarely or never seen those numbers in a report).
ZERO_SHOT_EF_VALUES: tuple[int, ...] = tuple(range(10, 91))


def zero_shot_ef_prompts(
    values: Sequence[float] = ZERO_SHOT_EF_VALUES, template: str = ZERO_SHOT_EF_TEMPLATE
) -> list[str]:
    """EchoCLIP-style prompts "THE LEFT VENTRICULAR EJECTION FRACTION IS ESTIMATED TO BE X% "."""
    return [template.format(value=_format_value(v)) for v in values]


def _format_value(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def zero_shot_ef(
    similarity: torch.Tensor,
    values: Sequence[float] = ZERO_SHOT_EF_VALUES,
    *,
    aggregate: Literal["expectation", "top_fraction"] = "expectation",
    logit_scale: float = 100.0,
    top_fraction: float = 0.2,
) -> torch.Tensor:
    """EF from cosine similarities to ``zero_shot_ef_prompts(values)``, EchoCLIP style.

    ``similarity`` is [B, V] (per video) or [B, F, V] (per frame; per-frame estimates are
    averaged). ``aggregate="expectation"``: the mean of ``values`` under the softmax of
    ``logit_scale * similarity`` (the model's own temperature), which shrinks an unsure
    model towards the middle of the range. ``"top_fraction"``: rank the values by
    similarity and average the best ``top_fraction`` of them (EchoCLIP's scoring).
    """
    if similarity.shape[-1] != len(values):
        raise ValueError(
            f"similarity has {similarity.shape[-1]} candidates but {len(values)} values"
        )
    value_tensor = torch.as_tensor(values, dtype=torch.float32, device=similarity.device)
    if aggregate == "expectation":
        weights = torch.softmax(similarity * float(logit_scale), dim=-1)
        estimate = (weights * value_tensor).sum(dim=-1)
        return estimate.mean(dim=1) if estimate.dim() == 2 else estimate
    if aggregate != "top_fraction":
        raise ValueError(f"aggregate must be 'expectation' or 'top_fraction', got {aggregate!r}")
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    ranked = value_tensor[torch.argsort(similarity, dim=-1, descending=True)]
    if ranked.dim() == 3:
        ranked = ranked.mean(dim=1)
    top = max(1, math.ceil(round(top_fraction * len(values), 9)))
    return ranked[..., :top].mean(dim=-1)
