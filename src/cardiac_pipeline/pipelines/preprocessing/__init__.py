"""Decode once, cache model-ready frames."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
