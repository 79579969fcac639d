"""Backbones behind one interface (``base``), registered by name."""

from cardiac_pipeline.nn.encoders.base import (
    ENCODER_KINDS,
    InputSpec,
    VideoEncoder,
    create_encoder,
    list_encoders,
    register_encoder,
)

__all__ = [
    "ENCODER_KINDS",
    "InputSpec",
    "VideoEncoder",
    "create_encoder",
    "list_encoders",
    "register_encoder",
]

# the published backbones register themselves on import
from cardiac_pipeline.nn.encoders import echoprime, panecho  # noqa: E402, F401
