"""Few-shot CardiacCLIP: splits, training, evaluation, summary."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
