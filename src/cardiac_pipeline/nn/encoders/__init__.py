"""Backbones behind one interface (``base``), registered by name.

Every module of this package is imported here, so its ``@register_encoder`` builders are
registered: a new backbone is one module in this folder and nothing else.
"""

import importlib
import pkgutil

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

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

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
