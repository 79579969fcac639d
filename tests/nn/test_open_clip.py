"""open_clip frame encoders: EchoCLIP from its published folder layout, offline.

The folder here is EchoCLIP's layout (``open_clip_config.json`` with ``model_cfg`` and
``preprocess_cfg``, weights in ``open_clip_pytorch_model.bin``) with a shrunken ConvNeXt.
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch

from cardiac_pipeline.errors import UserError
from cardiac_pipeline.model import recipe
from cardiac_pipeline.model.backbone import register_model_configs
from cardiac_pipeline.nn.encoders import create_encoder
from tests.conftest import base_recipe
from tests.nn.conftest import ECHOCLIP_MEAN as MEAN
from tests.nn.conftest import ECHOCLIP_STD as STD
from tests.nn.conftest import echoclip_config as _echoclip_config
from tests.nn.conftest import write_echoclip_weights as _write_folder


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
