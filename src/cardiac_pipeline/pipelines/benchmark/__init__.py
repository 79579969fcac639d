"""Benchmark: every method on identical few-shot splits."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
