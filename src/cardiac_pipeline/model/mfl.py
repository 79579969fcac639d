"""Multi-Frame Learning (MFL): pool T frame embeddings of a clip into one video embedding.

``AttentionPool`` is attention-based multiple-instance pooling: a small MLP scores each frame
(dim -> hidden -> tanh -> hidden -> tanh -> 1), softmax over frames, weighted sum, then a
linear dim -> dim. The weights are returned: they show which cardiac phases the model used.
``MeanPool`` is the ablation with uniform weights and the same output layer and interface.
``TemporalPool`` is a variant beside MFL (not instead of it): attention pooling plus the
spread of each dimension over the clip.

The output linear starts as the identity by default (the reference initialises it randomly):
a random dim x dim map after a pretrained CLIP image embedding would break its alignment
with the text embeddings before training has started.
"""

from __future__ import annotations

import torch
from torch import nn


def _output_layer(dim: int, identity_init: bool) -> nn.Linear:
    layer = nn.Linear(dim, dim)
    if identity_init:
        with torch.no_grad():
            layer.weight.copy_(torch.eye(dim))
            layer.bias.zero_()
    return layer


def _check(frame_embeddings: torch.Tensor, mask: torch.Tensor | None) -> None:
    if frame_embeddings.dim() != 3:
        raise ValueError(f"frame embeddings must be [B, T, D], got {tuple(frame_embeddings.shape)}")
    if mask is not None and tuple(mask.shape) != tuple(frame_embeddings.shape[:2]):
        raise ValueError(
            f"mask must be [B, T] = {tuple(frame_embeddings.shape[:2])}, got {tuple(mask.shape)}"
        )


class AttentionPool(nn.Module):
    """Attention MIL pooling over frames: [B, T, D] -> (video [B, D], weights [B, T])."""

    def __init__(self, dim: int, hidden: int = 64, *, identity_init: bool = True):
        super().__init__()
        self.score = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, 1),
        )
        self.out = _output_layer(dim, identity_init)

    def forward(
        self, frame_embeddings: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``mask`` [B, T] (True = real frame) keeps padded frames out; each clip needs one."""
        _check(frame_embeddings, mask)
        scores = self.score(frame_embeddings).squeeze(-1)  # [B, T]
        if mask is not None:
            scores = scores.masked_fill(~mask.bool(), float("-inf"))
        weights = torch.softmax(scores, dim=1)
        pooled = torch.einsum("bt,btd->bd", weights, frame_embeddings)
        return self.out(pooled), weights


class MeanPool(nn.Module):
    """Mean over frames (the MFL ablation), same interface as ``AttentionPool``."""

    def __init__(self, dim: int, *, identity_init: bool = True):
        super().__init__()
        self.out = _output_layer(dim, identity_init)

    def forward(
        self, frame_embeddings: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _check(frame_embeddings, mask)
        b, t, _ = frame_embeddings.shape
        if mask is None:
            weights = frame_embeddings.new_full((b, t), 1.0 / t)
        else:
            m = mask.to(frame_embeddings.dtype)
            weights = m / m.sum(dim=1, keepdim=True)
        pooled = torch.einsum("bt,btd->bd", weights, frame_embeddings)
        return self.out(pooled), weights


class TemporalPool(nn.Module):
    """MFL's attention pooling plus how each dimension moves over the clip.

    A softmax-weighted mean is a convex combination of frames: it can pick cardiac phases
    but not subtract them, while EF is the change of the ventricle over the cycle. Beside
    MFL's pooled embedding this adds, per embedding dimension, its spread over the clip's
    real frames (SD and max - min), mapped back to ``dim`` by a linear layer that starts
    at zero: at initialisation the output is ``AttentionPool``'s. [B, T, D] -> (video [B, D],
    attention weights [B, T]).
    """

    def __init__(self, dim: int, hidden: int = 64, *, identity_init: bool = True):
        super().__init__()
        self.attention = AttentionPool(dim, hidden, identity_init=identity_init)
        self.spread = nn.Linear(2 * dim, dim)
        with torch.no_grad():
            self.spread.weight.zero_()
            self.spread.bias.zero_()

    def forward(
        self, frame_embeddings: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, weights = self.attention(frame_embeddings, mask)
        return pooled + self.spread(clip_spread(frame_embeddings, mask)), weights


def clip_spread(frame_embeddings: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-dimension SD and max - min over a clip's real frames: [B, T, D] -> [B, 2D]."""
    _check(frame_embeddings, mask)
    x = frame_embeddings
    m = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if mask is None else mask.bool()
    w = m.to(x.dtype).unsqueeze(-1)
    count = w.sum(dim=1).clamp_min(1.0)
    mean = (x * w).sum(dim=1) / count
    sd = (((x - mean.unsqueeze(1)) ** 2 * w).sum(dim=1) / count).clamp_min(1e-12).sqrt()
    big = torch.finfo(x.dtype).max
    high = x.masked_fill(~m.unsqueeze(-1), -big).amax(dim=1)
    low = x.masked_fill(~m.unsqueeze(-1), big).amin(dim=1)
    return torch.cat([sd, high - low], dim=-1)
