"""Clip sampling from a cached ``(F, C, H, W)`` uint8 video (numpy only, no torch).

A clip is ``frames`` frames taken every ``period``-th frame. Training takes one clip from a
random start; test-time averaging takes several evenly spaced clips of the same video.

Decisions (the reference, EchoNet-Dynamic's ``Echo`` dataset, does the same unless noted):

- Short videos (fewer than ``(frames - 1) * period + 1`` frames) start at frame 0 and the
  missing frames are **zeros** by default (``pad_mode="zero"``, as EchoNet and CardiacCLIP
  do). ``pad_mode="edge"`` repeats the last frame instead; it avoids black frames the model
  never sees otherwise but departs from the reference.
- Frame-rate resampling is optional: with ``target_fps`` set, the step between taken frames
  is ``max(1, round(period * fps / target_fps))`` so a 117 fps and a 22 fps video cover about
  the same time. The reference ignores frame rate (``target_fps=None``).
- Test-time clips: ``n_clips`` evenly spaced starts (always exactly ``n_clips``, repeating
  start 0 for short videos, so eval batches stack), or ``"all"``: non-overlapping clips that
  tile the video from frame 0 (EchoNet's ``clips="all"`` takes every start, stride 1, which
  costs ~100x more forward passes for nearly the same average).

Only the frames a clip needs are read, so sampling from a memory-mapped store entry touches
``frames`` frames, not the whole video.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

PadMode = Literal["zero", "edge"]


@dataclass(frozen=True)
class ClipSpec:
    """How clips are cut from a video.

    frames: number of frames in a clip (T). period: step between taken frames at the
    video's own rate, or at ``target_fps`` when that is set. pad_mode: how short videos
    are filled, ``"zero"`` (reference) or ``"edge"`` (repeat the last frame).
    """

    frames: int = 48
    period: int = 2
    target_fps: float | None = None
    pad_mode: PadMode = "zero"

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError(f"ClipSpec.frames must be >= 1, got {self.frames}")
        if self.period < 1:
            raise ValueError(f"ClipSpec.period must be >= 1, got {self.period}")
        if self.target_fps is not None and not self.target_fps > 0:
            raise ValueError(f"ClipSpec.target_fps must be > 0 or None, got {self.target_fps}")
        if self.pad_mode not in ("zero", "edge"):
            raise ValueError(f"ClipSpec.pad_mode must be 'zero' or 'edge', got {self.pad_mode!r}")


def effective_period(spec: ClipSpec, fps: float | None = None) -> int:
    """Frame step for a video at ``fps``: ``spec.period`` rescaled to ``spec.target_fps``.

    Without a target rate, or without a usable ``fps`` (None, NaN, <= 0), the step is
    ``spec.period`` unchanged.
    """
    if spec.target_fps is None or fps is None or not math.isfinite(fps) or fps <= 0:
        return spec.period
    return max(1, int(round(spec.period * fps / spec.target_fps)))


def clip_span(spec: ClipSpec, fps: float | None = None) -> int:
    """Number of video frames one clip covers, first to last taken frame inclusive."""
    return (spec.frames - 1) * effective_period(spec, fps) + 1


def clip_at(video: np.ndarray, start: int, spec: ClipSpec, fps: float | None = None) -> np.ndarray:
    """The clip starting at frame ``start``: ``(T, C, H, W)``, same dtype as ``video``.

    Frames past the end of the video are padded per ``spec.pad_mode``.
    """
    if video.ndim != 4:
        raise ValueError(f"video must be (F, C, H, W), got shape {video.shape}")
    num_frames = video.shape[0]
    if num_frames == 0:
        raise ValueError("video has no frames")
    if not 0 <= start < num_frames:
        raise ValueError(f"clip start {start} outside a video of {num_frames} frames")
    indices = start + effective_period(spec, fps) * np.arange(spec.frames)
    inside = indices < num_frames
    if inside.all():
        return np.asarray(video[indices])
    if spec.pad_mode == "edge":
        return np.asarray(video[np.minimum(indices, num_frames - 1)])
    clip = np.zeros((spec.frames, *video.shape[1:]), dtype=video.dtype)
    clip[inside] = video[indices[inside]]
    return clip


def random_clip_start(
    num_frames: int, spec: ClipSpec, rng: np.random.Generator, fps: float | None = None
) -> int:
    """A uniformly random start among those whose clip fits; 0 for a short video."""
    last_start = num_frames - clip_span(spec, fps)
    return int(rng.integers(0, last_start + 1)) if last_start > 0 else 0


def sample_clip(
    video: np.ndarray,
    spec: ClipSpec,
    rng: np.random.Generator,
    fps: float | None = None,
) -> np.ndarray:
    """One training clip from a uniformly random start: ``(T, C, H, W)``.

    Every start whose clip fits in the video is equally likely; a video shorter than one
    clip starts at 0 and is padded.
    """
    return clip_at(video, random_clip_start(video.shape[0], spec, rng, fps), spec, fps)


def eval_clip_starts(
    num_frames: int,
    spec: ClipSpec,
    n_clips: int | Literal["all"],
    fps: float | None = None,
) -> np.ndarray:
    """Start frames of the test-time clips of a ``num_frames`` video (int64 array).

    ``n_clips`` int: exactly that many starts, evenly spaced from 0 to the last start whose
    clip fits (all 0 when the video is shorter than one clip). ``"all"``: non-overlapping
    clips from frame 0 while they fit, at least one.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    span = clip_span(spec, fps)
    last_start = max(0, num_frames - span)
    if n_clips == "all":
        return np.arange(0, last_start + 1, span, dtype=np.int64)
    if isinstance(n_clips, str) or int(n_clips) < 1:
        raise ValueError(f"n_clips must be a positive int or 'all', got {n_clips!r}")
    return np.round(np.linspace(0, last_start, int(n_clips))).astype(np.int64)


def pad_and_random_crop(clip: np.ndarray, pad: int = 12, *, rng: np.random.Generator) -> np.ndarray:
    """Zero-pad each frame by ``pad`` pixels, then crop back to ``H x W`` at a random offset.

    The same offset applies to every frame of the clip (a shift of the whole video, up to
    ``pad`` pixels each way), as in the reference augmentation. Works on ``(..., H, W)``.
    Built without materialising the padded array.
    """
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    if pad == 0:
        return clip.copy()
    height, width = clip.shape[-2:]
    dy, dx = (int(v) - pad for v in rng.integers(0, 2 * pad + 1, size=2))
    out = np.zeros_like(clip)
    # output pixel (y, x) comes from input pixel (y + dy, x + dx) when that is inside
    oy0, oy1 = max(0, -dy), min(height, height - dy)
    ox0, ox1 = max(0, -dx), min(width, width - dx)
    if oy0 < oy1 and ox0 < ox1:
        out[..., oy0:oy1, ox0:ox1] = clip[..., oy0 + dy : oy1 + dy, ox0 + dx : ox1 + dx]
    return out
