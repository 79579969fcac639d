"""Low-rank adapters (LoRA, through ``peft``) on CardiacCLIP's image and text towers.

The parameter-efficient recipe for large backbones on a GPU: the towers stay frozen, small
rank-``r`` updates of their dense layers (linear and pointwise convolutions) train beside
the head and MFL. The adapters live inside the towers' modules, so ``param_groups`` puts
them in the ``image_tower`` / ``text_tower`` groups and a checkpoint's state dict holds them
(``add_adapters`` on the bare architecture, then ``load_state_dict``, rebuilds it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

ADAPTER_MARK = "lora_"  # peft's adapter parameters: lora_A, lora_B


def dense_layers(tower: nn.Module) -> list[str]:
    """Names of the tower's layers that get adapters: linear layers (not the projections
    ``nn.MultiheadAttention`` reads as bare weights) and pointwise convolutions."""
    inside_attention = {
        f"{name}.{child}" if name else child
        for name, module in tower.named_modules()
        if isinstance(module, nn.MultiheadAttention)
        for child, _ in module.named_children()
    }
    names = []
    for name, module in tower.named_modules():
        pointwise = (
            isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1
        )
        if (isinstance(module, nn.Linear) or pointwise) and name not in inside_attention:
            names.append(name)
    return names


def add_adapters(model: nn.Module, lora: Mapping[str, Any]) -> nn.Module:
    """Put adapters on ``model``'s towers (``lora``: rank, alpha, dropout, text_tower) and
    freeze the towers' own weights; the rest of the model (head, MFL) keeps training."""
    from peft import LoraConfig, inject_adapter_in_model

    towers = [model.image_encoder.trunk]
    if lora["text_tower"]:
        towers.append(model.text_encoder)
    for tower in towers:
        targets = dense_layers(tower)
        if not targets:
            raise ValueError(f"{type(tower).__name__}: no dense layer to put adapters on")
        config = LoraConfig(
            r=int(lora["rank"]),
            lora_alpha=float(lora["alpha"]),
            lora_dropout=float(lora["dropout"]),
            target_modules=targets,
        )
        inject_adapter_in_model(config, tower)
    for tower in (model.image_encoder.trunk, model.text_encoder):
        for name, parameter in tower.named_parameters():
            parameter.requires_grad_(ADAPTER_MARK in name)
    return model
