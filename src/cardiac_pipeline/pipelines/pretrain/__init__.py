"""Contrastive video-report pretraining of the CLIP backbone on a source-site corpus."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
