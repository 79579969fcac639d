"""CardiacCLIP end to end on tiny configs: shapes, the expectation head, caching, groups."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import open_clip
import pytest
import torch

from cardiac_pipeline.model.backbone import create_backbone
from cardiac_pipeline.model.cardiac_clip import CardiacCLIP, param_groups
from cardiac_pipeline.model.losses import cardiac_clip_loss
from cardiac_pipeline.model.prompts import (
    BIN_VALUES,
    EF_PROMPT_PREFIX,
    LVEF_PROMPTS,
    zero_shot_ef,
    zero_shot_ef_prompts,
)
from cardiac_pipeline.nn.encoders.open_clip import TextTower

LRS = {"image_tower": 1e-4, "text_tower": 2e-4, "mfl": 3e-4, "head": 4e-4}


@pytest.fixture(autouse=True)
def _quiet_open_clip() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    yield
    root.setLevel(level)


def make_model(arch: str = "echo-convnext-tiny", **kwargs: object) -> CardiacCLIP:
    return CardiacCLIP.from_backbone(create_backbone(arch, seed=0), seed=0, **kwargs)


def grey_clips(batch: int = 2, frames: int = 4, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(
        0, 256, (batch, frames, 1, 112, 112), dtype=torch.uint8, generator=generator
    )


@pytest.mark.parametrize("arch", ["echo-convnext-tiny", "echo-vit-tiny"])
def test_forward_shapes_and_expectation_over_bin_values(arch: str) -> None:
    model = make_model(arch).eval()
    with torch.no_grad():
        out = model(grey_clips())
    assert out.ef.shape == (2,) and out.logits.shape == (2, 5)
    assert out.attention.shape == (2, 4) and out.video_embedding.shape == (2, 128)
    torch.testing.assert_close(out.attention.sum(dim=1), torch.ones(2))
    for b in range(2):  # EF = sum_k softmax(logits)_k * v_k, by hand
        row = [float(v) for v in out.logits[b]]
        exps = [math.exp(v - max(row)) for v in row]
        expected = sum(e / sum(exps) * v for e, v in zip(exps, [15, 37, 50, 62, 85], strict=True))
        assert float(out.ef[b]) == pytest.approx(expected, rel=1e-5)


def test_logits_are_scaled_cosines_with_the_frozen_backbone_scale() -> None:
    backbone = create_backbone("echo-vit-tiny", seed=0)
    scale = float(backbone.model.logit_scale.detach().exp())
    model = CardiacCLIP.from_backbone(backbone).eval()
    assert "logit_scale" not in dict(model.named_parameters())
    assert not model.logit_scale.requires_grad
    with torch.no_grad():
        out = model(grey_clips())
        video = torch.nn.functional.normalize(out.video_embedding, dim=-1)
        cosines = video @ model.text_embeddings().t()
    torch.testing.assert_close(out.logits, scale * cosines)
    assert cosines.abs().max() <= 1.0 + 1e-5


def test_uint8_grey_equals_float_and_rgb_input() -> None:
    model = make_model().eval()
    clips = grey_clips()
    with torch.no_grad():
        ef_uint8 = model(clips).ef
        ef_float = model(clips.float() / 255.0).ef
        ef_rgb = model(clips.expand(-1, -1, 3, -1, -1).contiguous()).ef
    torch.testing.assert_close(ef_float, ef_uint8)
    torch.testing.assert_close(ef_rgb, ef_uint8)


def test_text_embeddings_cached_in_eval_recomputed_in_training() -> None:
    model = make_model("echo-vit-tiny")
    model.eval()
    with torch.no_grad():
        first = model(grey_clips()).ef
    cached = model._text_cache
    assert cached is not None and model.text_embeddings() is cached
    with torch.no_grad():  # changed text weights are seen only after the cache is cleared
        model.text_encoder.ln_final.bias.add_(0.5)
    assert model.text_embeddings() is cached
    model.load_state_dict(model.state_dict())
    assert model._text_cache is None
    with torch.no_grad():
        assert not torch.allclose(model(grey_clips()).ef, first)
    model.train()
    assert model._text_cache is None
    out = model(grey_clips())
    loss, _ = cardiac_clip_loss(out, torch.tensor([25.0, 60.0]))
    loss.backward()
    assert model.text_encoder.token_embedding.weight.grad is not None  # text tower is fine-tuned
    assert model._text_cache is None


def test_param_groups_cover_every_trainable_parameter_once_and_get_gradients() -> None:
    model = make_model("echo-vit-tiny").train()
    groups = param_groups(model, LRS)
    assert [g["name"] for g in groups] == ["image_tower", "text_tower", "mfl", "head"]
    assert [g["lr"] for g in groups] == [1e-4, 2e-4, 3e-4, 4e-4]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len([p for p in model.parameters() if p.requires_grad])
    out = model(grey_clips())
    cardiac_clip_loss(out, torch.tensor([25.0, 60.0]))[0].backward()
    for group in groups:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in group["params"]), group[
            "name"
        ]
    torch.optim.RAdam(groups)  # the groups are valid optimizer input
    with pytest.raises(ValueError, match="head"):
        param_groups(model, {k: v for k, v in LRS.items() if k != "head"})


def test_linear_head_regression_baseline() -> None:
    model = make_model(head="linear", pooling="mean").train()
    out = model(grey_clips())
    assert out.logits is None
    torch.testing.assert_close(out.ef, torch.full((2,), sum(BIN_VALUES) / 5))  # starts at the mean
    torch.testing.assert_close(out.attention, torch.full((2, 4), 0.25))
    loss, parts = cardiac_clip_loss(out, torch.tensor([40.0, 70.0]))
    assert set(parts) == {"l1", "total"}
    assert loss.item() == pytest.approx((9.8 + 20.2) / 2, rel=1e-5)
    names = [g["name"] for g in param_groups(model, LRS)]
    assert "head" in names


def test_scale_one_starts_from_the_backbone_image_embedding() -> None:
    backbone = create_backbone("echo-convnext-tiny", seed=0)
    frames = grey_clips(batch=1, frames=3)[0]
    with torch.no_grad():
        pixels = (
            frames.float() / 255.0 - torch.tensor(backbone.mean).view(1, 3, 1, 1)
        ) / torch.tensor(backbone.std).view(1, 3, 1, 1)
        expected = backbone.model.eval().encode_image(pixels)
        model = CardiacCLIP.from_backbone(backbone, scales=(1,)).eval()
        got = model.encode_frames(frames.unsqueeze(0))[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_channels_last_gives_the_same_prediction() -> None:
    clips = grey_clips()
    with torch.no_grad():
        plain = make_model().eval()(clips).ef
        fast = make_model(channels_last=True).eval()(clips).ef
    torch.testing.assert_close(fast, plain, atol=1e-4, rtol=1e-4)


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="pooling"):
        make_model("echo-vit-tiny", pooling="max")
    with pytest.raises(ValueError, match="prompts"):
        make_model("echo-vit-tiny", bin_values=(10.0, 90.0))
    with pytest.raises(ValueError, match=r"\[B, T, C, H, W\]"):
        make_model("echo-vit-tiny")(torch.zeros(2, 1, 112, 112, dtype=torch.uint8))


def test_prompts_fit_the_77_token_context() -> None:
    tokens = open_clip.get_tokenizer("echo-vit-tiny")(list(LVEF_PROMPTS))
    assert len(LVEF_PROMPTS) == len(BIN_VALUES) == 5
    assert all(p.startswith(EF_PROMPT_PREFIX + " ") for p in LVEF_PROMPTS)
    assert all(int((row != 0).sum()) < 77 for row in tokens)  # end-of-text token not cut off
    assert len(set(LVEF_PROMPTS)) == 5


def test_zero_shot_prompts_and_top_fraction_scoring() -> None:
    assert zero_shot_ef_prompts([35, 62.5]) == [
        "THE LEFT VENTRICULAR EJECTION FRACTION IS ESTIMATED TO BE 35% ",
        "THE LEFT VENTRICULAR EJECTION FRACTION IS ESTIMATED TO BE 62.5% ",
    ]
    values = [10, 20, 30, 40, 50]
    similarity = torch.tensor([[0.1, 0.9, 0.8, 0.2, 0.0]])
    # top 40% of 5 candidates = 2 best: 20 and 30
    top = {"aggregate": "top_fraction"}
    assert float(zero_shot_ef(similarity, values, top_fraction=0.4, **top)[0]) == 25.0
    per_frame = torch.tensor([[[0.0, 0.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0, 0.0]]])
    # best value per frame 50 and 10, averaged over frames -> 30
    assert float(zero_shot_ef(per_frame, values, top_fraction=0.2, **top)[0]) == 30.0
    with pytest.raises(ValueError, match="aggregate"):
        zero_shot_ef(similarity, values, aggregate="median")


def test_zero_shot_expectation_is_sharp_when_sure_and_central_when_unsure() -> None:
    values = [10, 20, 30, 40, 50]
    sure = torch.tensor([[0.0, 0.0, 0.0, 0.9, 0.0]])
    assert float(zero_shot_ef(sure, values, logit_scale=100.0)[0]) == pytest.approx(40.0, abs=1e-3)
    unsure = torch.zeros(1, 5)
    assert float(zero_shot_ef(unsure, values)[0]) == pytest.approx(30.0)
    # softmax(1 * [0, ln 3]) puts 1/4 on 10 and 3/4 on 20
    two = torch.tensor([[0.0, math.log(3.0)]])
    assert float(zero_shot_ef(two, [10, 20], logit_scale=1.0)[0]) == pytest.approx(17.5)
    frames = torch.stack([sure, unsure], dim=1)  # [1, 2, 5]: per-frame estimates averaged
    assert float(zero_shot_ef(frames, values)[0]) == pytest.approx(35.0, abs=1e-3)


@pytest.mark.parametrize(
    ("pool_type", "proj_type"), [("argmax", "linear"), ("argmax", "none"), ("eos", "linear")]
)
def test_text_tower_equals_open_clips_encode_text(pool_type: str, proj_type: str) -> None:
    """The tower's own forward computes what ``CLIP.encode_text`` computes on the full model."""
    torch.manual_seed(0)
    text_cfg = open_clip.model.CLIPTextCfg(
        context_length=8, vocab_size=40, width=16, heads=2, layers=2, eos_id=39,
        pool_type=pool_type, proj_type=proj_type,
    )  # fmt: skip
    vision_cfg = open_clip.model.CLIPVisionCfg(
        layers=1, width=16, head_width=8, patch_size=8, image_size=16
    )
    clip = open_clip.model.CLIP(embed_dim=12, vision_cfg=vision_cfg, text_cfg=text_cfg).eval()
    tokens = torch.randint(1, 39, (3, 8))
    tokens[0, 3:], tokens[1, 6:] = 0, 0  # padded prompts of different lengths
    tokens[0, 2], tokens[1, 5], tokens[2, 7] = 39, 39, 39  # end-of-text, the highest id
    with torch.no_grad():
        expected = clip.encode_text(tokens)
        got = TextTower(clip).eval()(tokens)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected)
