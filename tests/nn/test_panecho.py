"""PanEcho behind the encoder seam: panecho.pt loads, embeddings and EF match, errors are clear."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torchvision

from cardiac_pipeline.errors import UserError
from cardiac_pipeline.nn.encoders import create_encoder, list_encoders
from cardiac_pipeline.nn.encoders.panecho import (
    IMAGENET_MEAN,
    convnext_trunk,
    sinusoid_table,
)
from cardiac_pipeline.nn.encoders.published import ENCODER_CONFIG_DIR
from tests.nn.conftest import (
    TINY_PANECHO,
    assert_one_line,
    write_echoclip_folder,
    write_model_data,
    write_panecho,
)


def clip(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 4, 32, 32, generator=torch.Generator().manual_seed(2))


def build(weights: Path | None) -> object:
    return create_encoder(
        "panecho", weights=None if weights is None else str(weights), **TINY_PANECHO
    )


def test_registered_as_a_clip_encoder_with_imagenet_normalisation() -> None:
    assert "panecho" in list_encoders()
    encoder = build(None)
    assert encoder.kind == "clip" and encoder.embed_dim == 64 and not encoder.has_text
    assert encoder.input_spec.mean == IMAGENET_MEAN and encoder.input_spec.clip_frames == 4
    with pytest.raises(TypeError, match="no text tower"):
        encoder.encode_text(["x"])


def test_panecho_pt_loads_and_gives_the_source_models_embeddings_and_ef(tmp_path: Path) -> None:
    source = write_panecho(tmp_path / "panecho.pt")
    loaded = build(tmp_path / "panecho.pt")
    video = clip()
    with torch.no_grad():
        features = loaded.encode_video(video)
        assert features.shape == (2, 64)
        torch.testing.assert_close(features, source.encode_video(video))
        ef = loaded.predict_ef(video)
        assert ef.shape == (2,)
        torch.testing.assert_close(ef, source.predict_ef(video))
        torch.testing.assert_close(ef, loaded.ef_head()(features)[:, 0])
        torch.testing.assert_close(loaded.ef_from_features(features), ef)
    assert not loaded.training


def test_a_bare_state_dict_of_the_model_loads_too(tmp_path: Path) -> None:
    source = write_panecho(tmp_path / "panecho.pt")
    torch.save(source.state_dict(), tmp_path / "bare.pt")
    loaded = build(tmp_path / "bare.pt")
    torch.testing.assert_close(loaded.ef_head().bias, source.ef_head().bias)


def test_task_heads_follow_the_repositorys_task_data() -> None:
    tasks = json.loads((ENCODER_CONFIG_DIR / "panecho-tasks.json").read_text())
    assert len(tasks["tasks"]) == 40
    encoder = build(None)
    ef = next(t for t in tasks["tasks"] if t["name"] == "EF")
    assert ef["type"] == "regression" and ef["outputs"] == 1
    assert encoder.ef_head().out_features == 1
    assert encoder.ef_head().bias.item() == pytest.approx(ef["train_mean"])
    assert encoder.get_submodule("LVSystolicFunction_head")[-1].out_features == 3
    assert encoder.get_submodule("RVSystolicFunction_head")[-1].out_features == 1
    assert encoder.get_submodule("EF_head")[0].p == pytest.approx(0.25)


def test_time_table_is_the_fixed_sinusoid() -> None:
    table = sinusoid_table(16, 8)
    assert table.shape == (1, 16, 8)
    assert table[0, 0, 0::2].abs().max() == 0 and torch.all(table[0, 0, 1::2] == 1)
    assert table[0, 3, 2].item() == pytest.approx(math.sin(3 * 10000 ** (-2 / 8)))
    assert table[0, 3, 3].item() == pytest.approx(math.cos(3 * 10000 ** (-2 / 8)))


def test_frames_are_grouped_as_the_published_model_groups_them() -> None:
    encoder = build(None)
    video = clip(1)
    frames = encoder.encoder.encoder(video.reshape(4, 3, 32, 32)).reshape(1, 4, 64)
    with torch.no_grad():
        expected = encoder.encoder.transformer(encoder.encoder.time_encoder(frames)).mean(1)
        torch.testing.assert_close(encoder.encode_video(video), expected)


def test_published_architecture_keys_and_shapes() -> None:
    with torch.device("meta"):
        trunk = convnext_trunk((96, 192, 384, 768), (3, 3, 9, 3)).state_dict()
        reference = torchvision.models.convnext_tiny()
        reference.classifier[-1] = torch.nn.Identity()
        model = create_encoder("panecho", device="meta").state_dict()
    assert {k: v.shape for k, v in trunk.items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }
    assert model["encoder.time_encoder.pe"].shape == (1, 16, 768)
    assert model["encoder.transformer.layers.3.linear1.weight"].shape == (768, 768)
    assert model["encoder.transformer.layers.3.self_attn.in_proj_weight"].shape == (3 * 768, 768)
    assert "encoder.transformer.layers.4.linear1.weight" not in model
    assert model["EF_head.1.weight"].shape == (1, 768)
    assert model["E|EAvg_head.1.weight"].shape == (1, 768)
    assert len([k for k in model if k.endswith("_head.1.weight")]) == 40


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError) as error:
        build(tmp_path / "panecho.pt")
    assert_one_line(str(error.value), str(tmp_path / "panecho.pt"), "not found", "panecho.pt")


def test_a_state_dict_with_other_keys(tmp_path: Path) -> None:
    torch.save({"weights": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "panecho.pt")
    with pytest.raises(UserError) as error:
        build(tmp_path / "panecho.pt")
    assert_one_line(str(error.value), str(tmp_path / "panecho.pt"), "not in the published layout")


def test_not_a_state_dict(tmp_path: Path) -> None:
    torch.save(torch.zeros(3), tmp_path / "panecho.pt")
    with pytest.raises(UserError) as error:
        build(tmp_path / "panecho.pt")
    assert_one_line(str(error.value), str(tmp_path / "panecho.pt"), "not a state dict")


def test_weights_of_another_width(tmp_path: Path) -> None:
    write_panecho(tmp_path / "panecho.pt")
    with pytest.raises(UserError) as error:
        create_encoder(
            "panecho", weights=str(tmp_path / "panecho.pt"), **{**TINY_PANECHO, "clip_frames": 8}
        )
    assert_one_line(str(error.value), "encoder.time_encoder.pe", "another shape")


def test_echoprime_model_data_given_to_panecho(tmp_path: Path, tokenizer_dir: Path) -> None:
    write_model_data(tmp_path / "model_data", tokenizer_dir)
    with pytest.raises(UserError) as error:
        build(tmp_path / "model_data")
    assert_one_line(str(error.value), "EchoPrime's model_data folder", "backbone.name: echoprime")


def test_echoprime_encoder_file_given_to_panecho(tmp_path: Path, tokenizer_dir: Path) -> None:
    write_model_data(tmp_path / "model_data", tokenizer_dir)
    path = tmp_path / "model_data" / "weights" / "echo_prime_encoder.pt"
    with pytest.raises(UserError) as error:
        build(path)
    assert_one_line(
        str(error.value),
        str(path),
        "is EchoPrime's echo_prime_encoder.pt",
        "backbone.name: echoprime",
    )


def test_an_echoclip_folder_given_to_panecho(tmp_path: Path) -> None:
    folder = write_echoclip_folder(tmp_path / "echo-clip")
    with pytest.raises(UserError) as error:
        build(folder)
    assert_one_line(str(error.value), str(folder), "open_clip", "backbone.name: echoclip")


def test_the_adapted_head_starts_as_panechos_ef_head(tmp_path: Path) -> None:
    """Before the first step CardiacCLIP's linear head predicts PanEcho's own EF (the mean
    over a video's clips), so adaptation starts from the zero-shot reference."""
    from cardiac_pipeline.model.cardiac_clip import CardiacCLIP

    weights = tmp_path / "panecho.pt"
    write_panecho(weights)
    model = CardiacCLIP(build(weights), scales=(1,), head="linear", seed=0).eval()
    reference = build(weights)
    pixels = torch.rand(3, 8, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ef = model(pixels).ef
        normalised = model.normalize(pixels.flatten(0, 1)).reshape(pixels.shape)
        clips = normalised.reshape(3, 2, 4, 3, 32, 32).transpose(2, 3).flatten(0, 1)
        own = reference.predict_ef(clips).reshape(3, 2).mean(dim=1)
    torch.testing.assert_close(ef, own, atol=0.05, rtol=0)
    assert not torch.allclose(own, own.mean().expand(3), atol=1e-3)  # the videos differ


def test_panecho_needs_the_linear_head() -> None:
    from cardiac_pipeline.model.cardiac_clip import CardiacCLIP
    from cardiac_pipeline.nn.encoders import NotApplicable

    with pytest.raises(NotApplicable, match="head: linear"):
        CardiacCLIP(build(None), scales=(1,), head="prompt")
