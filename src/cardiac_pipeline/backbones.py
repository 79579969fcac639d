"""Backbones for notebooks and scripts, behind the encoder seam.

    from cardiac_pipeline.backbones import load_backbone
    encoder = load_backbone("echoclip", weights="/path/to/echo-clip")
    video_embeddings = encoder.encode_video(video)   # [B, 3, T, H, W] normalised
    text_embeddings = encoder.encode_text(["LVEF 55%"])

``video`` is normalised as ``encoder.input_spec`` says (pixels in [0, 1], then mean and
std per channel, ``input_spec.size`` square). A frame encoder returns [B, T, D], a clip
encoder [B, D] (T = ``input_spec.clip_frames``). Nothing is downloaded.
"""

from __future__ import annotations

import torch

from cardiac_pipeline.nn.encoders import VideoEncoder, create_encoder, list_encoders


def load_backbone(
    name: str, weights: str | None = None, device: str | torch.device = "cpu"
) -> VideoEncoder:
    """The registered backbone ``name`` with ``weights`` (None: random init), in eval mode.

    ``weights`` is what ``backbone.pretrained`` takes in conf: a checkpoint file, or the
    published folder of a model that brings its own (EchoCLIP's).
    """
    return create_encoder(name, weights, device).eval()


def list_backbones() -> list[str]:
    """Names ``load_backbone`` knows (source prefixes such as ``local-dir:`` end in ``:``)."""
    return list_encoders()
