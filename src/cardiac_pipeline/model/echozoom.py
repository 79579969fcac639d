"""EchoZoom: multi-scale ("Scaling on Scales", S2) frame encoding, and pixel normalisation.

A frame is encoded at scale 1 (as is) and at each larger scale s (upsampled to s*tile, cut
into s x s tiles of tile pixels, every tile through the same image trunk). The tile feature
maps are stitched back where the tiles came from, pooled to the scale-1 map size, and the
per-scale maps are concatenated on channels. Global average pooling, a per-scale LayerNorm
(``ScaleNorm``: each scale's channels normalised on their own, as the tower normalises its
map) and a linear projection then give the frame embedding. ``pooled_features`` stops
before the norm: that is what the frame-feature cache (``model/features.py``) stores, and
``embed`` is the trainable part that turns it into the embedding.

The trunk is the backbone's image tower cut before its pooling head. The head (norm +
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
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip.timm_model import TimmModel
from open_clip.transformer import VisionTransformer
from torch import nn


@dataclass(frozen=True)
class TowerHead:
    """The pooling head of an image tower: LayerNorm over channels, then a linear projection."""

    norm_weight: torch.Tensor | None  # [C]
    norm_bias: torch.Tensor | None  # [C]
    norm_eps: float
    proj_weight: torch.Tensor | None  # [D, C] (nn.Linear layout)
    proj_bias: torch.Tensor | None  # [D]


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


class TimmFeatureTrunk(nn.Module):
    """An open_clip timm tower (e.g. ConvNeXt) cut before pooling: image -> NCHW feature map.

    Takes the tower over: the timm classifier head is removed (its norm and the open_clip
    projection are kept in ``tower_head`` for EchoZoom to start from).
    """

    def __init__(self, visual: TimmModel):
        super().__init__()
        trunk = visual.trunk
        norm = getattr(getattr(trunk, "head", None), "norm", None)
        proj = getattr(visual.head, "proj", None)
        pooled_by_avg = "pool" not in dict(visual.head.named_children())
        linear = proj if isinstance(proj, nn.Linear) and pooled_by_avg else None
        self.tower_head = TowerHead(
            norm_weight=_clone(getattr(norm, "weight", None)),
            norm_bias=_clone(getattr(norm, "bias", None)),
            norm_eps=float(getattr(norm, "eps", 1e-6)),
            proj_weight=_clone(linear.weight) if linear is not None else None,
            proj_bias=_clone(linear.bias) if linear is not None else None,
        )
        if hasattr(trunk, "prune_intermediate_layers"):
            trunk.prune_intermediate_layers(indices=1, prune_norm=False, prune_head=True)
        else:
            trunk.reset_classifier(0, global_pool="")
        self.trunk = trunk
        self.num_features = int(trunk.num_features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk.forward_features(images)


class ViTFeatureTrunk(nn.Module):
    """An open_clip VisionTransformer cut before pooling: image -> patch tokens as a grid map.

    The class token still takes part in attention; only patch tokens form the map. The
    tower's final LayerNorm and projection move to ``tower_head``. With ``pool_type: avg``
    and ``final_ln_after_pool: true`` (our ``echo-vit-tiny``) EchoZoom at scale 1 equals the
    tower exactly; with class-token pooling it is a close start, not an exact one.
    """

    def __init__(self, visual: VisionTransformer):
        super().__init__()
        if not isinstance(visual.patch_dropout, nn.Identity):
            raise ValueError(
                "ViTFeatureTrunk needs patch_dropout = 0 (dropped patches break the grid)."
            )
        if visual.attn_pool is not None:
            raise ValueError("ViTFeatureTrunk does not support attentional pooling towers.")
        proj = visual.proj
        self.tower_head = TowerHead(
            norm_weight=_clone(getattr(visual.ln_post, "weight", None)),
            norm_bias=_clone(getattr(visual.ln_post, "bias", None)),
            norm_eps=float(getattr(visual.ln_post, "eps", 1e-5)),
            proj_weight=_clone(proj.t()) if proj is not None else None,
            proj_bias=None,
        )
        visual.prune_intermediate_layers(indices=1, prune_norm=True, prune_head=True)
        self.visual = visual
        self.num_features = int(visual.transformer.width)
        self.image_size = tuple(visual.image_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[-2:]) != self.image_size:
            raise ValueError(
                f"ViT tower expects {self.image_size} tiles, got {tuple(images.shape[-2:])}; "
                "set EchoZoom tile to the tower's image_size."
            )
        out = self.visual.forward_intermediates(
            images, indices=1, intermediates_only=True, output_fmt="NCHW"
        )
        return out["image_intermediates"][-1]


def _clone(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.detach().clone()


def feature_trunk(visual: nn.Module) -> nn.Module:
    """Wrap an open_clip image tower (timm ConvNeXt or VisionTransformer) as a feature-map trunk."""
    if isinstance(visual, TimmModel):
        return TimmFeatureTrunk(visual)
    if isinstance(visual, VisionTransformer):
        return ViTFeatureTrunk(visual)
    raise TypeError(
        f"EchoZoom supports open_clip timm towers and VisionTransformer, not {type(visual).__name__}."
    )


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

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(self.pooled_features(images))
