"""Predict: LVEF for a folder of new, unlabelled videos (AVI, MP4, DICOM) with a trained model."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
