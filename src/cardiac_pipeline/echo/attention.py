"""What MFL's attention over a clip's frames learned, in four numbers a reader can check.

MFL pools a clip's frame embeddings with softmax weights. Uniform weights are mean pooling
(the ablation), so each summary is scaled to read 1.0 there:

- ``mfl_entropy``: the weights' entropy over ``log T``; 1.0 uniform, towards 0 one frame.
- ``mfl_peak``: the largest weight times T; 1.0 uniform, T one frame.
- ``mfl_ed`` / ``mfl_es``: the weight of the clip frame nearest the traced end-diastole
  (end-systole) frame, times T, over the clips whose span holds that frame; above 1.0 the
  model favours that cardiac phase.

Each is the mean over TEST videos and their clips; NaN where nothing qualifies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

ATTENTION_KEYS = ("mfl_entropy", "mfl_peak", "mfl_ed", "mfl_es")


def attention_summary(
    attention: Mapping[str, Mapping[str, Any]], phases: Mapping[str, tuple[Any, Any]]
) -> dict[str, float]:
    """The ``ATTENTION_KEYS`` over videos. ``attention``: ``{FileName: {"attention": (N, T),
    "frame_indices": (N, T)}}``; ``phases``: ``{FileName: (ED frame, ES frame)}``, either
    None or NaN when unknown."""
    entropy, peak, at_phase = [], [], {"mfl_ed": [], "mfl_es": []}
    for name, item in attention.items():
        weights = np.atleast_2d(np.asarray(item["attention"], dtype=float))
        frames = np.atleast_2d(np.asarray(item["frame_indices"], dtype=float))
        if weights.shape != frames.shape or weights.shape[1] < 2:
            raise ValueError(f"attention of {name}: weights {weights.shape}, frames {frames.shape}")
        count = weights.shape[1]
        safe = np.clip(weights, 1e-12, None)
        entropy.extend(-(weights * np.log(safe)).sum(axis=1) / math.log(count))
        peak.extend(weights.max(axis=1) * count)
        for key, phase in zip(("mfl_ed", "mfl_es"), phases.get(name, (None, None)), strict=True):
            if phase is None or not np.isfinite(float(phase)):
                continue
            for clip_weights, clip_frames in zip(weights, frames, strict=True):
                if clip_frames.min() <= float(phase) <= clip_frames.max():
                    nearest = int(np.argmin(np.abs(clip_frames - float(phase))))
                    at_phase[key].append(clip_weights[nearest] * count)
    values = {"mfl_entropy": entropy, "mfl_peak": peak, **at_phase}
    return {key: float(np.mean(values[key])) if values[key] else math.nan for key in ATTENTION_KEYS}


def attended_frames(frame_indices: np.ndarray, n_attended: int) -> np.ndarray:
    """Frame numbers ``(N, T)`` of clips -> those of what MFL attended over ``(N, n)``.

    A frame encoder's MFL attends over the T frames (unchanged); a clip encoder's over its
    n backbone clips of T / n frames each, each placed at its first frame.
    """
    width = frame_indices.shape[-1]
    return frame_indices if width == n_attended else frame_indices[..., :: width // n_attended]
