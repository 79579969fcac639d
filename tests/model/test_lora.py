"""adaptation: lora on tiny shapes: only adapters, head and MFL train; checkpoints reload."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cardiac_pipeline.config import LoraConfig, record
from cardiac_pipeline.model import recipe
from cardiac_pipeline.model.adaptation import ADAPTATIONS, adaptation, predicts_from_features
from cardiac_pipeline.model.cardiac_clip import param_groups
from cardiac_pipeline.model.lora import ADAPTER_MARK
from tests.conftest import base_recipe

LORA = LoraConfig(rank=2, alpha=4.0, dropout=0.0, text_tower=True)
TRAINED = ("mfl.", "image_encoder.norm.", "image_encoder.proj.", "prompt_embeddings")


def _arch(adapters: LoraConfig | None = LORA) -> recipe.Arch:
    typed = base_recipe(
        backbone={"name": "echo-convnext-atto", "pretrained": None, "load_weights": False},
        cardiac_clip={"scales": [1]},
        training={"adaptation": "lora"},
    )
    return dataclasses.replace(recipe.arch_of(typed), adapters=adapters)


def _clips(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 255, (2, 2, 3, 112, 112), generator=generator, dtype=torch.uint8)


def test_the_table_knows_every_mode_and_lora_needs_no_feature_store() -> None:
    assert set(ADAPTATIONS) == {"cached", "full", "cached_then_full", "lora"}
    lora = adaptation("lora")
    assert lora.adapters and not lora.needs_frame_features and not lora.learn_prompts
    assert predicts_from_features("cached") and not predicts_from_features("lora")
    assert not predicts_from_features(None)  # a checkpoint from before the field
    with pytest.raises(ValueError, match="'zoom' is not a mode"):
        adaptation("zoom")


def test_a_lora_step_changes_only_adapters_head_and_mfl() -> None:
    model = recipe.build_cardiac_clip(_arch(), seed=0).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(ADAPTER_MARK in n and n.startswith("image_encoder.trunk") for n in trainable)
    assert any(ADAPTER_MARK in n and n.startswith("text_encoder") for n in trainable)
    lrs = dict.fromkeys(("image_tower", "text_tower", "mfl", "head"), 1e-2)
    optimizer = torch.optim.AdamW(param_groups(model, lrs))
    out = model(_clips())
    loss = (out.ef - 50.0).abs().mean() + out.logits.logsumexp(-1).mean()
    loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable
    assert all(ADAPTER_MARK in n or n.startswith(TRAINED) for n in changed)
    assert any(ADAPTER_MARK in n for n in changed) and any(n.startswith("mfl.") for n in changed)


def test_a_lora_checkpoint_reloads_and_predicts_the_same() -> None:
    model = recipe.build_cardiac_clip(_arch(), seed=0)
    with torch.no_grad():  # trained adapters: B is no longer zero
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    checkpoint = {
        "format": recipe.CHECKPOINT_FORMAT,
        "arch": record(_arch()),
        "clips": {"frames": 2, "period": 1},
        "state_dict": model.state_dict(),
        "adaptation": "lora",
    }
    again = recipe.model_from_checkpoint(checkpoint)
    plain = recipe.build_cardiac_clip(_arch(adapters=None), seed=0).eval()
    with torch.no_grad():
        expected = model.eval()(_clips(1)).ef
        torch.testing.assert_close(again(_clips(1)).ef, expected)
        assert not torch.allclose(plain(_clips(1)).ef, expected)  # the adapters do act
