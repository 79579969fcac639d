"""open_clip frame encoders: EchoCLIP from its published folder layout, offline.

The folder here is EchoCLIP's layout (``open_clip_config.json`` with ``model_cfg`` and
``preprocess_cfg``, weights in ``open_clip_pytorch_model.bin``) with a shrunken ConvNeXt.
"""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch

from cardiac_pipeline.errors import UserError
from cardiac_pipeline.model import recipe
from cardiac_pipeline.model.backbone import register_model_configs
from cardiac_pipeline.nn.encoders import create_encoder
from tests.conftest import base_recipe

MEAN, STD = [0.1, 0.2, 0.3], [0.4, 0.5, 0.6]


def _echoclip_config(embed_dim: int = 16) -> dict:
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


def _write_folder(folder: Path, state_dict: dict | None = None) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": _echoclip_config(), "preprocess_cfg": {"mean": MEAN, "std": STD}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    if state_dict is None:
        torch.manual_seed(3)
        model = open_clip.model.CLIP(**config["model_cfg"])
        state_dict = model.state_dict()
    torch.save(state_dict, folder / "open_clip_pytorch_model.bin")
    return state_dict


def test_echoclip_loads_its_published_folder(tmp_path: Path, no_network: None) -> None:
    saved = _write_folder(tmp_path / "echo-clip")
    encoder = create_encoder("echoclip", weights=str(tmp_path / "echo-clip")).eval()
    assert encoder.name == "echoclip" and encoder.kind == "frame" and encoder.embed_dim == 16
    assert encoder.input_spec.size == 64
    assert encoder.input_spec.mean == pytest.approx(MEAN)
    assert encoder.input_spec.std == pytest.approx(STD)
    for key, value in saved.items():
        torch.testing.assert_close(encoder.model.state_dict()[key], value)
    with torch.no_grad():
        assert encoder.encode_video(torch.randn(1, 3, 2, 64, 64)).shape == (1, 2, 16)
        assert encoder.encode_text(["LVEF 55%"]).shape == (1, 16)


def test_cardiac_clip_runs_echozoom_on_echoclip_and_rebuilds_from_config(
    tmp_path: Path, no_network: None
) -> None:
    _write_folder(tmp_path / "echo-clip")
    arch = recipe.arch_of(
        base_recipe(
            backbone={"name": "echoclip", "pretrained": str(tmp_path / "echo-clip")},
            cardiac_clip={"scales": [1, 2], "tile": 64, "prompt_set": "values"},
            training={"adaptation": "full"},
        )
    )
    model = recipe.build_cardiac_clip(arch, seed=0).eval()
    clips = torch.randint(0, 256, (1, 2, 1, 112, 112), dtype=torch.uint8)
    rebuilt = recipe.build_cardiac_clip(arch, weights=False)  # the folder's config, no weights
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(clips).ef, model(clips).ef)


def _remove(folder: Path, name: str) -> None:
    (folder / name).unlink()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (None, "needs its folder"),
        ("missing", "not found"),
        ("open_clip_config.json", "no open_clip_config.json"),
        ("open_clip_pytorch_model.bin", "no weights file"),
        ("other", "do not fit"),
    ],
)
def test_echoclip_folder_errors_are_one_line_with_the_fix(
    tmp_path: Path, damage: str | None, message: str
) -> None:
    folder = tmp_path / "echo-clip"
    _write_folder(folder)
    weights: str | None = str(folder)
    if damage is None:
        weights = None
    elif damage == "missing":
        weights = str(tmp_path / "nowhere")
    elif damage == "other":  # weights of another model (a different width)
        register_model_configs()
        other = open_clip.model.CLIP(**{**_echoclip_config(embed_dim=8)})
        _write_folder(folder, other.state_dict())
    else:
        _remove(folder, damage)
    with pytest.raises(UserError, match=message) as info:
        create_encoder("echoclip", weights=weights)
    text = str(info.value)
    assert "\n" not in text and "fix" in text.lower()
