"""Tiny published-layout files for the echo foundation models, written without network."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import open_clip
import pytest
import torch

from cardiac_pipeline.model.backbone import register_model_configs
from cardiac_pipeline.nn.encoders import create_encoder

#: shrunken architectures (the published ones are tested on the meta device only)
TINY_ECHOPRIME: dict[str, Any] = {
    "video_width": 8,
    "video_depths": (1, 1, 1, 1),
    "size": 32,
    "clip_frames": 4,
    "embed_dim": 16,
    "text_overrides": {
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 24,
    },
}
TINY_PANECHO: dict[str, Any] = {
    "convnext_widths": (8, 16, 32, 64),
    "convnext_depths": (1, 1, 1, 1),
    "heads": 8,
    "layers": 1,
    "size": 32,
    "clip_frames": 4,
}
VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "the",
    "left",
    "ventricular",
    "ejection",
    "fraction",
    "is",
    "%",
    "normal",
    "reduced",
    *"0123456789",
]


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection attempt fails the test: these models must load offline."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def write_tokenizer(folder: Path, vocab: list[str] = VOCAB) -> Path:
    """A BERT WordPiece tokenizer folder as the hub publishes one (vocab.txt + config)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (folder / "tokenizer_config.json").write_text(
        '{"tokenizer_class": "BertTokenizer", "do_lower_case": true}'
    )
    return folder


@pytest.fixture
def tokenizer_dir(tmp_path: Path) -> Path:
    return write_tokenizer(tmp_path / "biomedbert-tokenizer")


def write_model_data(folder: Path, tokenizer: Path) -> Any:
    """EchoPrime's model_data/weights/*.pt from a random tiny model; returns that model."""
    torch.manual_seed(0)
    source = create_encoder("echoprime", tokenizer=str(tokenizer), **TINY_ECHOPRIME)
    (folder / "weights").mkdir(parents=True)
    torch.save(source.video.state_dict(), folder / "weights" / "echo_prime_encoder.pt")
    torch.save(source.text.state_dict(), folder / "weights" / "echo_prime_text_encoder.pt")
    return source


def write_panecho(path: Path) -> Any:
    """PanEcho's panecho.pt ({"weights": state dict}) from a random tiny model; returns it."""
    torch.manual_seed(0)
    source = create_encoder("panecho", **TINY_PANECHO)
    with torch.no_grad():  # move the EF head off its initial bias so the test can tell
        source.ef_head().bias.add_(3.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"weights": source.state_dict()}, path)
    return source


def write_echoclip_folder(folder: Path) -> Path:
    """The files that identify an open_clip folder such as mkaichristensen/echo-clip."""
    folder.mkdir(parents=True)
    (folder / "open_clip_config.json").write_text('{"model_cfg": {}}')
    torch.save(
        {"visual.trunk.stem.0.weight": torch.zeros(1)}, folder / "open_clip_pytorch_model.bin"
    )
    return folder


def assert_one_line(message: str, *parts: str) -> None:
    """A user-facing error: one line naming the file, with the fix."""
    assert "\n" not in message
    assert "Fix:" in message
    for part in parts:
        assert part in message, (part, message)


ECHOCLIP_MEAN, ECHOCLIP_STD = [0.1, 0.2, 0.3], [0.4, 0.5, 0.6]


def echoclip_config(embed_dim: int = 16) -> dict:
    """EchoCLIP's model_cfg (a timm ConvNeXt with a linear projection) at a tiny width."""
    register_model_configs()  # registers the small timm ConvNeXt used as its tower
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {
            "timm_model_name": "echo_convnext_tiny",
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
            "image_size": 64,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 1,
        },
    }


def write_echoclip_weights(folder: Path, state_dict: dict | None = None) -> dict:
    """EchoCLIP's published folder (open_clip_config.json + open_clip_pytorch_model.bin)
    with a shrunken ConvNeXt; returns the state dict written."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model_cfg": echoclip_config(),
        "preprocess_cfg": {"mean": ECHOCLIP_MEAN, "std": ECHOCLIP_STD},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    if state_dict is None:
        torch.manual_seed(3)
        model = open_clip.model.CLIP(**config["model_cfg"])
        state_dict = model.state_dict()
    torch.save(state_dict, folder / "open_clip_pytorch_model.bin")
    return state_dict
