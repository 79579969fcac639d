"""CardiacCLIP: a CLIP backbone + EchoZoom + MFL + LVEF-range prompt head.

clips [B, T, C, H, W] (uint8 or float in [0, 1]; C = 1 grey or 3)
  -> pixel normalisation on the device -> frames encoded as one batch of B*T by EchoZoom
  -> MFL pools the T frame embeddings -> video embedding [B, D]
  -> ``prompt`` head: logits_k = exp(logit_scale) * cos(video, text_k) over the K range
     prompts, EF = sum_k softmax(logits)_k * bin_value_k;
     ``linear`` head (regression baseline): EF = Linear(D, 1)(video).

Both towers are fine-tuned; the prompt text embeddings go through the text tower at every
training forward and are cached in eval mode. logit_scale is the backbone's, frozen (a buffer).

Parameter groups (``param_groups``): image_tower (the trunk), text_tower, mfl (the frame
pooling), head (EchoZoom's new LayerNorm + projection, and the linear regressor): the new
layers are "head" so they can get their own learning rate.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from cardiac_pipeline.model.backbone import Backbone
from cardiac_pipeline.model.echozoom import EchoZoom, PixelNormalize, feature_trunk
from cardiac_pipeline.model.mfl import AttentionPool, MeanPool
from cardiac_pipeline.model.prompts import BIN_VALUES, LVEF_PROMPTS

PARAM_GROUP_NAMES: tuple[str, ...] = ("image_tower", "text_tower", "mfl", "head")


@dataclass
class CardiacCLIPOutput:
    """What one forward gives: EF [B], logits [B, K] (None for the linear head), frame
    attention [B, T], video embedding [B, D] (before normalisation)."""

    ef: torch.Tensor
    logits: torch.Tensor | None
    attention: torch.Tensor
    video_embedding: torch.Tensor


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Seed the global torch RNG inside the block only (no effect when seed is None)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


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


class CardiacCLIP(nn.Module):
    """Few-shot LVEF model; see the module docstring. Takes the backbone model over."""

    def __init__(
        self,
        backbone_model: nn.Module,
        tokenizer: Callable[..., torch.Tensor],
        mean: Sequence[float],
        std: Sequence[float],
        *,
        scales: Sequence[int] = (1, 2),
        tile: int = 112,
        pooling: Literal["attention", "mean"] = "attention",
        head: Literal["prompt", "linear"] = "prompt",
        bin_values: Sequence[float] = BIN_VALUES,
        prompts: Sequence[str] = LVEF_PROMPTS,
        attention_hidden: int = 64,
        identity_init: bool = True,
        interpolation: str = "bicubic",
        linear_init_ef: float | None = None,
        channels_last: bool = False,
        seed: int | None = None,
    ):
        """``seed`` fixes the random init of the new layers (MFL scoring MLP, projections)."""
        super().__init__()
        if pooling not in ("attention", "mean"):
            raise ValueError(f"pooling must be 'attention' or 'mean', got {pooling!r}")
        if head not in ("prompt", "linear"):
            raise ValueError(f"head must be 'prompt' or 'linear', got {head!r}")
        if len(prompts) != len(bin_values):
            raise ValueError(f"{len(prompts)} prompts but {len(bin_values)} bin values")
        self.head = head
        self.channels_last = channels_last
        self.normalize = PixelNormalize(mean, std)
        self.text_encoder = TextTower(backbone_model)
        self.register_buffer("logit_scale", backbone_model.logit_scale.detach().clone().reshape(()))
        self.register_buffer("bin_values", torch.tensor(list(bin_values), dtype=torch.float32))
        self.prompts = tuple(prompts)
        self.register_buffer("prompt_tokens", tokenizer(list(self.prompts)), persistent=False)
        with _seeded(seed):
            self.image_encoder = EchoZoom(
                feature_trunk(backbone_model.visual), scales, tile, interpolation=interpolation
            )
            dim = self.image_encoder.embed_dim
            if pooling == "attention":
                self.mfl: nn.Module = AttentionPool(
                    dim, attention_hidden, identity_init=identity_init
                )
            else:
                self.mfl = MeanPool(dim, identity_init=identity_init)
            self.regressor: nn.Linear | None = None
            if head == "linear":
                self.regressor = nn.Linear(dim, 1)
        if self.regressor is not None:
            with torch.no_grad():  # start at a plausible EF, not 0: the baseline learns at lr 5e-5
                self.regressor.weight.zero_()
                start = float(self.bin_values.mean()) if linear_init_ef is None else linear_init_ef
                self.regressor.bias.fill_(start)
        if channels_last:
            self.image_encoder.trunk.to(memory_format=torch.channels_last)
        self._text_cache: torch.Tensor | None = None
        self.register_load_state_dict_post_hook(_clear_text_cache_after_load)

    @classmethod
    def from_backbone(cls, backbone: Backbone, **kwargs: Any) -> CardiacCLIP:
        """Build from ``create_backbone(...)``'s result."""
        return cls(backbone.model, backbone.tokenizer, backbone.mean, backbone.std, **kwargs)

    def _clear_text_cache(self) -> None:
        self._text_cache = None

    def train(self, mode: bool = True) -> CardiacCLIP:
        self._clear_text_cache()
        return super().train(mode)

    def text_embeddings(self) -> torch.Tensor:
        """L2-normalised prompt embeddings [K, D]; recomputed in training, cached in eval."""
        if self.training:
            return F.normalize(self.text_encoder(self.prompt_tokens), dim=-1)
        cache = self._text_cache
        if cache is None or cache.device != self.prompt_tokens.device:
            with torch.no_grad():
                cache = F.normalize(self.text_encoder(self.prompt_tokens), dim=-1)
            self._text_cache = cache
        return cache

    def encode_frames(self, clips: torch.Tensor) -> torch.Tensor:
        """Frame embeddings [B, T, D] of clips [B, T, C, H, W] (all B*T frames in one batch)."""
        if clips.dim() != 5:
            raise ValueError(f"clips must be [B, T, C, H, W], got {tuple(clips.shape)}")
        b, t, c, h, w = clips.shape
        frames = self.normalize(clips.reshape(b * t, c, h, w))
        if self.channels_last:
            frames = frames.contiguous(memory_format=torch.channels_last)
        return self.image_encoder(frames).reshape(b, t, -1)

    def forward(self, clips: torch.Tensor, mask: torch.Tensor | None = None) -> CardiacCLIPOutput:
        """``mask`` [B, T] (True = real frame) keeps padded frames out of the pooling."""
        video, attention = self.mfl(self.encode_frames(clips), mask)
        if self.regressor is not None:
            return CardiacCLIPOutput(
                ef=self.regressor(video).squeeze(-1),
                logits=None,
                attention=attention,
                video_embedding=video,
            )
        text = self.text_embeddings()
        logits = self.logit_scale.exp() * F.normalize(video, dim=-1) @ text.to(video.dtype).t()
        ef = (logits.float().softmax(dim=-1) * self.bin_values).sum(dim=-1)
        return CardiacCLIPOutput(ef=ef, logits=logits, attention=attention, video_embedding=video)


def _clear_text_cache_after_load(module: CardiacCLIP, incompatible_keys: Any) -> None:
    """New weights make cached text embeddings stale (a function, so the model pickles)."""
    module._clear_text_cache()


def param_groups(
    model: CardiacCLIP, lrs: Mapping[str, float], weight_decay: float = 0.0
) -> list[dict[str, Any]]:
    """Optimizer parameter groups named image_tower, text_tower, mfl, head.

    ``lrs`` maps each group name to its learning rate (all four needed when the group has
    trainable parameters). Frozen parameters are left out; groups without any are omitted.
    Every trainable parameter lands in exactly one group (checked).
    """
    modules: dict[str, list[nn.Module]] = {
        "image_tower": [model.image_encoder.trunk],
        "text_tower": [model.text_encoder],
        "mfl": [model.mfl],
        "head": [model.image_encoder.norm, model.image_encoder.proj]
        + ([model.regressor] if model.regressor is not None else []),
    }
    groups: list[dict[str, Any]] = []
    seen: set[int] = set()
    for name in PARAM_GROUP_NAMES:
        params = []
        for module in modules[name]:
            for param in module.parameters():
                if param.requires_grad and id(param) not in seen:
                    seen.add(id(param))
                    params.append(param)
        if not params:
            continue
        if name not in lrs:
            raise ValueError(
                f"lrs has no learning rate for parameter group '{name}' (needs {PARAM_GROUP_NAMES})"
            )
        groups.append(
            {"name": name, "params": params, "lr": float(lrs[name]), "weight_decay": weight_decay}
        )
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if missing:
        raise RuntimeError(f"parameters in no group: {missing[:5]}")
    return groups
