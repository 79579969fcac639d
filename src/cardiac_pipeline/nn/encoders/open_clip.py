"""open_clip backbones behind the encoder seam: frame encoders, with their trunk adapters.

Registered: the project's small architectures (``echo-vit-tiny``, ``echo-convnext-tiny``,
``echo-convnext-atto``, ``echo-convnext-b-w``; ``model_configs/*.json``), ``echoclip`` (the
published ``mkaichristensen/echo-clip`` folder, given as ``backbone.pretrained``) and the
source prefixes ``local-dir:`` and ``hf-hub:`` (open_clip folders; the hub only from the
local cache). ``model.backbone.create_backbone`` does the building; this module wraps its
result as a ``FrameEncoder``.

Each image-tower type brings its own trunk adapter (``TRUNK_ADAPTERS``): the tower cut
before its pooling head, the head kept as a ``TowerHead`` for EchoZoom to start from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from open_clip.timm_model import TimmModel
from open_clip.transformer import VisionTransformer
from torch import nn

from cardiac_pipeline.errors import UserError, one_line
from cardiac_pipeline.model.backbone import (
    LOCAL_DIR_PREFIX,
    Backbone,
    BackboneWeightsNotFound,
    check_local_dir,
    create_backbone,
    list_backbones,
)
from cardiac_pipeline.nn.encoders.base import (
    FrameEncoder,
    InputSpec,
    TowerHead,
    register_encoder,
)

ECHOCLIP = "echoclip"
ECHOCLIP_FIX = (
    "set backbone.pretrained to the folder of `huggingface-cli download "
    "mkaichristensen/echo-clip --local-dir echo-clip` (open_clip_config.json and the weights)"
)


class TimmFeatureTrunk(nn.Module):
    """An open_clip timm tower (e.g. ConvNeXt) cut before pooling: image -> NCHW feature map.

    Takes the tower over: the timm classifier head is removed (its norm and the open_clip
    projection are kept in ``tower_head`` for EchoZoom to start from).
    """

    def __init__(self, visual: TimmModel):
        super().__init__()
        trunk = visual.trunk
        norm = getattr(getattr(trunk, "head", None), "norm", None)
        proj = getattr(visual.head, "proj", None)
        pooled_by_avg = "pool" not in dict(visual.head.named_children())
        linear = proj if isinstance(proj, nn.Linear) and pooled_by_avg else None
        self.tower_head = TowerHead(
            norm_weight=_clone(getattr(norm, "weight", None)),
            norm_bias=_clone(getattr(norm, "bias", None)),
            norm_eps=float(getattr(norm, "eps", 1e-6)),
            proj_weight=_clone(linear.weight) if linear is not None else None,
            proj_bias=_clone(linear.bias) if linear is not None else None,
        )
        if hasattr(trunk, "prune_intermediate_layers"):
            trunk.prune_intermediate_layers(indices=1, prune_norm=False, prune_head=True)
        else:
            trunk.reset_classifier(0, global_pool="")
        self.trunk = trunk
        self.num_features = int(trunk.num_features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk.forward_features(images)


class ViTFeatureTrunk(nn.Module):
    """An open_clip VisionTransformer cut before pooling: image -> patch tokens as a grid map.

    The class token still takes part in attention; only patch tokens form the map. The
    tower's final LayerNorm and projection move to ``tower_head``. With ``pool_type: avg``
    and ``final_ln_after_pool: true`` (our ``echo-vit-tiny``) EchoZoom at scale 1 equals the
    tower exactly; with class-token pooling it is a close start, not an exact one.
    """

    def __init__(self, visual: VisionTransformer):
        super().__init__()
        if not isinstance(visual.patch_dropout, nn.Identity):
            raise ValueError(
                "ViTFeatureTrunk needs patch_dropout = 0 (dropped patches break the grid)."
            )
        if visual.attn_pool is not None:
            raise ValueError("ViTFeatureTrunk does not support attentional pooling towers.")
        proj = visual.proj
        self.tower_head = TowerHead(
            norm_weight=_clone(getattr(visual.ln_post, "weight", None)),
            norm_bias=_clone(getattr(visual.ln_post, "bias", None)),
            norm_eps=float(getattr(visual.ln_post, "eps", 1e-5)),
            proj_weight=_clone(proj.t()) if proj is not None else None,
            proj_bias=None,
        )
        visual.prune_intermediate_layers(indices=1, prune_norm=True, prune_head=True)
        self.visual = visual
        self.num_features = int(visual.transformer.width)
        self.image_size = tuple(visual.image_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[-2:]) != self.image_size:
            raise ValueError(
                f"ViT tower expects {self.image_size} tiles, got {tuple(images.shape[-2:])}; "
                "set EchoZoom tile to the tower's image_size."
            )
        out = self.visual.forward_intermediates(
            images, indices=1, intermediates_only=True, output_fmt="NCHW"
        )
        return out["image_intermediates"][-1]


def _clone(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.detach().clone()


class TextTower(nn.Module):
    """The text half of an open_clip model, held without its image tower.

    For the standard ``CLIP`` class the text modules live on the model itself; they are taken
    over here under the same names (so checkpoints keep their keys) and run by this module's
    own forward: open_clip's ``CLIP.encode_text`` is a method of ``CLIP``, not of this tower.
    """

    POOL_TYPES = ("argmax", "eos", "first", "last")

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        self.custom_text = hasattr(clip_model, "text")
        if self.custom_text:  # CustomTextCLIP / CoCa: a separate text module with its forward
            self.text = clip_model.text
            return
        self.token_embedding = clip_model.token_embedding
        self.positional_embedding = clip_model.positional_embedding
        self.transformer = clip_model.transformer
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.text_pool_type = clip_model.text_pool_type
        self.text_eos_id = getattr(clip_model, "text_eos_id", None)
        if self.text_pool_type not in self.POOL_TYPES:
            raise ValueError(
                f"text pool type {self.text_pool_type!r} of this backbone is not supported; "
                f"use an architecture whose text_cfg.pool_type is one of {self.POOL_TYPES}"
            )
        if self.text_pool_type == "eos" and self.text_eos_id is None:
            raise ValueError("text pool type 'eos' needs the backbone's text eos_id; it has none")
        self.register_buffer("attn_mask", clip_model.attn_mask, persistent=False)

    def _pool(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """One vector per prompt: the end-of-text token's (argmax: EOT has the highest id)."""
        if self.text_pool_type == "first":
            return x[:, 0]
        if self.text_pool_type == "last":
            return x[:, -1]
        if self.text_pool_type == "argmax":
            index = tokens.argmax(dim=-1)
        else:  # "eos": the first position holding the tokenizer's end-of-sequence id
            index = (tokens == self.text_eos_id).int().argmax(dim=-1)
        return x[torch.arange(x.shape[0], device=x.device), index]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids [N, context] -> text embeddings [N, embed_dim] (not normalised)."""
        if self.custom_text:
            return self.text(tokens)
        cast_dtype = self.transformer.get_cast_dtype()
        x = self.token_embedding(tokens).to(cast_dtype)  # [N, context, width]
        x = x + self.positional_embedding.to(cast_dtype)
        x = self.transformer(x, attn_mask=self.attn_mask)  # causal mask: tokens see only the past
        x = self._pool(self.ln_final(x), tokens)
        if self.text_projection is None:
            return x
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection


TRUNK_ADAPTERS: dict[type[nn.Module], Callable[[Any], nn.Module]] = {
    TimmModel: TimmFeatureTrunk,
    VisionTransformer: ViTFeatureTrunk,
}


def feature_trunk(visual: nn.Module) -> nn.Module:
    """An open_clip image tower as a feature-map trunk, through its type's adapter."""
    adapter = next((a for t, a in TRUNK_ADAPTERS.items() if isinstance(visual, t)), None)
    if adapter is None:
        raise TypeError(
            f"EchoZoom has no trunk adapter for {type(visual).__name__}; "
            f"supported: {', '.join(t.__name__ for t in TRUNK_ADAPTERS)}"
        )
    return adapter(visual)


def _embed_dim(model: nn.Module) -> int:
    """The joint image-text embedding width of an open_clip model."""
    projection = getattr(model, "text_projection", None)
    if isinstance(projection, nn.Linear):
        return int(projection.out_features)
    if isinstance(projection, torch.Tensor):
        return int(projection.shape[-1])
    return int(model.text.output_dim)  # CustomTextCLIP


class OpenClipEncoder(FrameEncoder):
    """An open_clip CLIP as a frame encoder (image tower per frame, CLIP BPE text tower)."""

    def __init__(self, name: str, backbone: Backbone) -> None:
        super().__init__()
        self.name = str(name)
        self.model = backbone.model
        self._tokenizer = backbone.tokenizer
        size = getattr(self.model.visual, "image_size", 224)
        size = size[0] if isinstance(size, Sequence) else size
        self.embed_dim = _embed_dim(self.model)
        self.input_spec = InputSpec(
            size=int(size), mean=tuple(backbone.mean), std=tuple(backbone.std)
        )

    @property
    def has_text(self) -> bool:
        return True

    def encode_frames(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        device = self.model.logit_scale.device
        return self.model.encode_text(self.tokenize(texts).to(device))

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self._tokenizer(list(texts))

    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.detach().clone().reshape(())

    def text_tower(self) -> nn.Module:
        return TextTower(self.model)

    def feature_trunk(self) -> nn.Module:
        return feature_trunk(self.model.visual)


def open_clip_encoder(
    name: str,
    weights: str | None = None,
    device: str | torch.device = "cpu",
    *,
    load_weights: bool = True,
    **options: Any,
) -> OpenClipEncoder:
    """``create_backbone`` as an encoder; a missing or unfitting weights source is a
    ``UserError`` (one line: the file and the fix)."""
    try:
        backbone = create_backbone(name, weights, device, load_weights=load_weights, **options)
    except BackboneWeightsNotFound as error:
        raise UserError(one_line(error)) from error
    except (RuntimeError, ValueError) as error:
        if "state_dict" not in str(error) and "does not fit" not in str(error):
            raise
        where = weights or name
        first = str(error).splitlines()[0][:300]
        raise UserError(
            f"backbone.pretrained {where}: the weights do not fit backbone {name!r} ({first}); "
            "fix: give the weights saved for this architecture (or the matching backbone.name)"
        ) from error
    return OpenClipEncoder(name, backbone)


def _register_configs() -> None:
    """One registration per architecture shipped in ``model_configs``."""
    for arch in list_backbones():
        register_encoder(arch, architecture_from_weights=True)(_architecture_builder(arch))


def _architecture_builder(arch: str) -> Callable[..., OpenClipEncoder]:
    def build(weights: str | None = None, device: str | torch.device = "cpu", **options: Any):
        return open_clip_encoder(arch, weights, device, **options)

    build.__name__ = build.__qualname__ = f"build_{arch.replace('-', '_')}"
    return build


@register_encoder("local-dir:", architecture_from_weights=True)
@register_encoder("hf-hub:", architecture_from_weights=True)
def build_open_clip_source(
    weights: str | None = None, device: str | torch.device = "cpu", *, source: str, **options: Any
) -> OpenClipEncoder:
    """An open_clip folder (``local-dir:``) or cached hub model (``hf-hub:``) named as the
    backbone; ``weights`` a checkpoint of it (a fine-tuned copy) or None."""
    return open_clip_encoder(source, weights, device, **options)


@register_encoder(ECHOCLIP, architecture_from_weights=True)
def build_echoclip(
    weights: str | None = None, device: str | torch.device = "cpu", **options: Any
) -> OpenClipEncoder:
    """EchoCLIP from its published folder (``weights``: the folder, its own config)."""
    if not weights:
        raise UserError(
            f"backbone.pretrained: backbone 'echoclip' needs its folder; fix: {ECHOCLIP_FIX}"
        )
    folder = Path(str(weights).removeprefix(LOCAL_DIR_PREFIX)).expanduser()
    try:
        check_local_dir(folder)
    except BackboneWeightsNotFound as error:
        raise UserError(f"{one_line(error).split('. Fix:')[0]}; fix: {ECHOCLIP_FIX}") from error
    encoder = open_clip_encoder(LOCAL_DIR_PREFIX + str(folder), None, device, **options)
    encoder.name = ECHOCLIP
    return encoder


_register_configs()
