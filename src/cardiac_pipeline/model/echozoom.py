"""EchoZoom: multi-scale ("Scaling on Scales", S2) frame encoding, and pixel normalisation.

A frame is encoded at scale 1 (as is) and at each larger scale s (upsampled to s*tile, cut
into s x s tiles of tile pixels, every tile through the same image trunk). The tile feature
maps are stitched back where the tiles came from, pooled to the scale-1 map size, and the
per-scale maps are concatenated on channels. Global average pooling, a per-scale LayerNorm
(``ScaleNorm``: each scale's channels normalised on their own, as the tower normalises its
map) and a linear projection then give the frame embedding. ``pooled_features`` stops
before the norm: that is what the frame-feature cache (``model/features.py``) stores, and
``embed`` is the trainable part that turns it into the embedding.

The trunk is the backbone's image tower cut before its pooling head (the frame encoder's
``feature_trunk()``: each tower type brings its own adapter). The head (norm +
projection) moves into EchoZoom: the new norm and projection are initialised from it
(norm weights repeated per scale; the scale-1 block of the projection is the tower's, the
other scales' blocks start at zero), so EchoZoom reproduces the tower's own pooled
embedding exactly at initialisation, whatever the scales: the larger scales' tiles, views
pretraining never saw, shifted an averaged start by 10-14 EF points
(docs/results/start_calibration.md); from zero they enter only as far as training finds
them useful. This keeps the image embedding aligned with the text embedding of a
pretrained CLIP from the first step (a freshly random projection, as in the reference
code, would throw that alignment away). Without scale 1 in ``scales`` the projection is
split evenly over the scales instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cardiac_pipeline.nn.encoders.base import TowerHead


class PixelNormalize(nn.Module):
    """uint8 (0-255) or float (0-1) frames [N, C, H, W] -> float, normalised, 3 channels.

    Lives in the model so clips stay uint8 until they are on the device. Grey frames (C = 1)
    broadcast to the 3 channels of the mean/std. Floating inputs are taken to be in [0, 1]
    (the torchvision convention), uint8 inputs are divided by 255.
    """

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype = torch.float32
    ):
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} values but std has {len(std)}")
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=dtype).view(1, -1, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(std, dtype=dtype).view(1, -1, 1, 1), persistent=False
        )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        channels = frames.shape[1]
        if channels not in (1, self.mean.shape[1]):
            raise ValueError(f"frames have {channels} channels; expected 1 or {self.mean.shape[1]}")
        x = frames.to(self.mean.dtype)
        if not frames.is_floating_point():
            x = x / 255.0
        return (x - self.mean) / self.std


def cut_into_tiles(images: torch.Tensor, scale: int, tile: int) -> torch.Tensor:
    """[N, C, s*tile, s*tile] -> [N*s*s, C, tile, tile], tiles in row-major order per image."""
    n, c, _, _ = images.shape
    x = images.reshape(n, c, scale, tile, scale, tile)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(n * scale * scale, c, tile, tile)


def stitch_tiles(maps: torch.Tensor, scale: int) -> torch.Tensor:
    """Inverse of ``cut_into_tiles`` for feature maps: [N*s*s, C, h, w] -> [N, C, s*h, s*w]."""
    ns2, c, h, w = maps.shape
    n = ns2 // (scale * scale)
    x = maps.reshape(n, scale, scale, c, h, w)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(n, c, scale * h, scale * w)


class ScaleNorm(nn.Module):
    """LayerNorm over each scale's ``channels`` separately, one affine over all of them.

    [N, S*C] -> [N, S*C]. With one scale it is ``nn.LayerNorm(C)`` (same parameter names
    and shapes); with several, scale 1's normalised channels do not depend on the others,
    so a zero projection block for the other scales leaves the scale-1 embedding exact.
    """

    def __init__(self, n_scales: int, channels: int, eps: float = 1e-6):
        super().__init__()
        self.n_scales = int(n_scales)
        self.channels = int(channels)
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(self.n_scales * self.channels))
        self.bias = nn.Parameter(torch.zeros(self.n_scales * self.channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        per_scale = x.reshape(*shape[:-1], self.n_scales, self.channels)
        normed = F.layer_norm(per_scale, (self.channels,), eps=self.eps).reshape(shape)
        return normed * self.weight + self.bias


class EchoZoom(nn.Module):
    """Multi-scale frame encoder: images [N, 3, H, W] (normalised) -> embeddings [N, D].

    ``scales=(1,)`` turns the multi-scale part off: the same path with one scale, i.e. the
    tower's own pooling head (avg pool, norm, projection), initialised from the tower.
    All tiles of all scales go through the trunk in one batch.
    """

    frames_per_feature = 1  # one pooled feature per frame (a clip encoder's: per clip)

    def __init__(
        self,
        trunk: nn.Module,
        scales: Sequence[int] = (1, 2),
        tile: int = 112,
        *,
        embed_dim: int | None = None,
        head: TowerHead | None = None,
        interpolation: str = "bicubic",
    ):
        super().__init__()
        scales = tuple(int(s) for s in scales)
        if not scales or any(s < 1 for s in scales) or len(set(scales)) != len(scales):
            raise ValueError(f"scales must be distinct positive integers, got {scales}")
        self.trunk = trunk
        self.scales = scales
        self.tile = int(tile)
        self.interpolation = interpolation
        channels = int(trunk.num_features)
        head = head if head is not None else getattr(trunk, "tower_head", None)
        if embed_dim is None:
            if head is None or head.proj_weight is None:
                raise ValueError(
                    "embed_dim is needed when the trunk has no projection to start from"
                )
            embed_dim = int(head.proj_weight.shape[0])
        self.num_features = channels
        self.embed_dim = int(embed_dim)
        n_scales = len(scales)
        self.norm = ScaleNorm(n_scales, channels, eps=head.norm_eps if head is not None else 1e-6)
        with_bias = head is not None and head.proj_bias is not None
        self.proj = nn.Linear(channels * n_scales, self.embed_dim, bias=with_bias)
        if head is not None:
            self._init_from_head(head, n_scales)

    @torch.no_grad()
    def _init_from_head(self, head: TowerHead, n_scales: int) -> None:
        if head.norm_weight is not None:
            self.norm.weight.copy_(head.norm_weight.repeat(n_scales))
        if head.norm_bias is not None:
            self.norm.bias.copy_(head.norm_bias.repeat(n_scales))
        if head.proj_weight is not None and tuple(head.proj_weight.shape) == (
            self.embed_dim,
            self.num_features,
        ):
            if 1 in self.scales:  # scale 1 as the tower; the others enter from zero
                self.proj.weight.zero_()
                first = self.scales.index(1) * self.num_features
                self.proj.weight[:, first : first + self.num_features].copy_(head.proj_weight)
            else:
                self.proj.weight.copy_(head.proj_weight.repeat(1, n_scales) / n_scales)
            if self.proj.bias is not None and head.proj_bias is not None:
                self.proj.bias.copy_(head.proj_bias)

    def _resize(self, images: torch.Tensor, size: int) -> torch.Tensor:
        if tuple(images.shape[-2:]) == (size, size):
            return images
        align = False if self.interpolation in ("bilinear", "bicubic") else None
        return F.interpolate(
            images, size=(size, size), mode=self.interpolation, align_corners=align
        )

    def feature_maps(self, images: torch.Tensor) -> torch.Tensor:
        """Multi-scale feature map [N, len(scales)*C, h, w] (h, w: the map of one tile)."""
        n = images.shape[0]
        tiles = [
            cut_into_tiles(self._resize(images, s * self.tile), s, self.tile) for s in self.scales
        ]
        maps = self.trunk(torch.cat(tiles) if len(tiles) > 1 else tiles[0])
        h, w = maps.shape[-2:]
        per_scale = []
        start = 0
        for s in self.scales:
            count = n * s * s
            stitched = stitch_tiles(maps[start : start + count], s)
            start += count
            per_scale.append(stitched if s == 1 else F.adaptive_avg_pool2d(stitched, (h, w)))
        return torch.cat(per_scale, dim=1)

    def pooled_features(self, images: torch.Tensor) -> torch.Tensor:
        """Globally pooled multi-scale features [N, len(scales)*C] (what the cache stores)."""
        return self.feature_maps(images).mean(dim=(-2, -1))

    def embed(self, pooled: torch.Tensor) -> torch.Tensor:
        """Frame embeddings [..., D] from pooled features [..., len(scales)*C]."""
        return self.proj(self.norm(pooled))

    def feature_key(self) -> dict[str, object]:
        """What the cached pooled features depend on besides the weights and the pixels."""
        return {
            "trunk": type(self.trunk).__name__,
            "scales": list(self.scales),
            "tile": self.tile,
            "interpolation": self.interpolation,
        }

    def video_features(self, frames: torch.Tensor) -> torch.Tensor:
        """Pooled features [B, T, S*C] of normalised frames [B, T, 3, H, W] (one per frame)."""
        b, t = frames.shape[:2]
        return self.pooled_features(frames.flatten(0, 1)).reshape(b, t, -1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(self.pooled_features(images))
