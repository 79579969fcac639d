"""CardiacCLIP: a CLIP backbone + EchoZoom + MFL + LVEF-range prompt head.

clips [B, T, C, H, W] (uint8 or float in [0, 1]; C = 1 grey or 3)
  -> pixel normalisation on the device -> frames encoded as one batch of B*T by EchoZoom
     (``EchoZoom.pooled_features``: the frozen-trunk part that ``model/features.py`` caches)
  -> EchoZoom's norm + projection -> L2-normalised frame embeddings [B, T, D]
  -> MFL pools the T frame embeddings -> video embedding [B, D]
  -> ``prompt`` head: logits_j = exp(logit_scale) * cos(video, text_j) over the prompts,
     EF = sum_j softmax(logits)_j * value_j;
     ``linear`` head (regression baseline): EF = Linear(D, 1)(video).

The backbone is any registered ``VideoEncoder`` (``nn.encoders``). Above is a frame
encoder's path; on a clip encoder (``kind == "clip"``) the T frames are cut into clips of its
``input_spec.clip_frames``, each embedded by the backbone and passed through an
identity-initialised linear map (``nn.clip_embedding.ClipEmbedding``), and MFL pools the
clip embeddings; EchoZoom (scales besides [1]) does not apply and is refused
(``NotApplicable``), as is the prompt head on a backbone without a text tower.

``prompt_set`` picks the prompts: ``ranges`` (the paper's five LVEF-range prompts, values
15/37/50/62/85) or ``values`` (the zero-shot prompts "... ESTIMATED TO BE X%" for X = 10..90,
values X): with ``values`` the untrained model scores exactly like zero-shot EchoCLIP, so
adaptation starts from what the backbone knows instead of a new five-point scale. The
output ``logits`` are always the five range bins' (for ``values``: logsumexp over the values
in each bin), so the loss and the reported bin probabilities do not change.

Frame embeddings are L2-normalised before pooling, as pretraining and zero-shot do.
``learn_prompts``: the prompt embeddings become parameters, initialised from the text tower
(which is then frozen and not run again): what training on cached features learns. Without
it both towers are fine-tuned; the prompt text embeddings go through the text tower at every
training forward and are cached in eval mode. logit_scale is the backbone's, frozen (a buffer).

``set_prior_offset`` adds a per-prompt offset to the logits in training mode only (logit
adjustment for a training set whose EF distribution differs from the population's, see
``model/features.py::prior_offset``); evaluation never sees it.

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
from cardiac_pipeline.model.echozoom import EchoZoom, PixelNormalize
from cardiac_pipeline.model.mfl import AttentionPool, MeanPool, TemporalPool
from cardiac_pipeline.model.prompts import (
    BIN_VALUES,
    LVEF_PROMPTS,
    ZERO_SHOT_EF_VALUES,
    ef_to_bin,
    zero_shot_ef_prompts,
)
from cardiac_pipeline.nn.clip_embedding import ClipEmbedding
from cardiac_pipeline.nn.encoders.base import NotApplicable, VideoEncoder

PARAM_GROUP_NAMES: tuple[str, ...] = ("image_tower", "text_tower", "mfl", "head")
POOLINGS = ("attention", "mean", "temporal")
PROMPT_SETS = ("ranges", "values")


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


class CardiacCLIP(nn.Module):
    """Few-shot LVEF model; see the module docstring. Takes the backbone model over."""

    def __init__(
        self,
        encoder: VideoEncoder,
        *,
        scales: Sequence[int] = (1, 2),
        tile: int = 112,
        pooling: Literal["attention", "mean", "temporal"] = "attention",
        head: Literal["prompt", "linear"] = "prompt",
        prompt_set: Literal["ranges", "values"] = "ranges",
        learn_prompts: bool = False,
        bin_values: Sequence[float] | None = None,
        prompts: Sequence[str] | None = None,
        attention_hidden: int = 64,
        identity_init: bool = True,
        interpolation: str = "bicubic",
        linear_init_ef: float | None = None,
        channels_last: bool = False,
        seed: int | None = None,
    ):
        """``seed`` fixes the random init of the new layers (MFL scoring MLP, projections).

        ``prompts`` / ``bin_values`` override the ``prompt_set``'s texts and values.
        """
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"cardiac_clip.pooling must be one of {POOLINGS}, got {pooling!r}")
        if head not in ("prompt", "linear"):
            raise ValueError(f"head must be 'prompt' or 'linear', got {head!r}")
        if prompt_set not in PROMPT_SETS:
            raise ValueError(
                f"cardiac_clip.prompt_set must be one of {PROMPT_SETS}, got {prompt_set!r}"
            )
        if prompt_set == "values":
            prompts = zero_shot_ef_prompts(ZERO_SHOT_EF_VALUES) if prompts is None else prompts
            bin_values = ZERO_SHOT_EF_VALUES if bin_values is None else bin_values
        prompts = LVEF_PROMPTS if prompts is None else prompts
        bin_values = BIN_VALUES if bin_values is None else bin_values
        if len(prompts) != len(bin_values):
            raise ValueError(f"{len(prompts)} prompts but {len(bin_values)} bin values")
        if head == "prompt" and not encoder.has_text:
            raise NotApplicable(
                f"cardiac_clip.head: 'prompt' needs a text tower, and backbone {encoder.name!r} "
                "has none; fix: set cardiac_clip.head: linear"
            )
        self.head = head
        self.kind = encoder.kind
        self.channels_last = channels_last
        # a backbone's own EF head (PanEcho's) starts the linear head; it reads the
        # embeddings as they are, so they are not L2-normalised before MFL then
        ef_head = encoder.ef_head() if head == "linear" else None
        self.normalise_embeddings = ef_head is None
        self.input_spec = encoder.input_spec  # stored in checkpoints (what predict feeds)
        self.normalize = PixelNormalize(encoder.input_spec.mean, encoder.input_spec.std)
        self.text_encoder, tokens = _text_tower(encoder, prompts)
        self.register_buffer("logit_scale", encoder.logit_scale().detach().clone().reshape(()))
        self.register_buffer("bin_values", torch.tensor(list(bin_values), dtype=torch.float32))
        # which of the five range bins each prompt's value falls in (ranges: prompt j is bin j)
        value_bins = (
            ef_to_bin(self.bin_values) if prompt_set == "values" else torch.arange(len(prompts))
        )
        self.register_buffer("value_bins", value_bins.long(), persistent=False)
        self.register_buffer("prior_offset", torch.zeros(len(prompts)), persistent=False)
        self.prompt_set = prompt_set
        self.prompts = tuple(prompts)
        self.register_buffer("prompt_tokens", tokens, persistent=False)
        with _seeded(seed):
            self.image_encoder = IMAGE_ENCODERS[encoder.kind](
                encoder, tuple(scales), tile, interpolation
            )
            dim = self.image_encoder.embed_dim
            if pooling == "attention":
                self.mfl: nn.Module = AttentionPool(
                    dim, attention_hidden, identity_init=identity_init
                )
            elif pooling == "temporal":
                self.mfl = TemporalPool(dim, attention_hidden, identity_init=identity_init)
            else:
                self.mfl = MeanPool(dim, identity_init=identity_init)
            self.regressor: nn.Linear | None = None
            if head == "linear":
                self.regressor = nn.Linear(dim, 1)
        if self.regressor is not None and ef_head is not None:
            _start_from_ef_head(self.regressor, self.mfl, ef_head)
        elif self.regressor is not None:
            with torch.no_grad():  # start at a plausible EF, not 0: the baseline learns at lr 5e-5
                self.regressor.weight.zero_()
                start = float(self.bin_values.mean()) if linear_init_ef is None else linear_init_ef
                self.regressor.bias.fill_(start)
        if channels_last:
            self.image_encoder.trunk.to(memory_format=torch.channels_last)
        self._text_cache: torch.Tensor | None = None
        self.register_load_state_dict_post_hook(_clear_text_cache_after_load)
        self.register_parameter("prompt_embeddings", None)
        if learn_prompts and head == "prompt":
            with torch.no_grad():
                start = F.normalize(self.text_encoder(self.prompt_tokens), dim=-1)
            self.prompt_embeddings = nn.Parameter(start.clone())
            self.text_encoder.requires_grad_(False)

    @classmethod
    def from_backbone(cls, backbone: Backbone, **kwargs: Any) -> CardiacCLIP:
        """Build from ``create_backbone(...)``'s result (an open_clip model)."""
        from cardiac_pipeline.nn.encoders.open_clip import OpenClipEncoder

        return cls(OpenClipEncoder("open_clip", backbone), **kwargs)

    def _clear_text_cache(self) -> None:
        self._text_cache = None

    def train(self, mode: bool = True) -> CardiacCLIP:
        self._clear_text_cache()
        return super().train(mode)

    def set_prior_offset(self, offset: torch.Tensor | Sequence[float] | None) -> None:
        """Per-prompt logit offset used in training mode only (None: none)."""
        value = torch.zeros_like(self.prior_offset) if offset is None else torch.as_tensor(offset)
        if value.shape != self.prior_offset.shape:
            raise ValueError(
                f"prior offset has shape {tuple(value.shape)}, the model has "
                f"{tuple(self.prior_offset.shape)} prompts"
            )
        self.prior_offset = value.to(self.prior_offset)

    def text_embeddings(self) -> torch.Tensor:
        """L2-normalised prompt embeddings [K, D]; recomputed in training, cached in eval."""
        if self.prompt_embeddings is not None:
            return F.normalize(self.prompt_embeddings, dim=-1)
        if self.training:
            return F.normalize(self.text_encoder(self.prompt_tokens), dim=-1)
        cache = self._text_cache
        if cache is None or cache.device != self.prompt_tokens.device:
            with torch.no_grad():
                cache = F.normalize(self.text_encoder(self.prompt_tokens), dim=-1)
            self._text_cache = cache
        return cache

    def encode_frames(self, clips: torch.Tensor) -> torch.Tensor:
        """Frame embeddings [B, T, D] of clips [B, T, C, H, W] (before L2 normalisation);
        for a clip encoder one embedding per backbone clip: [B, T / clip_frames, D]."""
        return self.image_encoder.embed(self.pooled_features(clips))

    def pooled_features(self, clips: torch.Tensor) -> torch.Tensor:
        """The frozen-trunk part of clips [B, T, C, H, W]: pooled multi-scale features
        [B, T, S*C] (frame encoder) or clip embeddings [B, T / clip_frames, D] (clip encoder)."""
        if clips.dim() != 5:
            raise ValueError(f"clips must be [B, T, C, H, W], got {tuple(clips.shape)}")
        b, t, c, h, w = clips.shape
        frames = self.normalize(clips.reshape(b * t, c, h, w))
        if self.channels_last:
            frames = frames.contiguous(memory_format=torch.channels_last)
        return self.image_encoder.video_features(frames.reshape(b, t, *frames.shape[1:]))

    def forward(self, clips: torch.Tensor, mask: torch.Tensor | None = None) -> CardiacCLIPOutput:
        """``mask`` [B, T] (True = real frame) keeps padded frames out of the pooling."""
        return self.forward_features(self.pooled_features(clips), mask)

    def forward_features(
        self, features: torch.Tensor, mask: torch.Tensor | None = None
    ) -> CardiacCLIPOutput:
        """The trainable rest of ``forward`` from pooled features [B, T, S*C] (cached or not)."""
        frames = self.image_encoder.embed(features)
        if self.normalise_embeddings:
            frames = F.normalize(frames, dim=-1)
        video, attention = self.mfl(frames, mask)
        if self.regressor is not None:
            return CardiacCLIPOutput(
                ef=self.regressor(video).squeeze(-1),
                logits=None,
                attention=attention,
                video_embedding=video,
            )
        text = self.text_embeddings()
        logits = self.logit_scale.exp() * F.normalize(video, dim=-1) @ text.to(video.dtype).t()
        if self.training:
            logits = logits + self.prior_offset.to(logits.dtype)
        ef = (logits.float().softmax(dim=-1) * self.bin_values).sum(dim=-1)
        if self.prompt_set == "values":  # the five range bins' logits
            logits = _bin_logits(logits, self.value_bins, len(BIN_VALUES))
        return CardiacCLIPOutput(ef=ef, logits=logits, attention=attention, video_embedding=video)


def _start_from_ef_head(regressor: nn.Linear, mfl: nn.Module, ef_head: nn.Module) -> None:
    """The linear head as the backbone's EF head and MFL's attention uniform, so the
    untrained model predicts the mean of the backbone's own EF over a video's clips."""
    layer = [m for m in ef_head.modules() if isinstance(m, nn.Linear)][-1]
    if tuple(layer.weight.shape) != tuple(regressor.weight.shape):
        raise ValueError(f"EF head {tuple(layer.weight.shape)} does not fit the linear head")
    with torch.no_grad():
        regressor.weight.copy_(layer.weight)
        regressor.bias.copy_(layer.bias)
        for pool in mfl.modules():
            if isinstance(pool, AttentionPool):
                pool.score[-1].weight.zero_()


def _echozoom(
    encoder: VideoEncoder, scales: tuple[int, ...], tile: int, interpolation: str
) -> nn.Module:
    """A frame encoder's trunk under EchoZoom (multi-scale frames, the tower's head)."""
    return EchoZoom(encoder.feature_trunk(), scales, tile, interpolation=interpolation)


def _clip_embedding(
    encoder: VideoEncoder, scales: tuple[int, ...], tile: int, interpolation: str
) -> nn.Module:
    """A clip encoder's clip embeddings; EchoZoom (scales besides 1) does not apply."""
    if tuple(int(s) for s in scales) != (1,):
        raise NotApplicable(
            f"cardiac_clip.scales: {list(scales)} asks for EchoZoom, which needs a frame "
            f"encoder; backbone {encoder.name!r} embeds whole clips; fix: set "
            "cardiac_clip.scales: [1]"
        )
    return ClipEmbedding(encoder)


IMAGE_ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "frame": _echozoom,
    "clip": _clip_embedding,
}


class EncoderText(nn.Module):
    """The text tower of an encoder that embeds strings itself (``encode_text``).

    Its "tokens" are prompt indices. It holds no parameters: they stay the encoder's.
    """

    def __init__(self, encoder: VideoEncoder, prompts: Sequence[str]) -> None:
        super().__init__()
        object.__setattr__(self, "encoder", encoder)  # owned by the image side
        self.prompts = tuple(prompts)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.encoder.encode_text([self.prompts[int(i)] for i in tokens.tolist()])


def _text_tower(
    encoder: VideoEncoder, prompts: Sequence[str]
) -> tuple[nn.Module | None, torch.Tensor]:
    """The module that embeds the prompts and their tokens (None and no tokens: no text)."""
    if not encoder.has_text:
        return None, torch.zeros(0, dtype=torch.long)
    tower = encoder.text_tower()
    if tower is None:
        return EncoderText(encoder, prompts), torch.arange(len(prompts))
    return tower, encoder.tokenize(list(prompts))


def _bin_logits(logits: torch.Tensor, bins: torch.Tensor, n_bins: int) -> torch.Tensor:
    """logsumexp of the logits [B, V] over the values of each bin: [B, n_bins]."""
    out = logits.new_full((logits.shape[0], n_bins), float("-inf"))
    index = bins.unsqueeze(0).expand_as(logits)
    peak = logits.max(dim=1, keepdim=True).values.detach()
    summed = torch.zeros_like(out).scatter_add(1, index, (logits - peak).exp())
    return torch.where(summed > 0, summed.log() + peak, out)


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
        "text_tower": [model.text_encoder] if model.text_encoder is not None else [],
        "mfl": [model.mfl],
        "head": [model.image_encoder.norm, model.image_encoder.proj]
        + ([model.regressor] if model.regressor is not None else []),
    }
    extra = {"head": [model.prompt_embeddings] if model.prompt_embeddings is not None else []}
    groups: list[dict[str, Any]] = []
    seen: set[int] = set()
    for name in PARAM_GROUP_NAMES:
        params = []
        candidates = [p for module in modules[name] for p in module.parameters()]
        for param in candidates + extra.get(name, []):
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
