"""Backbones behind one interface (``base``), registered by name.

Importing this package registers the backbones of its modules (one module per family).
"""

from cardiac_pipeline.nn.encoders import open_clip as _open_clip  # noqa: F401 (registers)
from cardiac_pipeline.nn.encoders.base import (
    ENCODER_KINDS,
    FrameEncoder,
    InputSpec,
    NotApplicable,
    TowerHead,
    VideoEncoder,
    create_encoder,
    list_encoders,
    register_encoder,
)

__all__ = [
    "ENCODER_KINDS",
    "FrameEncoder",
    "InputSpec",
    "NotApplicable",
    "TowerHead",
    "VideoEncoder",
    "create_encoder",
    "list_encoders",
    "register_encoder",
]
