"""The encoder seam: one interface for every backbone, registered by name.

Two kinds of encoder sit behind it:

- ``frame`` encoders embed each frame on its own (open_clip image towers: our small CLIPs,
  EchoCLIP). CardiacCLIP runs EchoZoom and MFL over their frames.
- ``clip`` encoders embed a whole clip of ``InputSpec.clip_frames`` frames (EchoPrime's
  MViT, PanEcho's frame transformer). MFL attends over a video's clips; EchoZoom does not
  apply.

A backbone is one module that defines a ``VideoEncoder`` subclass and registers a builder
with ``@register_encoder("name")`` (timm's ``@register_model`` is the model). Nothing else
dispatches on the backbone's type.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from cardiac_pipeline.errors import UserError

EncoderKind = Literal["frame", "clip"]
ENCODER_KINDS: tuple[str, ...] = ("frame", "clip")


class NotApplicable(UserError):
    """A method or option that does not apply to this backbone (EchoZoom on a clip
    encoder, prompts without a text tower); the benchmark leaves such a method out."""


@dataclass(frozen=True)
class InputSpec:
    """What a backbone expects of its input; stored with every checkpoint made from it.

    ``mean`` and ``std`` are per channel on pixels scaled to [0, 1] (a backbone normalised
    on 0-255 pixels divides its constants by 255). ``clip_frames`` is the clip length of a
    clip encoder (None for a frame encoder); ``frame_stride`` the stride its authors sample
    frames at.
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    clip_frames: int | None = None
    frame_stride: int = 1


@dataclass(frozen=True)
class TowerHead:
    """The pooling head of an image tower: LayerNorm over channels, then a linear projection.

    EchoZoom starts its own norm and projection from it, so that at scale 1 it reproduces
    the tower's embedding (and keeps a CLIP's image-text alignment) from the first step.
    """

    norm_weight: torch.Tensor | None  # [C]
    norm_bias: torch.Tensor | None  # [C]
    norm_eps: float
    proj_weight: torch.Tensor | None  # [D, C] (nn.Linear layout)
    proj_bias: torch.Tensor | None  # [D]


class VideoEncoder(nn.Module):
    """A backbone behind the seam.

    ``encode_video(video)`` takes a float tensor [B, 3, T, H, W], normalised as
    ``input_spec`` says, and returns [B, T, D] for a frame encoder or [B, D] for a clip
    encoder. ``encode_text(texts)`` returns [N, D] text embeddings (not normalised) where
    the backbone has a text tower (``has_text``).

    What CardiacCLIP needs beyond that has defaults here: ``logit_scale`` (the CLIP
    temperature of the prompt head), ``text_tower``/``tokenize`` (a text tower that
    CardiacCLIP owns as a module; without one it calls ``encode_text`` on the prompts) and
    ``ef_head`` (a backbone's own EF regression head, the zero-shot reference of a backbone
    without text).
    """

    kind: ClassVar[EncoderKind]
    name: str
    embed_dim: int
    input_spec: InputSpec

    @property
    def has_text(self) -> bool:
        return False

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        raise TypeError(f"backbone {self.name!r} has no text tower")

    def encode_sequence(self, frames: torch.Tensor) -> torch.Tensor:
        """Normalised frames [B, T, 3, H, W] -> one embedding per clip [B, T / L, D].

        L is ``input_spec.clip_frames`` (a clip encoder; T a multiple of it); frames are
        resized to ``input_spec.size`` first. A frame encoder gives one per frame (L = 1).
        """
        b, t, c, h, w = frames.shape
        length, size = int(self.input_spec.clip_frames or 1), self.input_spec.size
        if (h, w) != (size, size):
            flat = F.interpolate(
                frames.reshape(b * t, c, h, w),
                size=(size, size),
                mode="bilinear",
                align_corners=False,
            )
            frames = flat.reshape(b, t, c, size, size)
        n = t // length
        clips = frames.reshape(b * n, length, *frames.shape[2:]).transpose(1, 2)
        return self.encode_video(clips).reshape(b, n, -1)

    def logit_scale(self) -> torch.Tensor:
        """log of the image-text logit scale (CLIP's learned temperature; default 100)."""
        return torch.tensor(math.log(100.0))

    def text_tower(self) -> nn.Module | None:
        """A module ``forward(tokens) -> [N, D]`` over ``tokenize``'s output, or None.

        CardiacCLIP takes it over (its parameters become the ``text_tower`` group); None
        (the default) makes CardiacCLIP call ``encode_text`` on the prompt strings instead.
        """
        return None

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        raise TypeError(f"backbone {self.name!r} has no tokenizer")

    def ef_head(self) -> nn.Module | None:
        """The backbone's own EF head (embedding [B, D] -> EF [B]), or None."""
        return None


class FrameEncoder(VideoEncoder):
    """A backbone that embeds each frame on its own; EchoZoom runs on its ``feature_trunk``.

    Subclasses give ``encode_frames`` and ``feature_trunk``; ``encode_video`` follows.
    """

    kind: ClassVar[EncoderKind] = "frame"

    def encode_frames(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images [N, 3, H, W] -> embeddings [N, D]."""
        raise NotImplementedError

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = video.shape
        frames = video.transpose(1, 2).reshape(b * t, c, h, w)
        return self.encode_frames(frames).reshape(b, t, -1)

    def encode_sequence(self, frames: torch.Tensor) -> torch.Tensor:
        """Normalised frames [B, T, 3, H, W] -> frame embeddings [B, T, D] (sizes as given)."""
        b, t = frames.shape[:2]
        return self.encode_frames(frames.flatten(0, 1)).reshape(b, t, -1)

    def feature_trunk(self) -> nn.Module:
        """The image tower cut before its pooling head: images [N, 3, H, W] -> feature map
        [N, C, h, w]; with ``num_features`` (C) and ``tower_head`` (a ``TowerHead`` or None).

        Takes the tower over (its head is removed): call it once, on an encoder built for it.
        """
        raise NotImplementedError


EncoderBuilder = Callable[..., VideoEncoder]
_REGISTRY: dict[str, EncoderBuilder] = {}
_ARCHITECTURE_FROM_WEIGHTS: set[str] = set()
SOURCE_SEPARATOR = ":"


def register_encoder(
    name: str, *, architecture_from_weights: bool = False
) -> Callable[[EncoderBuilder], EncoderBuilder]:
    """Register ``builder(weights=None, device="cpu", **options) -> VideoEncoder`` as ``name``.

    A name ending in ``:`` (``local-dir:``, ``hf-hub:``) registers a source prefix: every
    backbone name starting with it goes to that builder, which gets the whole name as
    ``options["source"]``. ``architecture_from_weights``: the weights source also holds the
    architecture (an open_clip folder with its config); such a builder gets the source and
    ``load_weights=False`` when only the architecture is wanted, any other gets
    ``weights=None`` then.
    """

    def add(builder: EncoderBuilder) -> EncoderBuilder:
        if name in _REGISTRY and _REGISTRY[name] is not builder:
            raise ValueError(f"backbone {name!r} is registered twice")
        _REGISTRY[name] = builder
        if architecture_from_weights:
            _ARCHITECTURE_FROM_WEIGHTS.add(name)
        return builder

    return add


def list_encoders() -> list[str]:
    """Names of the registered backbones (source prefixes end in ``:``)."""
    return sorted(_REGISTRY)


def _registered_as(name: str) -> str | None:
    """The registry entry of a backbone name: itself, or its source prefix."""
    if name in _REGISTRY:
        return name
    head, separator, _ = str(name).partition(SOURCE_SEPARATOR)
    return head + separator if separator and head + separator in _REGISTRY else None


def encoder_builder(name: str) -> EncoderBuilder:
    """The builder registered as ``name`` (or its source prefix); a ``UserError`` otherwise."""
    entry = _registered_as(name)
    if entry is None:
        raise UserError(
            f"backbone.name: unknown backbone {name!r}; registered: {', '.join(list_encoders())}. "
            "Fix backbone.name in conf/ or --params."
        )
    return _REGISTRY[entry]


def create_encoder(
    name: str,
    weights: str | None = None,
    device: str | torch.device = "cpu",
    *,
    load_weights: bool = True,
    **options: Any,
) -> VideoEncoder:
    """Build the backbone registered as ``name`` with its weights (None: random init).

    ``load_weights=False`` builds the architecture only (random init): a checkpoint's
    weights follow, or a from-scratch ablation.
    """
    builder, entry = encoder_builder(name), _registered_as(name)
    if entry != name:
        options = {**options, "source": name}
    if entry in _ARCHITECTURE_FROM_WEIGHTS:
        options = {**options, "load_weights": load_weights}
    elif not load_weights:
        weights = None
    return builder(weights=weights, device=device, **options)
