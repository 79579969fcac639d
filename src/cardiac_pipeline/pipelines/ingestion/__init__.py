"""Validated ingestion of an EchoNet-format folder."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
