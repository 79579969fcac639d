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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

EncoderKind = Literal["frame", "clip"]
ENCODER_KINDS: tuple[str, ...] = ("frame", "clip")


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


class VideoEncoder(nn.Module):
    """A backbone behind the seam.

    ``encode_video(video)`` takes a float tensor [B, 3, T, H, W], normalised as
    ``input_spec`` says, and returns [B, T, D] for a frame encoder or [B, D] for a clip
    encoder. ``encode_text(texts)`` returns [N, D] text embeddings (not normalised) where
    the backbone has a text tower (``has_text``).
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


EncoderBuilder = Callable[..., VideoEncoder]
_REGISTRY: dict[str, EncoderBuilder] = {}


def register_encoder(name: str) -> Callable[[EncoderBuilder], EncoderBuilder]:
    """Register ``builder(weights=None, device="cpu", **options) -> VideoEncoder`` as ``name``."""

    def add(builder: EncoderBuilder) -> EncoderBuilder:
        if name in _REGISTRY and _REGISTRY[name] is not builder:
            raise ValueError(f"backbone {name!r} is registered twice")
        _REGISTRY[name] = builder
        return builder

    return add


def list_encoders() -> list[str]:
    """Names of the registered backbones."""
    return sorted(_REGISTRY)


def encoder_builder(name: str) -> EncoderBuilder:
    """The builder registered as ``name``; ``ValueError`` listing the known names."""
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown backbone {name!r}; registered: {', '.join(list_encoders())}. "
            "Fix backbone.name in conf/ or --params."
        )
    return _REGISTRY[name]


def create_encoder(
    name: str, weights: str | None = None, device: str | torch.device = "cpu", **options: Any
) -> VideoEncoder:
    """Build the backbone registered as ``name`` with its weights (None: random init)."""
    return encoder_builder(name)(weights=weights, device=device, **options)
