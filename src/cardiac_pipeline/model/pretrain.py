"""Video-report contrastive pretraining of a CLIP backbone, and EchoCLIP-style zero-shot LVEF.

Pretraining rebuilds, at CPU size, what EchoCLIP did on a hospital's archive: each video is
paired with its report, a video embedding is the mean of the normalised image embeddings
of ``frames`` sampled frames, and both towers learn with the symmetric InfoNCE loss of
CLIP (learnable temperature ``logit_scale``). Zero-shot LVEF then needs no labels: the
video embedding is compared with the prompts "THE LEFT VENTRICULAR EJECTION FRACTION IS
ESTIMATED TO BE X%" for every X, and ``prompts.zero_shot_ef`` turns the ranking into an EF.

Frames come from the clip store as uint8 and are normalised on the device by EchoZoom's
``PixelNormalize``, as in adaptation (grey C = 1 is broadcast to the three channels the
image tower expects). The learning-rate schedule (``lr_factor``) and the device rule
(``resolve_device``) are the training loop's.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from cardiac_pipeline.echo.clips import ClipSpec, clip_at, eval_clip_starts, sample_clip
from cardiac_pipeline.echo.clipstore import ClipStore
from cardiac_pipeline.io import atomic_write
from cardiac_pipeline.model.backbone import Backbone
from cardiac_pipeline.model.echozoom import PixelNormalize
from cardiac_pipeline.model.prompts import ZERO_SHOT_EF_VALUES, zero_shot_ef, zero_shot_ef_prompts
from cardiac_pipeline.model.train import lr_factor, resolve_device
from cardiac_pipeline.nn.encoders import NotApplicable, VideoEncoder

HISTORY_COLUMNS = ["epoch", "loss", "logit_scale", "lr", "seconds"]
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps the temperature at 1/100


def _fps(store: ClipStore, file_name: str) -> float | None:
    fps = store.entry(file_name).get("fps")
    return float(fps) if fps is not None else None


def encode_videos(
    model: nn.Module,
    clips: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
) -> torch.Tensor:
    """``(B, T, C, H, W)`` uint8 clips -> ``(B, T, D)`` normalised per-frame embeddings."""
    batch, frames = clips.shape[:2]
    pixels = torch.from_numpy(np.ascontiguousarray(clips)).to(device)
    # the same normalisation as CardiacCLIP's forward (uint8 -> /255 -> mean/std, grey -> 3)
    images = PixelNormalize(mean, std).to(device)(pixels.reshape(-1, *pixels.shape[-3:]))
    embeddings = F.normalize(model.encode_image(images), dim=-1)
    return embeddings.view(batch, frames, -1)


def video_embedding(frame_embeddings: torch.Tensor) -> torch.Tensor:
    """Mean of normalised frame embeddings ``(B, T, D)``, renormalised: ``(B, D)``."""
    return F.normalize(frame_embeddings.mean(dim=1), dim=-1)


def contrastive_batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """``order`` cut into batches; a last batch of one pair carries no contrast and is dropped."""
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [b for b in batches if len(b) >= 2]


def clip_loss(video: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of CLIP over a batch of matching (video, text) pairs."""
    logits = logit_scale.exp() * video @ text.t()
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def _check_table(store: ClipStore, table: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    missing = set(columns) - set(table.columns)
    if missing:
        raise ValueError(f"table lacks columns {sorted(missing)} (has {list(table.columns)})")
    absent = [name for name in table["FileName"].astype(str) if name not in store]
    if absent:
        raise ValueError(
            f"{len(absent)} videos are not in clip store {store.root} (first: {absent[:3]})"
        )
    return table.reset_index(drop=True)


def pretrain_clip(
    backbone: Backbone,
    store: ClipStore,
    table: pd.DataFrame,
    *,
    epochs: int = 10,
    batch_size: int = 32,
    frames: int = 4,
    period: int = 4,
    target_fps: float | None = None,
    lr: float = 5e-4,
    weight_decay: float = 0.1,
    seed: int = 0,
    warmup_epochs: float = 0.0,
    lr_schedule: Literal["constant", "cosine"] = "constant",
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[nn.Module, pd.DataFrame]:
    """Contrastively pretrain ``backbone.model`` on video-report pairs; ``(model, history)``.

    ``table`` has ``FileName`` (in ``store``) and ``Report``. Each epoch shuffles the pairs,
    takes one random clip of ``frames`` frames every ``period``-th (at ``target_fps`` when
    set, so 30 and 50 fps videos span the same time) per video and minimises
    the symmetric InfoNCE of the video-mean embeddings against the report embeddings, with
    AdamW on every parameter (``logit_scale`` included, clamped at ln 100). Batches of one
    pair carry no contrast and are skipped. ``warmup_epochs`` ramps the learning rate up
    linearly, then ``lr_schedule="cosine"`` decays it to zero by the last step: from random
    init the loss otherwise sits at chance (ln batch_size) for the first epochs. ``seed``
    fixes shuffling, clip starts and dropout. ``history`` has one row per epoch: mean loss,
    logit_scale, learning rate at the epoch's end, seconds.
    """
    from tqdm.auto import tqdm

    if epochs < 1 or batch_size < 2:
        raise ValueError(f"need epochs >= 1 and batch_size >= 2, got {epochs}, {batch_size}")
    if lr_schedule not in ("constant", "cosine") or warmup_epochs < 0:
        raise ValueError(
            f"lr_schedule must be 'constant' or 'cosine' and warmup_epochs >= 0, "
            f"got {lr_schedule!r}, {warmup_epochs}"
        )
    table = _check_table(store, table, ["FileName", "Report"])
    if len(table) < 2:
        raise ValueError(f"contrastive pretraining needs >= 2 video-report pairs, got {len(table)}")
    dev = resolve_device(device)
    model = backbone.model.to(dev)
    spec = ClipSpec(frames=frames, period=period, target_fps=target_fps)
    names = table["FileName"].astype(str).tolist()
    fps = {name: _fps(store, name) for name in names}
    tokens = backbone.tokenizer(table["Report"].astype(str).tolist())
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = len(contrastive_batches(np.arange(len(names)), batch_size))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lr_factor(epochs * steps_per_epoch, round(warmup_epochs * steps_per_epoch), lr_schedule),
    )
    rng = np.random.default_rng(seed)
    history: list[dict[str, float]] = []
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        model.train()
        for epoch in range(epochs):
            start = time.perf_counter()
            order = rng.permutation(len(names))
            batches = contrastive_batches(order, batch_size)
            losses: list[float] = []
            bar = tqdm(batches, desc=f"pretrain {epoch + 1}/{epochs}", disable=not progress)
            for batch in bar:
                clips = np.stack(
                    [sample_clip(store.load(names[i]), spec, rng, fps[names[i]]) for i in batch]
                )
                video = video_embedding(
                    encode_videos(model, clips, backbone.mean, backbone.std, dev)
                )
                text = F.normalize(
                    model.encode_text(tokens[torch.as_tensor(batch)].to(dev)), dim=-1
                )
                loss = clip_loss(video, text, model.logit_scale)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                with torch.no_grad():
                    model.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)
                losses.append(float(loss.detach()))
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            history.append(
                {
                    "epoch": epoch + 1,
                    "loss": float(np.mean(losses)),
                    "logit_scale": float(model.logit_scale.detach().exp()),
                    "lr": float(optimizer.param_groups[0]["lr"]),
                    "seconds": time.perf_counter() - start,
                }
            )
    model.eval()
    return model, pd.DataFrame(history, columns=HISTORY_COLUMNS)


@torch.no_grad()
def zero_shot_predict(
    encoder: VideoEncoder,
    store: ClipStore,
    table: pd.DataFrame,
    *,
    frames: int = 4,
    period: int = 4,
    target_fps: float | None = None,
    n_clips: int = 2,
    device: str | torch.device = "cpu",
    values: Sequence[float] = ZERO_SHOT_EF_VALUES,
    mode: Literal["video", "frame"] = "video",
    aggregate: Literal["expectation", "top_fraction"] = "expectation",
    top_fraction: float = 0.2,
    batch_size: int = 16,
) -> pd.DataFrame:
    """Zero-shot LVEF of any backbone for every ``FileName`` of ``table``: ``(FileName, EF_pred)``.

    Each video gives ``n_clips`` evenly spaced clips, embedded per frame (frame encoder) or
    per backbone clip (clip encoder). With a text tower (EchoCLIP-style): ``mode="video"``
    (what pretraining optimised) scores the mean of the normalised embeddings against every
    EF prompt; ``mode="frame"`` scores each embedding and averages. ``prompts.zero_shot_ef``
    turns similarities into an EF: by default the expectation over the candidate values at
    the backbone's own ``logit_scale``; ``aggregate="top_fraction"`` averages the
    best-ranked ``top_fraction`` of them instead. Without one, the backbone's own EF head
    (``ef_head``, PanEcho's) scores each embedding and the EFs are averaged.
    """
    if mode not in ("video", "frame"):
        raise ValueError(f"mode must be 'video' or 'frame', got {mode!r}")
    table = _check_table(store, table, ["FileName"])
    dev = resolve_device(device)
    encoder = encoder.to(dev).eval()
    if encoder.has_text:
        score = _prompt_scorer(encoder, values, mode, aggregate, top_fraction)
    else:
        score = _ef_head_scorer(encoder)
    spec = ClipSpec(frames=frames, period=period, target_fps=target_fps)
    normalize = PixelNormalize(encoder.input_spec.mean, encoder.input_spec.std).to(dev)
    names = table["FileName"].astype(str).tolist()
    predictions: list[float] = []
    for i in range(0, len(names), batch_size):
        clips = [_eval_clips(store, name, spec, n_clips) for name in names[i : i + batch_size]]
        pixels = torch.from_numpy(np.stack(clips)).to(dev)  # [B, n*T, C, H, W]
        images = normalize(pixels.flatten(0, 1))
        embeddings = encoder.encode_sequence(images.reshape(*pixels.shape[:2], *images.shape[1:]))
        predictions.extend(score(embeddings).tolist())
    return pd.DataFrame({"FileName": names, "EF_pred": predictions})


def _eval_clips(store: ClipStore, name: str, spec: ClipSpec, n_clips: int) -> np.ndarray:
    """The ``n_clips`` evenly spaced clips of a video, frames one after the other."""
    video, fps = store.load(name), _fps(store, name)
    starts = eval_clip_starts(video.shape[0], spec, n_clips, fps)
    return np.concatenate([clip_at(video, int(s), spec, fps) for s in starts])


def _prompt_scorer(
    encoder: VideoEncoder,
    values: Sequence[float],
    mode: str,
    aggregate: Literal["expectation", "top_fraction"],
    top_fraction: float,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Embeddings [B, n, D] -> EF [B] by the zero-shot EF prompts."""
    text = F.normalize(encoder.encode_text(zero_shot_ef_prompts(values)), dim=-1)
    logit_scale = float(encoder.logit_scale().exp())

    def score(embeddings: torch.Tensor) -> torch.Tensor:
        per_item = F.normalize(embeddings, dim=-1)
        video = video_embedding(per_item) if mode == "video" else per_item
        return zero_shot_ef(
            (video @ text.t()).float(),
            values,
            aggregate=aggregate,
            logit_scale=logit_scale,
            top_fraction=top_fraction,
        )

    return score


def _ef_head_scorer(encoder: VideoEncoder) -> Callable[[torch.Tensor], torch.Tensor]:
    """Embeddings [B, n, D] -> the mean of the backbone's EF head over the n: EF [B]."""
    head = encoder.ef_head()
    if head is None:
        raise NotApplicable(
            f"zero-shot: backbone {encoder.name!r} has neither a text tower nor an EF head; "
            "fix: leave the zero_shot method out for it"
        )
    return lambda embeddings: head(embeddings).reshape(embeddings.shape[:2]).float().mean(dim=1)


# checkpoint with its config: what lets a pipeline skip pretraining ---------------------


def config_hash(config: Mapping[str, Any]) -> str:
    """Stable short hash of a JSON-able config (what makes a cached checkpoint current)."""
    payload = json.dumps(dict(config), sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()[:16]


def save_pretrained_checkpoint(
    model: nn.Module, arch: str, path: str | os.PathLike, meta: Mapping[str, Any]
) -> Path:
    """Write ``{"arch", "state_dict", "meta"}`` atomically; ``create_backbone(arch, path)`` loads it.

    ``meta`` must hold only plain values (str, numbers, lists, dicts) so the file stays
    readable with ``torch.load(weights_only=True)``. The same weights and meta give the
    same bytes (saved through a file object, the archive inside is not named after a temp
    file), so the run keys that hash this file do not change when it is rewritten unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state_dict = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    checkpoint = {"arch": arch, "state_dict": state_dict, "meta": dict(meta)}
    atomic_write(path, lambda handle: torch.save(checkpoint, handle), fsync=False)
    return path


def _read_checkpoint(path: Path) -> Mapping[str, Any] | None:
    if not path.is_file():
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path}: unreadable pretrained checkpoint ({error})") from error
    return checkpoint if isinstance(checkpoint, Mapping) else None


def read_checkpoint_meta(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``meta`` of a checkpoint written by ``save_pretrained_checkpoint``; None if absent."""
    checkpoint = _read_checkpoint(Path(path)) or {}
    meta = checkpoint.get("meta")
    return dict(meta) if isinstance(meta, Mapping) else None


def read_checkpoint_arch(path: str | os.PathLike) -> str | None:
    """The architecture a ``save_pretrained_checkpoint`` file was trained as; None if absent."""
    arch = (_read_checkpoint(Path(path)) or {}).get("arch")
    return str(arch) if arch else None
