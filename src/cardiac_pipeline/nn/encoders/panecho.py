"""PanEcho (CarDS-Yale/PanEcho) as a clip encoder, with its EF head as the zero-shot reference.

A ConvNeXt-Tiny embeds each frame, a fixed sinusoidal table marks the frame's position, a
4-layer transformer mixes the frames and their mean is the clip embedding (768-d). One
``Sequential(Dropout, Linear)`` head per task follows; which tasks exist and their sizes is
data (``model_configs/encoders/panecho-tasks.json``, from the repository's ``tasks.pkl``),
so loading needs no network. Module names follow the authors' ``MultiTaskModel``, so the
published ``panecho.pt`` loads with ``strict=True``.

The authors' data loader read frames with OpenCV, so PanEcho was trained on BGR frames
normalised with ImageNet's RGB statistics; on grey-scale echo the channels are equal and
the order does not matter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.convnext import CNBlockConfig, ConvNeXt

from cardiac_pipeline.nn.encoders.base import InputSpec, VideoEncoder, register_encoder
from cardiac_pipeline.nn.encoders.published import (
    check_clip,
    load_encoder_config,
    load_published,
    read_checkpoint,
    require_path,
)

WHAT = "PanEcho's panecho.pt"
WEIGHTS_FIX = (
    "set backbone.pretrained to the panecho.pt file of PanEcho's v1.0 release "
    "(a dict whose 'weights' hold the multi-task model's state dict)."
)
TASKS_FILE = "panecho-tasks.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def convnext_trunk(widths: Sequence[int], depths: Sequence[int]) -> ConvNeXt:
    """torchvision's ConvNeXt (published: Tiny, 96-192-384-768, 3-3-9-3) with no classifier layer.

    The trunk returns the pooled, layer-normed ``widths[-1]`` features of each frame.
    """
    stages = [
        CNBlockConfig(width, widths[i + 1] if i + 1 < len(widths) else None, depth)
        for i, (width, depth) in enumerate(zip(widths, depths, strict=True))
    ]
    trunk = ConvNeXt(stages, stochastic_depth_prob=0.1)
    trunk.classifier[-1] = nn.Identity()
    return trunk


def sinusoid_table(frames: int, width: int) -> torch.Tensor:
    """[1, frames, width]: sin on even, cos on odd channels, wavelengths 2 pi to 10000 * 2 pi."""
    position = torch.arange(frames, dtype=torch.float32)[:, None]
    rate = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    table = torch.zeros(frames, width)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate)
    return table[None]


class _Trunk(nn.Module):
    """Holds the per-frame network under ``model`` (the published key path)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.model(frames)


class _TimeTable(nn.Module):
    """The fixed frame-position table, saved as ``pe`` like the authors'."""

    def __init__(self, frames: int, width: int) -> None:
        super().__init__()
        self.register_buffer("pe", sinusoid_table(frames, width))

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        return sequence + self.pe[0, : sequence.shape[1]]


class FrameTransformer(nn.Module):
    """[B, 3, T, H, W] -> [B, D]: frame trunk, time table, transformer, mean over frames."""

    def __init__(self, trunk: ConvNeXt, width: int, heads: int, layers: int, frames: int) -> None:
        super().__init__()
        self.encoder = _Trunk(trunk)
        layer = nn.TransformerEncoderLayer(
            d_model=width,
            nhead=heads,
            dim_feedforward=width,
            dropout=0.0,
            activation="relu",
            batch_first=True,
        )
        self.transformer = nn.TransformerEncoder(
            layer, num_layers=layers, enable_nested_tensor=False
        )
        self.time_encoder = _TimeTable(frames, width)
        self.width = width

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        # The published model reshapes [B, 3, T, H, W] to [B * T, 3, H, W] without moving
        # the channel axis (so each "frame" holds 3 consecutive frames of one channel); its
        # weights were trained on that grouping, so it is kept.
        batch, channels, frames, height, width = video.shape
        flat = video.reshape(batch * frames, channels, height, width)
        sequence = self.encoder(flat).reshape(batch, frames, self.width)
        return self.transformer(self.time_encoder(sequence)).mean(dim=1)


class PanEchoEncoder(VideoEncoder):
    """PanEcho's frame transformer (``encoder``) and one ``<task>_head`` per task."""

    kind = "clip"

    def __init__(self, encoder: FrameTransformer, tasks: dict[str, Any], spec: InputSpec) -> None:
        super().__init__()
        self.name = "panecho"
        self.encoder = encoder
        self.input_spec = spec
        self.embed_dim = encoder.width
        self.ef_task = tasks["ef_task"]
        self.task_names = [task["name"] for task in tasks["tasks"]]
        for task in tasks["tasks"]:
            head = nn.Sequential(
                nn.Dropout(tasks["head_dropout"]), nn.Linear(encoder.width, task["outputs"])
            )
            nn.init.constant_(head[-1].bias, task["train_mean"])
            self.add_module(f"{task['name']}_head", head)

    def ef_head(self) -> nn.Linear:
        """The EF regression layer (features -> EF in %): the zero-shot reference and the
        adapted head's starting point."""
        return self.get_submodule(f"{self.ef_task}_head")[-1]

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        check_clip(video, self.input_spec, self.name)
        return self.encoder(video)

    def predict_ef(self, video: torch.Tensor) -> torch.Tensor:
        """[B] EF in % from PanEcho's own EF head."""
        return self.ef_from_features(self.encode_video(video))

    def ef_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """[B] EF in % from clip embeddings [B, D] (e.g. cached ones)."""
        return self.get_submodule(f"{self.ef_task}_head")(features)[:, 0]


def _read_weights(weights: str) -> dict[str, torch.Tensor]:
    path = require_path(Path(weights).expanduser(), WHAT, WEIGHTS_FIX, backbone="panecho")
    checkpoint = read_checkpoint(path, WHAT, WEIGHTS_FIX)
    state = checkpoint.get("weights", checkpoint)
    return dict(state) if isinstance(state, dict) else {}


@register_encoder("panecho")
def build_panecho(
    weights: str | None = None,
    device: str | torch.device = "cpu",
    convnext_widths: Sequence[int] = (96, 192, 384, 768),
    convnext_depths: Sequence[int] = (3, 3, 9, 3),
    heads: int = 8,
    layers: int = 4,
    size: int = 224,
    clip_frames: int = 16,
) -> PanEchoEncoder:
    """PanEcho from ``weights`` (its panecho.pt; None: random init).

    The options shrink the architecture for tests; the defaults are the published one.
    """
    state = _read_weights(weights) if weights is not None else None
    trunk = convnext_trunk(convnext_widths, convnext_depths)
    encoder = FrameTransformer(trunk, convnext_widths[-1], heads, layers, clip_frames)
    spec = InputSpec(size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD, clip_frames=clip_frames)
    model = PanEchoEncoder(encoder, load_encoder_config(TASKS_FILE), spec)
    if state is not None:
        load_published(state, model, Path(weights), WHAT, "panecho", WEIGHTS_FIX)
    return model.to(device).eval()
