"""The public entry point: ``load_backbone`` returns an encoder a notebook can call."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cardiac_pipeline.backbones import list_backbones, load_backbone
from cardiac_pipeline.errors import UserError
from cardiac_pipeline.model.backbone import create_backbone, save_backbone_checkpoint


def test_a_frame_encoder_embeds_every_frame_and_its_texts() -> None:
    encoder = load_backbone("echo-vit-tiny")
    assert encoder.kind == "frame" and not encoder.training and encoder.has_text
    video = torch.randn(2, 3, 3, encoder.input_spec.size, encoder.input_spec.size)
    with torch.no_grad():
        frames = encoder.encode_video(video)
        second = encoder.model.encode_image(video[:, :, 1])
        text = encoder.encode_text(["LVEF 60%", "LVEF 30%", "a third"])
    assert frames.shape == (2, 3, encoder.embed_dim) and text.shape == (3, encoder.embed_dim)
    torch.testing.assert_close(frames[:, 1], second)


def test_weights_come_from_a_checkpoint_file(tmp_path: Path) -> None:
    source = create_backbone("echo-convnext-tiny", seed=4).model
    path = save_backbone_checkpoint(source, "echo-convnext-tiny", tmp_path / "b.pt")
    encoder = load_backbone("echo-convnext-tiny", weights=str(path))
    for key, value in source.state_dict().items():
        torch.testing.assert_close(encoder.model.state_dict()[key], value)


def test_an_unknown_name_is_one_line_listing_the_choices() -> None:
    assert {"echo-vit-tiny", "echoclip"} <= set(list_backbones())
    with pytest.raises(UserError, match="unknown backbone 'echo-huge'.*echo-vit-tiny") as info:
        load_backbone("echo-huge")
    assert "\n" not in str(info.value)
