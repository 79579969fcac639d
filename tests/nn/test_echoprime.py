"""EchoPrime behind the encoder seam: published layouts load, embeddings match, errors are clear."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torchvision

from cardiac_pipeline.errors import UserError
from cardiac_pipeline.nn.encoders import create_encoder, list_encoders
from cardiac_pipeline.nn.encoders.echoprime import (
    EchoPrimeTextTower,
    build_video_tower,
    text_config,
)
from tests.nn.conftest import (
    TINY_ECHOPRIME,
    VOCAB,
    assert_one_line,
    write_echoclip_folder,
    write_model_data,
    write_panecho,
    write_tokenizer,
)

PROMPTS = ["the left ventricular ejection fraction is 55 %", "normal"]


def clip(batch: int = 2) -> torch.Tensor:
    return torch.randn(
        batch, 3, TINY_ECHOPRIME["clip_frames"], 32, 32, generator=torch.Generator().manual_seed(1)
    )


def build(weights: Path | None, tokenizer: Path | None = None) -> object:
    return create_encoder(
        "echoprime",
        weights=None if weights is None else str(weights),
        tokenizer=None if tokenizer is None else str(tokenizer),
        **TINY_ECHOPRIME,
    )


def test_registered_as_a_clip_encoder_with_the_authors_input_spec() -> None:
    assert "echoprime" in list_encoders()
    encoder = create_encoder("echoprime", **{**TINY_ECHOPRIME, "size": 32})
    spec = encoder.input_spec
    assert encoder.kind == "clip" and encoder.embed_dim == 16
    assert spec.clip_frames == 4 and spec.frame_stride == 2
    assert spec.mean[0] == pytest.approx(29.110628 / 255) and spec.std[2] == pytest.approx(
        47.20083 / 255
    )


def test_model_data_loads_and_gives_the_source_models_embeddings(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    source = write_model_data(tmp_path / "model_data", tokenizer_dir)
    loaded = build(tmp_path / "model_data", tokenizer_dir)
    video = clip()
    with torch.no_grad():
        assert loaded.encode_video(video).shape == (2, 16)
        torch.testing.assert_close(loaded.encode_video(video), source.encode_video(video))
        text = loaded.encode_text(PROMPTS)
        assert text.shape == (2, 16) and loaded.has_text
        torch.testing.assert_close(text, source.encode_text(PROMPTS))
    assert not loaded.training


def test_text_is_the_cls_state_through_the_projection(tokenizer_dir: Path) -> None:
    encoder = build(None, tokenizer_dir)
    tokens = encoder.tokenizer(
        PROMPTS[:1], padding="max_length", max_length=24, return_tensors="pt"
    )
    with torch.no_grad():
        hidden = encoder.text.backbone(**tokens, output_hidden_states=True).hidden_states[-1]
        expected = encoder.text.text_projection(hidden[:, 0])
        torch.testing.assert_close(encoder.encode_text(PROMPTS[:1]), expected)


def test_without_a_tokenizer_there_is_no_text_tower(
    tmp_path: Path, tokenizer_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_model_data(tmp_path / "model_data", tokenizer_dir)
    (tmp_path / "model_data" / "weights" / "echo_prime_text_encoder.pt").unlink()
    with caplog.at_level(logging.INFO, logger="cardiac_pipeline.nn.encoders.echoprime"):
        encoder = build(tmp_path / "model_data")
    assert "no text tower" in caplog.text
    assert not encoder.has_text
    with pytest.raises(TypeError, match="tokenizer"):
        encoder.encode_text(PROMPTS)


def test_a_clip_of_another_shape_is_refused() -> None:
    with pytest.raises(ValueError, match=r"clips \[B, 3, 4, 32, 32\]"):
        build(None).encode_video(torch.zeros(1, 3, 8, 32, 32))


def test_published_video_tower_is_torchvision_mvit_v2_s_with_a_512_head() -> None:
    with torch.device("meta"):
        ours = build_video_tower(96, (1, 2, 11, 2), 224, 16, 512).state_dict()
        reference = torchvision.models.video.mvit_v2_s()
        reference.head[-1] = torch.nn.Linear(reference.head[-1].in_features, 512)
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.items()} == expected


def test_published_text_tower_is_bert_base_with_a_768_to_512_projection() -> None:
    with torch.device("meta"):
        tower = EchoPrimeTextTower(text_config(28895, None), 512)
    state = tower.state_dict()
    assert state["backbone.bert.embeddings.word_embeddings.weight"].shape == (28895, 768)
    assert state["backbone.bert.embeddings.position_embeddings.weight"].shape == (512, 768)
    assert state["backbone.bert.embeddings.token_type_embeddings.weight"].shape == (2, 768)
    assert state["backbone.bert.encoder.layer.11.intermediate.dense.weight"].shape == (3072, 768)
    assert "backbone.bert.encoder.layer.12.output.dense.weight" not in state
    assert "backbone.cls.predictions.decoder.weight" in state
    assert state["text_projection.weight"].shape == (512, 768)
    assert tower.backbone.config.num_attention_heads == 12


def test_a_legacy_position_ids_buffer_in_the_text_weights_is_accepted(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    write_model_data(tmp_path / "model_data", tokenizer_dir)
    path = tmp_path / "model_data" / "weights" / "echo_prime_text_encoder.pt"
    state = torch.load(path, weights_only=True)
    state["backbone.bert.embeddings.position_ids"] = torch.arange(24)[None]
    torch.save(state, path)
    assert build(tmp_path / "model_data", tokenizer_dir).has_text


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError) as error:
        build(tmp_path / "nowhere")
    assert_one_line(str(error.value), str(tmp_path / "nowhere"), "not found", "model_data")


def test_folder_without_the_encoder_file(tmp_path: Path) -> None:
    (tmp_path / "model_data").mkdir()
    with pytest.raises(UserError) as error:
        build(tmp_path / "model_data")
    assert_one_line(str(error.value), "echo_prime_encoder.pt", "not found")


def test_missing_text_weights_with_a_tokenizer(tmp_path: Path, tokenizer_dir: Path) -> None:
    write_model_data(tmp_path / "model_data", tokenizer_dir)
    (tmp_path / "model_data" / "weights" / "echo_prime_text_encoder.pt").unlink()
    with pytest.raises(UserError) as error:
        build(tmp_path / "model_data", tokenizer_dir)
    assert_one_line(str(error.value), "echo_prime_text_encoder.pt", "not found")


def test_a_state_dict_with_other_keys(tmp_path: Path) -> None:
    (tmp_path / "model_data" / "weights").mkdir(parents=True)
    path = tmp_path / "model_data" / "weights" / "echo_prime_encoder.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(UserError) as error:
        build(tmp_path / "model_data")
    assert_one_line(str(error.value), str(path), "not in the published layout", "'fc.weight'")


def test_weights_of_another_width(tmp_path: Path, tokenizer_dir: Path) -> None:
    write_model_data(tmp_path / "model_data", tokenizer_dir)
    with pytest.raises(UserError) as error:
        create_encoder(
            "echoprime", weights=str(tmp_path / "model_data"), **{**TINY_ECHOPRIME, "embed_dim": 8}
        )
    assert_one_line(str(error.value), "echo_prime_encoder.pt", "another shape", "head.1.weight")


def test_an_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "model_data" / "weights").mkdir(parents=True)
    (tmp_path / "model_data" / "weights" / "echo_prime_encoder.pt").write_text("not a checkpoint")
    with pytest.raises(UserError) as error:
        build(tmp_path / "model_data")
    assert_one_line(str(error.value), "echo_prime_encoder.pt", "cannot read")


def test_text_weights_in_place_of_the_video_weights(tmp_path: Path, tokenizer_dir: Path) -> None:
    write_model_data(tmp_path / "model_data", tokenizer_dir)
    weights = tmp_path / "model_data" / "weights"
    (weights / "echo_prime_text_encoder.pt").replace(weights / "echo_prime_encoder.pt")
    with pytest.raises(UserError) as error:
        build(tmp_path / "model_data")
    assert_one_line(
        str(error.value),
        "is EchoPrime's echo_prime_text_encoder.pt, not EchoPrime's echo_prime_encoder.pt",
    )


def test_panecho_weights_given_to_echoprime(tmp_path: Path) -> None:
    write_panecho(tmp_path / "panecho.pt")
    with pytest.raises(UserError) as error:
        build(tmp_path / "panecho.pt")
    assert_one_line(
        str(error.value),
        str(tmp_path / "panecho.pt"),
        "PanEcho's panecho.pt",
        "backbone.name: panecho",
    )


def test_an_echoclip_folder_given_to_echoprime(tmp_path: Path) -> None:
    folder = write_echoclip_folder(tmp_path / "echo-clip")
    with pytest.raises(UserError) as error:
        build(folder)
    assert_one_line(str(error.value), str(folder), "open_clip", "backbone.name: echoclip")


def test_missing_tokenizer_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError) as error:
        build(None, tmp_path / "no-tokenizer")
    assert_one_line(
        str(error.value), str(tmp_path / "no-tokenizer"), "not found", "backbone.tokenizer"
    )


def test_a_tokenizer_folder_that_is_not_one(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError) as error:
        build(None, tmp_path / "empty")
    assert_one_line(str(error.value), str(tmp_path / "empty"), "not a tokenizer folder")


def test_a_tokenizer_file_instead_of_a_folder(tmp_path: Path) -> None:
    (tmp_path / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(UserError) as error:
        build(None, tmp_path / "vocab.txt")
    assert_one_line(
        str(error.value), str(tmp_path / "vocab.txt"), "not EchoPrime's tokenizer folder"
    )


def test_a_tokenizer_larger_than_the_text_encoders_vocabulary(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    write_model_data(tmp_path / "model_data", tokenizer_dir)
    bigger = write_tokenizer(tmp_path / "other", VOCAB + [f"word{i}" for i in range(10)])
    with pytest.raises(UserError) as error:
        build(tmp_path / "model_data", bigger)
    assert_one_line(str(error.value), str(bigger), "another model's tokenizer")


def test_a_tokenizer_folder_with_only_vocab_txt(tmp_path: Path) -> None:
    folder = write_tokenizer(tmp_path / "tokenizer")
    (folder / "tokenizer_config.json").unlink()
    encoder = build(None, folder)
    assert encoder.tokenizer(["The LEFT"])["input_ids"][0] == [
        VOCAB.index(w) for w in ("[CLS]", "the", "left", "[SEP]")
    ]
