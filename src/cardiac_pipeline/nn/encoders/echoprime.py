"""EchoPrime (echonet/EchoPrime) as a clip encoder: an MViT-v2-S video tower, a BiomedBERT text tower.

The user brings the release's ``model_data`` folder (``weights/echo_prime_encoder.pt``,
``weights/echo_prime_text_encoder.pt``) and the BiomedBERT tokenizer folder. The BERT shape
is kept in ``model_configs/encoders/biomedbert-base.json`` so that nothing is fetched from
the hub. Keys and shapes follow the authors' modules, so their files load with
``strict=True``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torchvision.models.video import MViT
from torchvision.models.video.mvit import MSBlockConfig

from cardiac_pipeline.errors import UserError
from cardiac_pipeline.nn.encoders.base import InputSpec, VideoEncoder, register_encoder
from cardiac_pipeline.nn.encoders.published import (
    check_clip,
    load_encoder_config,
    load_published,
    read_checkpoint,
    require_path,
)

if TYPE_CHECKING:  # transformers is imported where BERT is built (a second to import)
    import transformers

logger = logging.getLogger(__name__)

VIDEO_WEIGHTS = Path("weights") / "echo_prime_encoder.pt"
TEXT_WEIGHTS = Path("weights") / "echo_prime_text_encoder.pt"
VIDEO_WHAT = "EchoPrime's echo_prime_encoder.pt"
TEXT_WHAT = "EchoPrime's echo_prime_text_encoder.pt"
FOLDER_WHAT = "EchoPrime's model_data folder"
WEIGHTS_FIX = (
    "set backbone.pretrained to the model_data folder unpacked from EchoPrime's release "
    "model_data.zip (it holds weights/echo_prime_encoder.pt and weights/echo_prime_text_encoder.pt)."
)
TOKENIZER_FIX = (
    "set backbone.tokenizer to a copy of the tokenizer folder of "
    "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract (vocab.txt, tokenizer_config.json), "
    "downloaded on a machine with internet."
)
#: a buffer that transformers < 4.31 saved with BERT's weights and later versions rebuild
_LEGACY_TEXT_KEYS = ("backbone.bert.embeddings.position_ids",)
#: the authors' pixel statistics on 0-255 pixels
_MEAN_255 = (29.110628, 28.076836, 29.096405)
_STD_255 = (47.989223, 46.456997, 47.20083)


def echoprime_input_spec(size: int = 224, clip_frames: int = 16) -> InputSpec:
    """The authors' preprocessing: 16 frames at stride 2, 224 px, their statistics / 255."""
    return InputSpec(
        size=size,
        mean=tuple(m / 255 for m in _MEAN_255),
        std=tuple(s / 255 for s in _STD_255),
        clip_frames=clip_frames,
        frame_stride=2,
    )


def mvit_blocks(width: int, depths: Sequence[int]) -> list[MSBlockConfig]:
    """MViT-v2-S's blocks for a first-stage ``width`` and blocks per stage (published: 96, 1-2-11-2).

    Each stage doubles the width and the heads and halves the token grid in its first block;
    keys and values are pooled so their grid stays 1/8 of the first stage's.
    """
    blocks = []
    for stage, depth in enumerate(depths):
        stage_width, kv = width * 2**stage, max(8 // 2**stage, 1)
        for index in range(depth):
            first = index == 0 and stage > 0
            blocks.append(
                MSBlockConfig(
                    num_heads=2**stage,
                    input_channels=stage_width // 2 if first else stage_width,
                    output_channels=stage_width,
                    kernel_q=[3, 3, 3],
                    kernel_kv=[3, 3, 3],
                    stride_q=[1, 2, 2] if first else [1, 1, 1],
                    stride_kv=[1, kv, kv],
                )
            )
    return blocks


def build_video_tower(
    width: int, depths: Sequence[int], size: int, clip_frames: int, embed_dim: int
) -> MViT:
    """torchvision's MViT with ``mvit_v2_s``'s settings and a ``embed_dim`` linear last head layer."""
    return MViT(
        spatial_size=(size, size),
        temporal_size=clip_frames,
        block_setting=mvit_blocks(width, depths),
        residual_pool=True,
        residual_with_cls_embed=False,
        rel_pos_embed=True,
        proj_after_attn=True,
        stochastic_depth_prob=0.2,
        num_classes=embed_dim,
    )


class EchoPrimeTextTower(nn.Module):
    """BERT masked-LM backbone; the [CLS] token's last hidden state through ``text_projection``."""

    def __init__(self, config: transformers.BertConfig, embed_dim: int) -> None:
        import transformers

        super().__init__()
        self.backbone = transformers.BertForMaskedLM(config)
        self.text_projection = nn.Linear(config.hidden_size, embed_dim)

    def forward(self, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.backbone.bert(**tokens).last_hidden_state
        return self.text_projection(hidden[:, 0])


class EchoPrimeEncoder(VideoEncoder):
    """EchoPrime's video encoder (``video``) and, given a tokenizer, its text encoder (``text``)."""

    kind = "clip"

    def __init__(
        self,
        video: MViT,
        text: EchoPrimeTextTower | None,
        tokenizer: Any,
        input_spec: InputSpec,
        embed_dim: int,
    ) -> None:
        super().__init__()
        self.name = "echoprime"
        self.video = video
        self.text = text
        self.tokenizer = tokenizer
        self.input_spec = input_spec
        self.embed_dim = embed_dim

    @property
    def has_text(self) -> bool:
        return self.text is not None

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        check_clip(video, self.input_spec, self.name)
        return self.video(video)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        if self.text is None:
            raise TypeError(
                f"backbone 'echoprime' has no text tower without a tokenizer. Fix: {TOKENIZER_FIX}"
            )
        length = self.text.backbone.config.max_position_embeddings
        tokens = self.tokenizer(
            list(texts),
            padding="max_length",
            max_length=length,
            truncation=True,
            return_tensors="pt",
        )
        device = self.text.text_projection.weight.device
        return self.text({k: v.to(device) for k, v in tokens.items()})


def load_tokenizer(folder: str | Path) -> Any:
    """The BiomedBERT tokenizer from a local folder (never the hub), or a one-line UserError.

    BiomedBERT is a WordPiece BERT tokenizer, so ``vocab.txt`` alone is enough.
    """
    import transformers

    path = require_path(
        Path(folder).expanduser(),
        "EchoPrime's tokenizer folder",
        TOKENIZER_FIX,
        folder=True,
        backbone="echoprime",
    )
    if not any((path / name).is_file() for name in ("vocab.txt", "tokenizer.json")):
        raise UserError(
            f"EchoPrime's tokenizer folder {path} has no vocab.txt or tokenizer.json: "
            f"it is not a tokenizer folder. Fix: {TOKENIZER_FIX}"
        )
    try:
        return transformers.BertTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(
            f"EchoPrime's tokenizer folder {path} cannot be read ({first}). Fix: {TOKENIZER_FIX}"
        ) from error


def text_config(vocab_size: int, overrides: Mapping[str, Any] | None) -> transformers.BertConfig:
    """BiomedBERT's shape from the repository's JSON, with the weights' vocabulary size."""
    import transformers

    values = {**load_encoder_config("biomedbert-base.json"), **(overrides or {})}
    values["vocab_size"] = vocab_size
    return transformers.BertConfig(**values)


def _read_weights(
    weights: str | None, with_text: bool
) -> tuple[dict[str, torch.Tensor] | None, dict[str, torch.Tensor] | None]:
    """The video and (when ``with_text``) text state dicts of a model_data folder."""
    if weights is None:
        return None, None
    folder = require_path(
        Path(weights).expanduser(), FOLDER_WHAT, WEIGHTS_FIX, folder=True, backbone="echoprime"
    )
    video = dict(read_checkpoint(folder / VIDEO_WEIGHTS, VIDEO_WHAT, WEIGHTS_FIX))
    if not with_text:
        return video, None
    text = dict(read_checkpoint(folder / TEXT_WEIGHTS, TEXT_WHAT, WEIGHTS_FIX))
    for key in _LEGACY_TEXT_KEYS:
        text.pop(key, None)
    return video, text


def _vocab_size(text_state: Mapping[str, torch.Tensor] | None, tokenizer: Any) -> int:
    key = "backbone.bert.embeddings.word_embeddings.weight"
    if text_state is not None and key in text_state:
        return int(text_state[key].shape[0])
    if tokenizer is not None:
        return len(tokenizer)
    return int(load_encoder_config("biomedbert-base.json")["vocab_size"])


@register_encoder("echoprime")
def build_echoprime(
    weights: str | None = None,
    device: str | torch.device = "cpu",
    tokenizer: str | None = None,
    video_width: int = 96,
    video_depths: Sequence[int] = (1, 2, 11, 2),
    size: int = 224,
    clip_frames: int = 16,
    embed_dim: int = 512,
    text_overrides: Mapping[str, Any] | None = None,
) -> EchoPrimeEncoder:
    """EchoPrime from ``weights`` (its model_data folder; None: random init).

    Without ``tokenizer`` (a local BiomedBERT tokenizer folder) there is no text tower and
    the text weights are not read. The other options shrink the architecture for tests; the
    defaults are the published one.
    """
    video_state, text_state = _read_weights(weights, with_text=tokenizer is not None)
    video = build_video_tower(video_width, video_depths, size, clip_frames, embed_dim)
    if video_state is not None:
        path = Path(weights) / VIDEO_WEIGHTS
        load_published(video_state, video, path, VIDEO_WHAT, "echoprime", WEIGHTS_FIX)
    text, text_tokenizer = None, None
    if tokenizer is None:
        logger.info("echoprime: no tokenizer folder (backbone.tokenizer), so no text tower")
    else:
        text_tokenizer = load_tokenizer(tokenizer)
        config = text_config(_vocab_size(text_state, text_tokenizer), text_overrides)
        text = EchoPrimeTextTower(config, embed_dim)
        _check_vocabulary(text, text_tokenizer, tokenizer)
    if text is not None and text_state is not None:
        path = Path(weights) / TEXT_WEIGHTS
        load_published(text_state, text, path, TEXT_WHAT, "echoprime", WEIGHTS_FIX)
    spec = echoprime_input_spec(size, clip_frames)
    return EchoPrimeEncoder(video, text, text_tokenizer, spec, embed_dim).to(device).eval()


def _check_vocabulary(text: EchoPrimeTextTower, tokenizer: Any, folder: str) -> None:
    rows = text.backbone.config.vocab_size
    if len(tokenizer) > rows:
        raise UserError(
            f"EchoPrime's tokenizer folder {folder} has {len(tokenizer)} tokens but the text "
            f"encoder knows {rows}: it is another model's tokenizer. Fix: {TOKENIZER_FIX}"
        )
