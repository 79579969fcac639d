"""Generic CardiacCLIP training loop and multi-clip video prediction (torch only).

Nothing here knows about Kedro or MLflow: the caller passes the model, the datasets, the
loss and the parameter-group function, and gets per-epoch metrics through a callback.

The pieces plugged in follow these interfaces (see ``cardiac_clip.py``, ``losses.py``,
``data.py``):

* ``model(clips)`` with ``clips`` uint8 ``[B, T, C, H, W]`` returns an object with fields
  ``ef`` ``[B]``, ``logits`` ``[B, K]`` or ``None``, ``attention`` ``[B, T]`` and
  ``video_embedding`` ``[B, D]``.
* ``loss_fn(output, ef_target, *, w_ce, w_kl, w_l1) -> (loss, parts: dict[str, float])``.
* ``param_groups_fn(model, lrs) -> list[dict]`` (optimizer parameter groups).
* training items ``{"clip": (T,C,H,W) uint8, "ef", "file_name"}``; evaluation items
  ``{"clip": (N,T,C,H,W) uint8, "ef", "file_name", "frame_indices": (N,T)}``; an optional
  ``dataset.set_epoch(epoch)`` makes the random clip choice a function of the epoch.

``fit`` is a few small parts: the loader of this process's share of each epoch
(``distributed.EpochSampler``), one training step and one epoch, validation on rank 0,
``last.pt``/``selected.pt`` and resume, early stopping. The same loop runs alone or in every
process of a torchrun group (DDP; see ``distributed.py``). The learning-rate schedule
(``lr_factor``) and the device rule (``resolve_device``) are shared with pretraining.

Runs are resumable: ``last.pt`` (model, optimizer, scheduler, history, RNG states) is
replaced atomically at each epoch end and ``fit`` called again on the same folder carries
on from there, giving the same weights as an uninterrupted run. Checkpoints hold only
tensors and primitives so they load with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm.auto import tqdm

from cardiac_pipeline.echo.attention import attended_frames
from cardiac_pipeline.io import atomic_write
from cardiac_pipeline.model import distributed
from cardiac_pipeline.model.prediction_cache import PredictionCache

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "cardiac_pipeline.train/1"
SELECTED_CHECKPOINT_NAME = "selected.pt"
LAST_CHECKPOINT_NAME = "last.pt"

# Config fields that may change when a run is resumed: they do not alter the numbers
# (or, for `epochs`/`patience`, only say how long to go on).
_RESUMABLE_FIELDS = frozenset(
    {
        "epochs",
        "patience",
        "device",
        "num_workers",
        "eval_batch_size",
        "eval_clip_chunk",
        "checkpoint_every",
    }
)
# What a run stored before a field existed ran with (history, not defaults: conf/base
# sets every field), so that such a run resumes when conf keeps that behaviour.
_BEFORE_FIELDS: dict[str, Any] = {
    "select_start": False,
    "select_epoch": "best",
    "max_batches_per_epoch": None,
}
_OPTIMIZERS = ("radam", "adamw", "adam")
_AMP_MODES = ("auto", "bf16", "off")
_SELECT_EPOCH = ("best", "last")

LossFn = Callable[..., tuple[torch.Tensor, Mapping[str, float]]]
ParamGroupsFn = Callable[[nn.Module, Mapping[str, float]], list[dict[str, Any]]]
EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class TrainConfig:
    """Everything that decides a training run; stored in the checkpoints. No defaults:
    conf/base's ``training`` section has every value (``config.TrainingConfig.loop``).

    ``schedule_epochs`` (default: ``epochs``) is the length of the cosine schedule, so a
    run can be extended or cut without changing the learning rates of the epochs done.
    ``amp``: ``"auto"`` = bf16 autocast on CUDA, fp32 on CPU; ``"bf16"``; ``"off"``.
    ``channels_last`` / ``num_workers``: ``"auto"`` / ``None`` pick by device (on CPU:
    contiguous and 0 workers). ``eval_batch_size`` counts videos, each with all its clips;
    ``eval_clip_chunk`` caps the clips per forward pass at evaluation (memory).
    ``patience``: stop after that many epochs without a better validation MAE (off: None).
    ``weight_decay`` applies to every parameter group (it overrides the groups' own).
    ``max_batches_per_epoch`` caps an epoch at that many batches (a fresh random subset of
    the shuffled training set each epoch), so runs of every k get the same CPU budget.
    ``select_start``: also score the starting weights on validation (as epoch 0), so a run
    whose every epoch is worse than where it started keeps the start (a pretrained model
    that adaptation on a few videos only makes worse); training itself is unchanged.
    ``select_epoch``: ``"best"`` keeps the epoch with the lowest validation MAE; ``"last"``
    keeps the schedule's end (against the start under ``select_start``). Picking the
    minimum of many noisy epochs on a small validation set keeps the epoch that fits
    those videos best, not the best model (docs/results/epoch_selection.md).
    """

    epochs: int
    batch_size: int
    grad_accum_steps: int
    lrs: dict[str, float]
    weight_decay: float
    optimizer: str
    schedule_epochs: int | None
    warmup_steps: int
    min_lr_ratio: float
    w_ce: float
    w_kl: float
    w_l1: float
    device: str
    amp: str
    channels_last: bool | str
    seed: int
    num_workers: int | None
    drop_last: bool
    eval_batch_size: int
    eval_clip_chunk: int | None
    max_grad_norm: float | None
    patience: int | None
    checkpoint_every: int
    max_batches_per_epoch: int | None
    select_start: bool
    select_epoch: str

    def __post_init__(self) -> None:
        positive = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "grad_accum_steps": self.grad_accum_steps,
            "eval_batch_size": self.eval_batch_size,
            "checkpoint_every": self.checkpoint_every,
        }
        for name, value in positive.items():
            if int(value) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {value}")
        if self.max_batches_per_epoch is not None and self.max_batches_per_epoch < 1:
            raise ValueError(
                "TrainConfig.max_batches_per_epoch must be >= 1 or None, "
                f"got {self.max_batches_per_epoch}"
            )
        if self.schedule_epochs is not None and self.schedule_epochs < 1:
            raise ValueError(
                f"TrainConfig.schedule_epochs must be >= 1, got {self.schedule_epochs}"
            )
        if self.optimizer.lower() not in _OPTIMIZERS:
            raise ValueError(
                f"TrainConfig.optimizer must be one of {_OPTIMIZERS}, got {self.optimizer!r}"
            )
        if self.amp not in _AMP_MODES:
            raise ValueError(f"TrainConfig.amp must be one of {_AMP_MODES}, got {self.amp!r}")
        if not (self.channels_last in (True, False) or self.channels_last == "auto"):
            raise ValueError(
                f"TrainConfig.channels_last must be True, False or 'auto', got {self.channels_last!r}"
            )
        if self.warmup_steps < 0:
            raise ValueError(f"TrainConfig.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"TrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"TrainConfig.patience must be >= 1 or None, got {self.patience}")
        if self.select_epoch not in _SELECT_EPOCH:
            raise ValueError(
                f"TrainConfig.select_epoch must be one of {_SELECT_EPOCH}, "
                f"got {self.select_epoch!r}"
            )
        if self.patience is not None and self.select_epoch != "best":
            raise ValueError(
                "TrainConfig.patience stops when the best epoch is that many epochs back, "
                "so it needs select_epoch 'best'; set patience to null or select_epoch to best"
            )
        if self.eval_clip_chunk is not None and self.eval_clip_chunk < 1:
            raise ValueError(
                f"TrainConfig.eval_clip_chunk must be >= 1 or None, got {self.eval_clip_chunk}"
            )
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(
                f"TrainConfig.num_workers must be >= 0 or None, got {self.num_workers}"
            )
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(
                f"TrainConfig.max_grad_norm must be > 0 or None, got {self.max_grad_norm}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of primitives (safe for ``weights_only`` checkpoints and logging)."""
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    """What ``fit`` hands back; ``history`` has one row per finished epoch."""

    selected_epoch: int
    selected_val_mae: float
    history: pd.DataFrame
    selected_checkpoint: Path
    last_checkpoint: Path
    stopped_early: bool = False


# ----------------------------------------------------------------------------- basics


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) global generators."""
    random.seed(seed)
    # the legacy global NumPy state is what third-party code (augmentations) draws from
    np.random.seed(seed % (2**32))  # noqa: NPY002
    torch.manual_seed(seed)


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The one device rule of training, pretraining and prediction.

    ``"auto"`` -> CUDA when available, else CPU; an explicit CUDA request must be met. In a
    torchrun group an unnumbered CUDA device is this process's GPU (``LOCAL_RANK``).
    """
    if isinstance(name, torch.device):
        device = name
    elif name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(name)!r} requested but CUDA is not available")
    if device.type == "cuda" and device.index is None and distributed.is_active():
        device = torch.device("cuda", distributed.local_rank())
    return device


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``TrainConfig.amp`` on ``device`` (None: float32)."""
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if device.type == "cuda" else None


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


def _resolve_workers(num_workers: int | None, device: torch.device) -> int:
    if num_workers is not None:
        return int(num_workers)
    if device.type != "cuda":
        return 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        cpus = os.cpu_count() or 1
    return max(0, min(8, cpus - 1))


def _to_channels_last(model: nn.Module) -> None:
    """NHWC for the 4-D (conv) weights only; ``Module.to`` would fail on 5-D ones."""
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.dim() == 4:
            tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)


# ------------------------------------------------------------------------ checkpoints


def _atomic_save(obj: Mapping[str, Any], path: Path) -> None:
    """``torch.save`` through ``atomic_write``: a crash never leaves a half file."""
    atomic_write(Path(path), lambda handle: torch.save(obj, handle), fsync=False)


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    return ckpt


def _rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # noqa: NPY002
    return {
        "python": random.getstate(),
        "numpy": [str(name), [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    cuda_states = list(state.get("cuda", []))
    if cuda_states and torch.cuda.is_available():
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            logger.warning(
                f"checkpoint has CUDA RNG states for {len(cuda_states)} devices, "
                f"this machine has {torch.cuda.device_count()}; CUDA RNG not restored"
            )


def _history_to_dict(rows: Sequence[Mapping[str, float]]) -> dict[str, list[float]]:
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    return {k: [_plain(row.get(k, math.nan)) for row in rows] for k in keys}


def _history_from_dict(data: Mapping[str, Sequence[Any]]) -> list[dict[str, float]]:
    if not data:
        return []
    n = len(next(iter(data.values())))
    return [{k: v[i] for k, v in data.items()} for i in range(n)]


def _plain(value: Any) -> Any:
    """numpy scalars pickle as numpy objects, which ``weights_only`` refuses."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return value


def load_model_weights(model: nn.Module, path: str | Path, *, strict: bool = True) -> nn.Module:
    """Load weights saved by ``fit`` (``selected.pt``/``last.pt``) or a bare state dict."""
    path = Path(path)
    ckpt = _load_checkpoint(path)
    state = ckpt["model"] if "model" in ckpt and isinstance(ckpt["model"], dict) else ckpt
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit the model ({exc})") from exc
    return model


# ------------------------------------------------------------------------- schedules


def _build_optimizer(
    model: nn.Module, config: TrainConfig, param_groups_fn: ParamGroupsFn
) -> torch.optim.Optimizer:
    groups = []
    for group in param_groups_fn(model, dict(config.lrs)):
        params = [p for p in group["params"] if p.requires_grad]
        if params:  # RAdam refuses empty groups (e.g. a frozen tower)
            # the config is the one source of weight decay, whatever the group says
            groups.append({**group, "params": params, "weight_decay": config.weight_decay})
    if not groups:
        raise ValueError("param_groups_fn returned no trainable parameters")
    kind = config.optimizer.lower()
    optimizer = {"radam": torch.optim.RAdam, "adamw": torch.optim.AdamW}.get(kind, torch.optim.Adam)
    # foreach: one fused update per group (CUDA's default). On 2 CPU cores: R(2+1)D's update
    # 0.085 -> 0.066 s, CardiacCLIP's 0.038 -> 0.046 s; either is <= 2 % of a step
    return optimizer(
        groups, lr=max(config.lrs.values()), weight_decay=config.weight_decay, foreach=True
    )


def lr_factor(
    total_steps: int,
    warmup_steps: int,
    schedule: Literal["constant", "cosine"] = "cosine",
    min_lr_ratio: float = 0.0,
) -> Callable[[int], float]:
    """Learning-rate multiplier by optimiser step, for pretraining and adaptation alike.

    Linear warm-up over ``warmup_steps`` (from 1/warmup_steps to 1), then constant or a
    cosine from 1 down to ``min_lr_ratio`` at ``total_steps``, held there after.
    """
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up then cosine from each group's lr down to ``min_lr_ratio`` x lr."""
    total = max(1, steps_per_epoch * (config.schedule_epochs or config.epochs))
    factor = lr_factor(total, config.warmup_steps, "cosine", config.min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ------------------------------------------------------------------------- inference


def _list_collate(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return items


def _eval_loader(dataset: Dataset, batch_size: int, num_workers: int, pin: bool) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_list_collate,
        pin_memory=pin,
    )


def _ef_value(value: Any) -> float:
    if value is None:
        return math.nan
    return float(torch.as_tensor(value).float().reshape(-1)[0])


def _run_videos(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    clip_chunk: int | None,
    *,
    collect_attention: bool,
    progress: bool,
    desc: str,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, np.ndarray]]]:
    """Forward every clip of every video; one row per video with the clip average."""
    rows: list[dict[str, Any]] = []
    attention: dict[str, dict[str, np.ndarray]] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for items in tqdm(loader, desc=desc, disable=not progress, leave=False):
                clips, counts = [], []
                for item in items:
                    clip = torch.as_tensor(item["clip"])
                    if clip.ndim != 5:
                        raise ValueError(
                            f"video {item.get('file_name')!r}: evaluation needs clips of shape "
                            f"(N, T, C, H, W), got {tuple(clip.shape)}; is the dataset in eval mode?"
                        )
                    clips.append(clip)
                    counts.append(clip.shape[0])
                flat = torch.cat(clips)
                chunk = clip_chunk or flat.shape[0]
                ef_parts, logit_parts, attn_parts, embedding_parts = [], [], [], []
                for start in range(0, flat.shape[0], chunk):
                    x = flat[start : start + chunk].to(device, non_blocking=True)
                    with _autocast(device, amp_dtype):
                        out = model(x)
                    ef_parts.append(out.ef.float().reshape(-1).cpu())
                    if out.logits is not None:
                        logit_parts.append(out.logits.float().cpu())
                    if collect_attention and out.attention is not None:
                        attn_parts.append(out.attention.float().cpu())
                    if collect_attention:
                        embedding_parts.append(out.video_embedding.float().cpu())
                ef_all = torch.cat(ef_parts)
                probs_all = torch.softmax(torch.cat(logit_parts), dim=-1) if logit_parts else None
                attn_all = torch.cat(attn_parts) if attn_parts else None
                embeddings = torch.cat(embedding_parts) if embedding_parts else None
                offset = 0
                for item, n in zip(items, counts, strict=True):
                    ef_clips = ef_all[offset : offset + n].double()
                    name = str(item["file_name"])
                    row: dict[str, Any] = {
                        "FileName": name,
                        "EF_true": _ef_value(item.get("ef")),
                        "EF_pred": float(ef_clips.mean()),
                        "EF_clip_sd": float(ef_clips.std(unbiased=False)),
                        "n_clips": int(n),
                    }
                    if probs_all is not None:
                        probs = probs_all[offset : offset + n].double().mean(dim=0)
                        for k, p in enumerate(probs.tolist()):
                            row[f"p_bin_{k}"] = p
                    rows.append(row)
                    if collect_attention:
                        entry: dict[str, np.ndarray] = {}
                        if attn_all is not None:
                            entry["attention"] = attn_all[offset : offset + n].numpy().copy()
                        if embeddings is not None:  # the video's, pooled over its clips
                            entry["video_embedding"] = (
                                embeddings[offset : offset + n].mean(0).numpy()
                            )
                        # where the clips sit in the video: (N, T) frame numbers and/or
                        # (N,) clip start frames, whichever the dataset gives
                        for key in ("frame_indices", "start"):
                            if item.get(key) is not None:
                                entry[key] = (
                                    torch.as_tensor(item[key]).to(torch.int64).numpy().copy()
                                )
                        if "attention" in entry and "frame_indices" in entry:
                            entry["frame_indices"] = attended_frames(
                                entry["frame_indices"], entry["attention"].shape[-1]
                            )
                        attention[name] = entry
                    offset += n
    finally:
        model.train(was_training)
    return rows, attention


def predict_videos(
    model: nn.Module,
    dataset: Dataset,
    *,
    device: str | torch.device = "auto",
    batch_size: int = 1,
    progress: bool = True,
    amp: str = "auto",
    clip_chunk: int | None = None,
    num_workers: int = 0,
) -> tuple[pd.DataFrame, dict[str, dict[str, np.ndarray]]]:
    """Video-level LVEF: the mean over a video's clips (EchoNet-Dynamic convention).

    ``dataset`` must be in eval mode (items with ``clip`` ``(N, T, C, H, W)``).
    ``batch_size`` counts videos. Returns a DataFrame with ``FileName, EF_true`` (NaN if
    unlabelled), ``EF_pred, EF_clip_sd`` (population SD over clips), ``n_clips`` and, when
    the model has a linear head, ``p_bin_0..p_bin_{K-1}`` (mean softmax over clips); and
    ``{FileName: {"attention": (N, T) float32, "frame_indices": (N, T) int64, "start": (N,)
    int64, "video_embedding": (D,) float32}}`` for plots (the position keys present when the
    dataset's items carry them) and out-of-distribution scores (the embedding: the mean of
    the clips' ``video_embedding``).
    """
    dev = resolve_device(device)
    if amp not in _AMP_MODES:
        raise ValueError(f"amp must be one of {_AMP_MODES}, got {amp!r}")
    model.to(dev)
    loader = _eval_loader(dataset, batch_size, num_workers, pin=dev.type == "cuda")
    rows, attention = _run_videos(
        model,
        loader,
        dev,
        amp_dtype(amp, dev),
        clip_chunk,
        collect_attention=True,
        progress=progress,
        desc="predict",
    )
    return pd.DataFrame(rows), attention


def _video_mae(rows: Sequence[Mapping[str, Any]]) -> tuple[float, float]:
    true = np.array([r["EF_true"] for r in rows], dtype=float)
    pred = np.array([r["EF_pred"] for r in rows], dtype=float)
    ok = np.isfinite(true)
    if not ok.any():
        return math.nan, math.nan
    err = pred[ok] - true[ok]
    return float(np.mean(np.abs(err))), float(np.sqrt(np.mean(err**2)))


# ------------------------------------------------------------------------------- fit


def _default_loss_fn() -> LossFn:
    from cardiac_pipeline.model.losses import cardiac_clip_loss

    return cardiac_clip_loss


def _default_param_groups_fn() -> ParamGroupsFn:
    from cardiac_pipeline.model.cardiac_clip import param_groups

    return param_groups


def _validate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    config: TrainConfig,
    progress: bool,
    epoch: int,
    cache: PredictionCache | None = None,
) -> tuple[float, float]:
    """Video-level ``(MAE, RMSE)`` on the validation loader after ``epoch`` (0: the start).

    With ``cache`` the predictions come from (or go to) the prediction cache.
    """

    def run() -> pd.DataFrame:
        rows, _ = _run_videos(
            model,
            loader,
            device,
            amp_dtype,
            config.eval_clip_chunk,
            collect_attention=False,
            progress=progress,
            desc=f"val {epoch}",
        )
        return pd.DataFrame(rows)

    identity = getattr(loader.dataset, "eval_identity", None)
    if cache is None or identity is None:  # a dataset that cannot name its items: no cache
        return _video_mae(run().to_dict("records"))
    context = {
        "dataset": identity(),
        "device": device.type,
        "amp": str(amp_dtype),
        "batch_size": loader.batch_size,
        "clip_chunk": config.eval_clip_chunk,
    }
    return _video_mae(cache.get_or_compute(model, context, run).to_dict("records"))


def _save_selected(
    model: nn.Module, epoch: int, val_mae: float, config: TrainConfig, path: Path
) -> None:
    _atomic_save(
        {
            "format": CHECKPOINT_FORMAT,
            "epoch": epoch,
            "val_mae": _plain(val_mae),
            "model": model.state_dict(),
            "config": config.to_dict(),
        },
        path,
    )


def _check_resume_config(stored: Mapping[str, Any], config: TrainConfig, path: Path) -> None:
    current = config.to_dict()
    stored = {**_BEFORE_FIELDS, **stored}
    differ = sorted(
        k
        for k in set(stored) | set(current)
        if k not in _RESUMABLE_FIELDS and stored.get(k) != current.get(k)
    )
    if differ:
        detail = ", ".join(f"{k}: {stored.get(k)!r} -> {current.get(k)!r}" for k in differ)
        raise ValueError(
            f"{path}: cannot resume, the run was made with a different config ({detail}); "
            "use a new checkpoint folder"
        )
    if stored.get("epochs") != config.epochs and config.schedule_epochs is None:
        logger.warning(
            f"{path}: epochs changed {stored.get('epochs')} -> {config.epochs} with "
            "schedule_epochs unset, so the cosine schedule length changes mid-run"
        )


@dataclass
class _Loop:
    """What the parts of one ``fit`` call share: the run's pieces and where it stands."""

    model: nn.Module  # the caller's model: checkpoints and validation use it
    config: TrainConfig
    device: torch.device
    amp_dtype: torch.dtype | None
    loss_fn: LossFn
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    train_loader: DataLoader
    n_batches: int
    selected_path: Path
    last_path: Path
    progress: bool
    net: nn.Module | None = None  # what trains: ``model``, or its DDP wrapper in a group
    val_loader: DataLoader | None = None  # rank 0's; None elsewhere and without VAL
    rows: list[dict[str, float]] = field(default_factory=list)
    selected_epoch: int = 0
    selected_val_mae: float = math.nan
    stopped_early: bool = False
    start_epoch: int = 1

    def result(self) -> TrainResult:
        return TrainResult(
            selected_epoch=int(self.selected_epoch),
            selected_val_mae=float(self.selected_val_mae),
            history=pd.DataFrame(self.rows),
            selected_checkpoint=self.selected_path,
            last_checkpoint=self.last_path,
            stopped_early=bool(self.stopped_early),
        )


def _process_seed(seed: int) -> int:
    """Rank 0 (and a single process) draws from the run seed; other ranks from their own."""
    if distributed.rank() == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), distributed.rank()]).generate_state(1)[0])


def _place_model(model: nn.Module, config: TrainConfig, device: torch.device) -> None:
    """On the device; NHWC conv weights where channels-last is on ("auto": on CUDA)."""
    model.to(device)
    auto = config.channels_last == "auto"
    if (device.type == "cuda") if auto else bool(config.channels_last):
        _to_channels_last(model)


def _train_loader(dataset: Dataset, config: TrainConfig, device: torch.device) -> DataLoader:
    """This process's loader: its share of each global batch, in the epoch's seeded order."""
    sampler = distributed.EpochSampler(
        dataset,
        seed=config.seed,
        num_replicas=distributed.world_size(),
        rank=distributed.rank(),
    )
    return DataLoader(
        dataset,
        batch_size=distributed.per_process_batch(config.batch_size),
        sampler=sampler,
        num_workers=_resolve_workers(config.num_workers, device),
        collate_fn=default_collate,
        pin_memory=device.type == "cuda",
        drop_last=config.drop_last,
        generator=torch.Generator(),  # seeded per epoch: the workers' base seed
    )


def _batches_per_epoch(loader: DataLoader, config: TrainConfig) -> int:
    n_batches = len(loader)
    if config.max_batches_per_epoch is not None:
        n_batches = min(n_batches, int(config.max_batches_per_epoch))
    if n_batches == 0:
        raise ValueError(
            f"training set of {len(loader.dataset)} videos gives no batch of {config.batch_size}"  # type: ignore[arg-type]
        )
    return n_batches


def _rank_rng(ckpt: Mapping[str, Any], path: Path) -> Mapping[str, Any]:
    """This rank's stored RNG state (a run resumed on another number of processes: rank 0's)."""
    per_rank = ckpt.get("rng_ranks") or [ckpt["rng"]]
    if len(per_rank) == distributed.world_size():
        return per_rank[distributed.rank()]
    if distributed.is_main():
        logger.warning(
            f"{path}: saved by {len(per_rank)} processes, resumed by "
            f"{distributed.world_size()}; the random streams are not continued exactly"
        )
    return per_rank[0]


def _resume(loop: _Loop) -> bool:
    """Carry on from ``last.pt``; True when that run is already finished."""
    path = loop.last_path
    ckpt = _load_checkpoint(path)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a checkpoint written by fit (format {ckpt.get('format')!r})")
    config = loop.config
    _check_resume_config(ckpt["config"], config, path)
    loop.rows = _history_from_dict(ckpt["history"])
    old = "selected_epoch" not in ckpt  # written before the rename from best_epoch
    loop.selected_epoch = int(ckpt["best_epoch" if old else "selected_epoch"])
    loop.selected_val_mae = float(ckpt["best_val_mae" if old else "selected_val_mae"])
    loop.stopped_early = bool(ckpt["stopped_early"])
    done = int(ckpt["epoch"])
    if loop.stopped_early or done >= config.epochs:
        if done > config.epochs:
            logger.warning(f"{path}: run already has {done} epochs > requested {config.epochs}")
        logger.info("%s: run already finished (%d epochs), nothing to do", path.parent, done)
        return True
    loop.model.load_state_dict(ckpt["model"])
    loop.optimizer.load_state_dict(ckpt["optimizer"])
    loop.scheduler.load_state_dict(ckpt["scheduler"])
    _set_rng_state(_rank_rng(ckpt, path))
    loop.start_epoch = done + 1
    logger.info("%s: resuming at epoch %d of %d", path.parent, loop.start_epoch, config.epochs)
    return False


def _score(loop: _Loop, epoch: int, cache: PredictionCache | None = None) -> tuple[float, float]:
    """VAL ``(MAE, RMSE)`` computed on rank 0 and known to every rank (NaN without VAL)."""
    scores = (math.nan, math.nan)
    if loop.val_loader is not None:
        scores = _validate(
            loop.model,
            loop.val_loader,
            loop.device,
            loop.amp_dtype,
            loop.config,
            loop.progress,
            epoch,
            cache,
        )
    return distributed.broadcast_object(scores)


def _score_start(loop: _Loop, cache: PredictionCache | None) -> None:
    """``select_start``: the starting weights compete as epoch 0."""
    # the RNG is forked so that training is bit-identical with or without this
    with torch.random.fork_rng(devices=[loop.device] if loop.device.type == "cuda" else []):
        start_mae, _ = _score(loop, 0, cache)
    if math.isfinite(start_mae):
        loop.selected_epoch, loop.selected_val_mae = 0, start_mae
        if distributed.is_main():
            _save_selected(loop.model, 0, start_mae, loop.config, loop.selected_path)
            logger.info("epoch 0 (starting weights): val_mae %.3f", start_mae)


def _optimizer_step(loop: _Loop) -> None:
    if loop.config.max_grad_norm is not None:
        trainable = [p for g in loop.optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(trainable, loop.config.max_grad_norm)
    loop.optimizer.step()
    loop.scheduler.step()
    loop.optimizer.zero_grad(set_to_none=True)


def _train_step(
    loop: _Loop, batch: Mapping[str, Any], batch_idx: int, epoch: int
) -> tuple[float, Mapping[str, float]]:
    """Forward and backward of one micro-batch; the optimiser steps when its window ends.

    The loss is divided by its window's length, so an accumulated window gives the
    gradient of its mean loss. In a group the loss is that of the global batch (the
    outputs of every process joined) and the gradients are averaged over the processes
    once per window (the other micro-batches skip DDP's all-reduce).
    """
    config, device = loop.config, loop.device
    window_start = (batch_idx // config.grad_accum_steps) * config.grad_accum_steps
    window = min(config.grad_accum_steps, loop.n_batches - window_start)
    window_ends = batch_idx + 1 == window_start + window
    clips = batch["clip"].to(device, non_blocking=True)
    ef_target = batch["ef"].to(device, dtype=torch.float32, non_blocking=True)
    weights = {"w_ce": config.w_ce, "w_kl": config.w_kl, "w_l1": config.w_l1}
    with distributed.no_sync(loop.net, skip_sync=not window_ends):
        with _autocast(device, loop.amp_dtype):
            output = loop.net(clips)
            # in a group: the loss of the global batch, on every rank
            output, ef_target = (
                distributed.gather_batch(output),
                distributed.gather_batch(ef_target),
            )
            loss, parts = loop.loss_fn(output, ef_target, **weights)
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise FloatingPointError(
                f"epoch {epoch}, batch {batch_idx}: non-finite loss {loss_value} "
                f"(videos {list(batch.get('file_name', []))})"
            )
        if distributed.is_active():  # this rank's share of the gradient; DDP averages
            loss = loss * distributed.world_size()
        (loss / window).backward()
    if window_ends:
        _optimizer_step(loop)
    return loss_value, parts


@dataclass
class _EpochStats:
    """An epoch's training figures, over every rank's micro-batches."""

    loss: float
    parts: dict[str, float]
    lrs: list[float]  # each group's at the epoch's first step
    seconds: float
    clips_per_s: float
    wait_share: float


def _train_epoch(loop: _Loop, epoch: int, dataset: Dataset) -> _EpochStats:
    """One pass over the epoch's batches, in the order the (run seed, epoch) fixes."""
    epoch_start = time.perf_counter()
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    loader = loop.train_loader
    loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
    loader.generator.manual_seed(distributed.epoch_seed(loop.config.seed, epoch))
    loop.net.train()  # type: ignore[union-attr]
    loop.optimizer.zero_grad(set_to_none=True)
    lrs = [float(g["lr"]) for g in loop.optimizer.param_groups]

    loss_sum, part_sums, n_micro, n_clips = 0.0, {}, 0, 0
    tick = time.perf_counter()
    iterator = iter(loader)
    wait = time.perf_counter() - tick
    bar = tqdm(
        total=loop.n_batches,
        desc=f"epoch {epoch}/{loop.config.epochs}",
        disable=not (loop.progress and distributed.is_main()),
        leave=False,
    )
    for batch_idx in range(loop.n_batches):
        tick = time.perf_counter()
        batch = next(iterator)
        wait += time.perf_counter() - tick
        loss_value, parts = _train_step(loop, batch, batch_idx, epoch)
        n_micro += 1
        n_clips += len(batch["clip"])
        loss_sum += loss_value
        for key, value in parts.items():
            part_sums[key] = part_sums.get(key, 0.0) + float(value)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum / n_micro:.4g}")
    bar.close()
    del iterator
    if loop.device.type == "cuda":
        torch.cuda.synchronize(loop.device)
    seconds = time.perf_counter() - epoch_start
    ranks = distributed.gather_objects((loss_sum, part_sums, n_micro, n_clips, wait))
    # means over all micro-batches: the global batches' means when the shards are equal
    total = sum(r[2] for r in ranks)
    return _EpochStats(
        loss=sum(r[0] for r in ranks) / total,
        parts={k: sum(r[1][k] for r in ranks) / total for k in part_sums},
        lrs=lrs,
        seconds=seconds,
        clips_per_s=sum(r[3] for r in ranks) / seconds if seconds > 0 else math.nan,
        wait_share=sum(r[4] for r in ranks) / len(ranks) / seconds if seconds > 0 else math.nan,
    )


def _epoch_row(
    loop: _Loop,
    epoch: int,
    train: _EpochStats,
    val: tuple[float, float],
    val_seconds: float,
    seconds: float,
) -> dict[str, float]:
    """The history row of an epoch (primitives only: it goes into ``last.pt``)."""
    row: dict[str, float] = {"epoch": epoch, "train_loss": train.loss}
    row.update({f"train_{k}": v for k, v in train.parts.items()})
    # learning rates at the epoch's first step (the first group's, and each by name)
    row.update({"val_mae": val[0], "val_rmse": val[1], "lr": train.lrs[0]})
    for i, group in enumerate(loop.optimizer.param_groups):
        row[f"lr_{group.get('name', i)}"] = train.lrs[i]
    row.update(
        {
            "seconds": seconds,
            "train_seconds": train.seconds,
            "val_seconds": val_seconds,
            "clips_per_s": train.clips_per_s,
            "data_wait_share": train.wait_share,
        }
    )
    return {k: _plain(v) for k, v in row.items()}


def _save_last(loop: _Loop, epoch: int) -> None:
    """``last.pt``: everything a resume needs, every rank's RNG included (written by rank 0)."""
    rng = distributed.gather_objects(_rng_state())
    if not distributed.is_main():
        return
    state = {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "model": loop.model.state_dict(),
        "optimizer": loop.optimizer.state_dict(),
        "scheduler": loop.scheduler.state_dict(),
        "history": _history_to_dict(loop.rows),
        "selected_epoch": loop.selected_epoch,
        "selected_val_mae": _plain(loop.selected_val_mae),
        "stopped_early": loop.stopped_early,
        "config": loop.config.to_dict(),
        "rng": rng[0],
    }
    if len(rng) > 1:
        state["rng_ranks"] = rng
    _atomic_save(state, loop.last_path)


def _end_epoch(loop: _Loop, epoch: int, row: dict[str, float]) -> None:
    """Keep the best weights, decide on early stopping, write ``last.pt`` when due."""
    loop.rows.append(row)
    val_mae = row["val_mae"]
    candidate = loop.config.select_epoch == "best" or epoch == loop.config.epochs
    # Strictly better MAE wins; without labelled validation the latest epoch is "best".
    better = (
        math.isnan(val_mae) or math.isnan(loop.selected_val_mae) or val_mae < loop.selected_val_mae
    )
    if candidate and better:
        loop.selected_epoch, loop.selected_val_mae = epoch, val_mae
        if distributed.is_main():
            _save_selected(loop.model, epoch, val_mae, loop.config, loop.selected_path)
    patience = loop.config.patience
    if patience is not None and epoch - loop.selected_epoch >= patience:
        loop.stopped_early = True
    if (
        loop.stopped_early
        or epoch == loop.config.epochs
        or epoch % loop.config.checkpoint_every == 0
    ):
        _save_last(loop, epoch)


def _run_epoch(loop: _Loop, epoch: int, dataset: Dataset) -> dict[str, float]:
    epoch_start = time.perf_counter()
    train = _train_epoch(loop, epoch, dataset)
    val_start = time.perf_counter()
    val = _score(loop, epoch)
    val_seconds = time.perf_counter() - val_start
    row = _epoch_row(loop, epoch, train, val, val_seconds, time.perf_counter() - epoch_start)
    _end_epoch(loop, epoch, row)
    return row


def _finish(loop: _Loop) -> TrainResult:
    """The best weights into the caller's model (eval mode), once rank 0 has written them."""
    distributed.barrier()
    load_model_weights(loop.model, loop.selected_path)
    loop.model.eval()
    return loop.result()


def _selected_path(folder: Path) -> Path:
    """``selected.pt``, or ``best.pt`` of a run written before the rename."""
    old = folder / "best.pt"
    return (
        old
        if old.is_file() and not (folder / SELECTED_CHECKPOINT_NAME).exists()
        else (folder / SELECTED_CHECKPOINT_NAME)
    )


def fit(
    model: nn.Module,
    train_dataset: Dataset,
    val_dataset: Dataset | None,
    config: TrainConfig,
    checkpoint_dir: str | Path,
    *,
    loss_fn: LossFn | None = None,
    param_groups_fn: ParamGroupsFn | None = None,
    on_epoch_end: EpochCallback | None = None,
    progress: bool = True,
    prediction_cache: PredictionCache | None = None,
) -> TrainResult:
    """Train, validate each epoch on video-level MAE, keep ``selected.pt`` and ``last.pt``.

    Called again on the same ``checkpoint_dir`` it resumes after the last saved epoch
    (bit-identical to an uninterrupted run on the same hardware); a finished run returns
    its stored result at once. On return ``model`` holds the kept weights
    (``config.select_epoch``; the latest epoch's when there is no labelled validation set)
    and is in eval mode.
    ``on_epoch_end(epoch, metrics)`` is called after the epoch's checkpoint is written;
    epochs count from 1 and ``dataset.set_epoch`` receives that number.
    ``loss_fn`` / ``param_groups_fn`` default to the CardiacCLIP ones.
    ``prediction_cache`` (scoped to the architecture) serves the ``select_start`` score of
    starting weights already scored on the same VAL videos.

    In a torchrun group (``distributed.init_from_env``) every process calls ``fit`` alike:
    ``config.batch_size`` is the global batch, split over the processes; rank 0 alone
    validates, writes the checkpoints and calls ``on_epoch_end``.
    """
    ckpt_dir = Path(checkpoint_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    seed_everything(_process_seed(config.seed))
    _place_model(model, config, device)
    train_loader = _train_loader(train_dataset, config, device)
    n_batches = _batches_per_epoch(train_loader, config)
    optimizer = _build_optimizer(model, config, param_groups_fn or _default_param_groups_fn())
    loop = _Loop(
        model=model,
        config=config,
        device=device,
        amp_dtype=amp_dtype(config.amp, device),
        loss_fn=loss_fn or _default_loss_fn(),
        optimizer=optimizer,
        scheduler=_build_scheduler(
            optimizer, config, math.ceil(n_batches / config.grad_accum_steps)
        ),
        train_loader=train_loader,
        n_batches=n_batches,
        selected_path=_selected_path(ckpt_dir),
        last_path=ckpt_dir / LAST_CHECKPOINT_NAME,
        progress=progress,
    )
    if loop.last_path.exists() and _resume(loop):
        return _finish(loop)
    if val_dataset is not None and distributed.is_main():
        workers = _resolve_workers(config.num_workers, device)
        pin = device.type == "cuda"
        loop.val_loader = _eval_loader(val_dataset, config.eval_batch_size, workers, pin)
    loop.net = distributed.wrap(model, device)
    if config.select_start and val_dataset is not None and loop.start_epoch == 1:
        _score_start(loop, prediction_cache)
    for epoch in range(loop.start_epoch, config.epochs + 1):
        row = _run_epoch(loop, epoch, train_dataset)
        if distributed.is_main():
            _log_epoch(row, config.epochs)
            if on_epoch_end is not None:
                on_epoch_end(epoch, dict(row))
        if loop.stopped_early:
            logger.info("early stop at epoch %d (best %d)", epoch, loop.selected_epoch)
            break
    return _finish(loop)


def _log_epoch(row: Mapping[str, float], epochs: int) -> None:
    logger.info(
        "epoch %d/%d: train_loss %.4f val_mae %.3f (%.1f clips/s, data wait %.0f%%)",
        row["epoch"],
        epochs,
        row["train_loss"],
        row["val_mae"],
        row["clips_per_s"],
        100 * row["data_wait_share"],
    )
