"""Backbone factory: registered configs, seeds, checkpoints, local-dir and offline hf-hub."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import open_clip
import pytest
import torch

from cardiac_pipeline.model.backbone import (
    BackboneWeightsNotFound,
    create_backbone,
    list_backbones,
    save_backbone_checkpoint,
)

ARCH = "echo-vit-tiny"  # the quickest to build


@pytest.fixture(autouse=True)
def _quiet_open_clip() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # open_clip warns "initialized randomly" for every small model
    yield
    root.setLevel(level)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_small_configs_are_registered_with_open_clip() -> None:
    names = list_backbones()
    for name in ("echo-convnext-tiny", "echo-vit-tiny", "echo-convnext-b-w"):
        assert name in names
        assert name in open_clip.list_models()
    cfg = open_clip.get_model_config("echo-convnext-b-w")
    assert cfg["embed_dim"] == 512 and cfg["vision_cfg"]["timm_model_name"] == "convnext_base"


@pytest.mark.parametrize("name", ["echo-convnext-tiny", "echo-vit-tiny"])
def test_small_backbone_encodes_112_frames_and_prompts(name: str) -> None:
    model, tokenizer, mean, std = create_backbone(name, seed=0)
    with torch.no_grad():
        image = model.encode_image(torch.zeros(2, 3, 112, 112))
        text = model.encode_text(tokenizer(["THE LEFT VENTRICLE IS NORMAL"]))
    assert image.shape == (2, 128) and text.shape == (1, 128)
    assert tokenizer(["x"]).shape == (1, 77)
    assert len(mean) == len(std) == 3


def test_seed_fixes_random_init_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = create_backbone(ARCH, seed=7).model
    assert torch.equal(torch.rand(1), expected_next)
    b = create_backbone(ARCH, seed=7).model
    c = create_backbone(ARCH, seed=8).model
    assert _same_weights(a, b)
    assert not _same_weights(a, c)


@pytest.mark.parametrize("wrapped", [True, False])
def test_checkpoint_round_trip(tmp_path: Path, wrapped: bool) -> None:
    source = create_backbone(ARCH, seed=1).model
    path = tmp_path / "backbone.pt"
    if wrapped:
        save_backbone_checkpoint(source, ARCH, path)
        assert set(torch.load(path, weights_only=True)) == {"arch", "state_dict"}
    else:
        torch.save(source.state_dict(), path)
    loaded = create_backbone(ARCH, pretrained=str(path), seed=2).model
    assert _same_weights(source, loaded)


def test_safetensors_checkpoint_round_trip(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    source = create_backbone(ARCH, seed=1).model
    path = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    assert _same_weights(source, create_backbone(ARCH, pretrained=path, seed=2).model)


def test_checkpoint_of_another_arch_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = save_backbone_checkpoint(create_backbone(ARCH, seed=1).model, ARCH, tmp_path / "b.pt")
    with pytest.raises(ValueError, match="saved for architecture 'echo-vit-tiny'"):
        create_backbone("echo-convnext-tiny", pretrained=str(path))


def test_missing_checkpoint_error_names_file_and_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "backbone.pt"
    with pytest.raises(BackboneWeightsNotFound) as info:
        create_backbone(ARCH, pretrained=str(missing))
    message = str(info.value)
    assert str(missing) in message
    assert "backbone.pretrained" in message and "conf/local/parameters.yml" in message


def test_open_clip_pretrained_tags_are_refused(no_network: None) -> None:
    with pytest.raises(ValueError, match="pretrained tags are not supported"):
        create_backbone(ARCH, pretrained="openai")


def _write_local_dir(
    folder: Path, model: torch.nn.Module, mean: list[float], std: list[float]
) -> None:
    folder.mkdir(parents=True)
    config = {
        "model_cfg": open_clip.get_model_config(ARCH),
        "preprocess_cfg": {"mean": mean, "std": std},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")


def test_local_dir_round_trip_with_its_mean_std(tmp_path: Path, no_network: None) -> None:
    source = create_backbone(ARCH, seed=3).model
    folder = tmp_path / "echo-clip"
    _write_local_dir(folder, source, [0.1, 0.2, 0.3], [0.4, 0.5, 0.6])
    for backbone in (
        create_backbone(f"local-dir:{folder}"),
        create_backbone("echo-convnext-tiny", pretrained=f"local-dir:{folder}"),  # pretrained wins
    ):
        assert _same_weights(source, backbone.model)
        assert backbone.mean == pytest.approx((0.1, 0.2, 0.3))
        assert backbone.std == pytest.approx((0.4, 0.5, 0.6))


def test_local_dir_without_weights_says_how_to_fix(tmp_path: Path) -> None:
    folder = tmp_path / "echo-clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": open_clip.get_model_config(ARCH)})
    )
    with pytest.raises(BackboneWeightsNotFound, match="no weights file") as info:
        create_backbone(f"local-dir:{folder}")
    assert "huggingface-cli download" in str(info.value)
    with pytest.raises(BackboneWeightsNotFound, match="not found"):
        create_backbone(f"local-dir:{tmp_path / 'missing'}")


def test_hf_hub_not_cached_gives_the_fix_without_network(tmp_path: Path, no_network: None) -> None:
    with pytest.raises(BackboneWeightsNotFound) as info:
        create_backbone("hf-hub:mkaichristensen/echo-clip", hf_cache_dir=tmp_path)
    message = str(info.value)
    assert "huggingface-cli download mkaichristensen/echo-clip" in message
    assert "pretrained: local-dir:" in message and "conf/local/parameters.yml" in message
    assert str(tmp_path) in message


def test_hf_hub_resolves_from_the_local_cache_offline(tmp_path: Path, no_network: None) -> None:
    source = create_backbone(ARCH, seed=4).model
    commit = "0" * 40
    repo = tmp_path / "models--someone--echo-model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    _write_local_dir(repo / "snapshots" / commit, source, [0.5] * 3, [0.25] * 3)
    backbone = create_backbone("hf-hub:someone/echo-model", hf_cache_dir=tmp_path)
    assert _same_weights(source, backbone.model)
    assert backbone.mean == pytest.approx((0.5, 0.5, 0.5))


def test_unknown_name_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="echo-convnext-tiny"):
        create_backbone("echo-resnet-huge")


def test_load_weights_false_starts_a_named_model_from_random(
    tmp_path: Path, no_network: None
) -> None:
    """The from-scratch ablation of EchoCLIP: its architecture and preprocessing, no weights."""
    source = create_backbone(ARCH, seed=3).model
    folder = tmp_path / "echo-clip"
    _write_local_dir(folder, source, [0.1, 0.2, 0.3], [0.4, 0.5, 0.6])
    checkpoint = save_backbone_checkpoint(source, ARCH, tmp_path / "b.pt")
    for name, pretrained in ((f"local-dir:{folder}", None), (ARCH, str(checkpoint))):
        scratch = create_backbone(name, pretrained, seed=5, load_weights=False)
        assert not _same_weights(source, scratch.model)
        assert _same_weights(create_backbone(ARCH, seed=5).model, scratch.model)
    assert create_backbone(f"local-dir:{folder}", load_weights=False).mean == pytest.approx(
        (0.1, 0.2, 0.3)
    )


def test_log_says_where_the_weights_came_from_not_random_init(tmp_path: Path, caplog) -> None:
    import logging

    path = save_backbone_checkpoint(create_backbone(ARCH, seed=1).model, ARCH, tmp_path / "b.pt")
    with caplog.at_level(logging.INFO):
        create_backbone(ARCH, str(path))
        loaded = caplog.text
        caplog.clear()
        create_backbone(ARCH, None)
        random = caplog.text
    # open_clip's "initialized randomly" would be wrong for a model whose weights follow
    assert "initialized randomly" not in loaded and f"weights from {path}" in loaded
    assert "initialized randomly" not in random and f"backbone {ARCH}: random init" in random
    assert not logging.getLogger().filters  # the filter is gone again
