"""The clip-encoder counterpart of EchoZoom: a video's clips, one embedding each.

CardiacCLIP on a clip encoder (``kind == "clip"``) cuts its clip of T frames into
``T / clip_frames`` consecutive clips of the backbone's length, embeds each with the
backbone (the frozen part, what the feature cache stores) and passes the embeddings
through a trainable linear map that starts as the identity, so the untrained model scores
exactly as the backbone's own embeddings do. MFL then attends over the clips.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cardiac_pipeline.errors import UserError
from cardiac_pipeline.nn.encoders.base import VideoEncoder


class ClipEmbedding(nn.Module):
    """Normalised frames [B, T, 3, H, W] -> clip embeddings [B, T / clip_frames, D]."""

    scales: tuple[int, ...] = (1,)

    def __init__(self, encoder: VideoEncoder) -> None:
        super().__init__()
        spec = encoder.input_spec
        if spec.clip_frames is None or spec.clip_frames < 1:
            raise ValueError(f"clip encoder {encoder.name!r} has no input_spec.clip_frames")
        self.trunk = encoder
        self.clip_frames = self.frames_per_feature = int(spec.clip_frames)
        self.size = int(spec.size)
        self.num_features = self.embed_dim = int(encoder.embed_dim)
        self.norm = nn.Identity()
        self.proj = nn.Linear(self.embed_dim, self.embed_dim)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(self.embed_dim))
            self.proj.bias.zero_()

    def feature_key(self) -> dict[str, Any]:
        """What the cached clip embeddings depend on besides the weights."""
        return {
            "trunk": type(self.trunk).__name__,
            "kind": "clip",
            "clip_frames": self.clip_frames,
            "size": self.size,
            "scales": list(self.scales),
        }

    def check_frames(self, frames: int) -> None:
        if frames % self.clip_frames:
            raise UserError(
                f"clips.frames: {frames} is not a multiple of backbone {self.trunk.name!r}'s "
                f"clip length {self.clip_frames}; fix: set clips.frames to a multiple of it"
            )

    def video_features(self, frames: torch.Tensor) -> torch.Tensor:
        """Clip embeddings [B, T / clip_frames, D] of normalised frames [B, T, 3, H, W]."""
        self.check_frames(frames.shape[1])
        return self.trunk.encode_sequence(frames)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Clip embeddings [..., D] through the trainable map (identity at the start)."""
        return self.proj(self.norm(features))
