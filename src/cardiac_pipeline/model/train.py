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
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm.auto import tqdm

from cardiac_pipeline.echo.clipstore import atomic_write
from cardiac_pipeline.model.prediction_cache import PredictionCache

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "cardiac_pipeline.train/1"
BEST_CHECKPOINT_NAME = "best.pt"
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
_OPTIMIZERS = ("radam", "adamw", "adam")
_AMP_MODES = ("auto", "bf16", "off")

LossFn = Callable[..., tuple[torch.Tensor, Mapping[str, float]]]
ParamGroupsFn = Callable[[nn.Module, Mapping[str, float]], list[dict[str, Any]]]
EpochCallback = Callable[[int, dict[str, float]], None]


def _default_lrs() -> dict[str, float]:
    return {"image_tower": 5e-5, "text_tower": 5e-5, "mfl": 5e-5, "head": 5e-5}


@dataclass
class TrainConfig:
    """Everything that decides a training run; stored in the checkpoints.

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
    """

    epochs: int = 100
    batch_size: int = 2
    grad_accum_steps: int = 1
    lrs: dict[str, float] = field(default_factory=_default_lrs)
    weight_decay: float = 0.0
    optimizer: str = "radam"
    schedule_epochs: int | None = None
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    w_ce: float = 1.0
    w_kl: float = 1.0
    w_l1: float = 1.0
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool | str = "auto"
    seed: int = 0
    num_workers: int | None = None
    drop_last: bool = False
    eval_batch_size: int = 1
    eval_clip_chunk: int | None = None
    max_grad_norm: float | None = None
    patience: int | None = None
    checkpoint_every: int = 1
    max_batches_per_epoch: int | None = None
    select_start: bool = False

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

    best_epoch: int
    best_val_mae: float
    history: pd.DataFrame
    best_checkpoint: Path
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
    """``"auto"`` -> CUDA when available, else CPU; an explicit CUDA request must be met."""
    if isinstance(name, torch.device):
        device = name
    elif name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(name)!r} requested but CUDA is not available")
    return device


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
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


def _epoch_seed(seed: int, epoch: int) -> int:
    """Independent seed per (run seed, epoch), so epoch k's data order needs no history."""
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, np.uint64)[0] >> 1)


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
            warnings.warn(
                f"checkpoint has CUDA RNG states for {len(cuda_states)} devices, "
                f"this machine has {torch.cuda.device_count()}; CUDA RNG not restored",
                stacklevel=2,
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
    """Load weights saved by ``fit`` (``best.pt``/``last.pt``) or a bare state dict."""
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


def _build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then cosine from each group's lr down to ``min_lr_ratio`` x lr."""
    total = max(1, steps_per_epoch * (config.schedule_epochs or config.epochs))
    warmup = config.warmup_steps
    floor = config.min_lr_ratio

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

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
                ef_parts, logit_parts, attn_parts = [], [], []
                for start in range(0, flat.shape[0], chunk):
                    x = flat[start : start + chunk].to(device, non_blocking=True)
                    with _autocast(device, amp_dtype):
                        out = model(x)
                    ef_parts.append(out.ef.float().reshape(-1).cpu())
                    if out.logits is not None:
                        logit_parts.append(out.logits.float().cpu())
                    if collect_attention and out.attention is not None:
                        attn_parts.append(out.attention.float().cpu())
                ef_all = torch.cat(ef_parts)
                probs_all = torch.softmax(torch.cat(logit_parts), dim=-1) if logit_parts else None
                attn_all = torch.cat(attn_parts) if attn_parts else None
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
                        # where the clips sit in the video: (N, T) frame numbers and/or
                        # (N,) clip start frames, whichever the dataset gives
                        for key in ("frame_indices", "start"):
                            if item.get(key) is not None:
                                entry[key] = (
                                    torch.as_tensor(item[key]).to(torch.int64).numpy().copy()
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
    int64}}`` for plots (the position keys present when the dataset's items carry them).
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
        _amp_dtype(amp, dev),
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


def _save_best(
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
    # a field added after the run was stored counts as its default
    defaults = {
        f.name: f.default
        for f in dataclasses.fields(TrainConfig)
        if f.default is not dataclasses.MISSING
    }
    differ = sorted(
        k
        for k in set(stored) | set(current)
        if k not in _RESUMABLE_FIELDS and stored.get(k, defaults.get(k)) != current.get(k)
    )
    if differ:
        detail = ", ".join(f"{k}: {stored.get(k)!r} -> {current.get(k)!r}" for k in differ)
        raise ValueError(
            f"{path}: cannot resume, the run was made with a different config ({detail}); "
            "use a new checkpoint folder"
        )
    if stored.get("epochs") != config.epochs and config.schedule_epochs is None:
        warnings.warn(
            f"{path}: epochs changed {stored.get('epochs')} -> {config.epochs} with "
            "schedule_epochs unset, so the cosine schedule length changes mid-run",
            stacklevel=3,
        )


def _result_from_state(
    rows: list[dict[str, float]],
    best_epoch: int,
    best_val_mae: float,
    stopped_early: bool,
    best_path: Path,
    last_path: Path,
) -> TrainResult:
    return TrainResult(
        best_epoch=int(best_epoch),
        best_val_mae=float(best_val_mae),
        history=pd.DataFrame(rows),
        best_checkpoint=best_path,
        last_checkpoint=last_path,
        stopped_early=bool(stopped_early),
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
    """Train, validate each epoch on video-level MAE, keep ``best.pt`` and ``last.pt``.

    Called again on the same ``checkpoint_dir`` it resumes after the last saved epoch
    (bit-identical to an uninterrupted run on the same hardware); a finished run returns
    its stored result at once. On return ``model`` holds the best-validation weights
    (the latest epoch's when there is no labelled validation set) and is in eval mode.
    ``on_epoch_end(epoch, metrics)`` is called after the epoch's checkpoint is written;
    epochs count from 1 and ``dataset.set_epoch`` receives that number.
    ``loss_fn`` / ``param_groups_fn`` default to the CardiacCLIP ones.
    ``prediction_cache`` (scoped to the architecture) serves the ``select_start`` score of
    starting weights already scored on the same VAL videos.
    """
    loss_fn = loss_fn or _default_loss_fn()
    param_groups_fn = param_groups_fn or _default_param_groups_fn()
    ckpt_dir = Path(checkpoint_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    best_path = ckpt_dir / BEST_CHECKPOINT_NAME
    last_path = ckpt_dir / LAST_CHECKPOINT_NAME

    device = resolve_device(config.device)
    amp_dtype = _amp_dtype(config.amp, device)
    use_channels_last = (
        device.type == "cuda" if config.channels_last == "auto" else bool(config.channels_last)
    )
    num_workers = _resolve_workers(config.num_workers, device)
    pin = device.type == "cuda"
    seed_everything(config.seed)

    model.to(device)
    if use_channels_last:
        _to_channels_last(model)

    train_loader = DataLoader(
        train_dataset,
        batch_size=config.batch_size,
        shuffle=True,
        num_workers=num_workers,
        collate_fn=default_collate,
        pin_memory=pin,
        drop_last=config.drop_last,
        generator=torch.Generator(),
    )
    n_batches = len(train_loader)
    if config.max_batches_per_epoch is not None:
        n_batches = min(n_batches, int(config.max_batches_per_epoch))
    if n_batches == 0:
        raise ValueError(
            f"training set of {len(train_dataset)} videos gives no batch of {config.batch_size}"  # type: ignore[arg-type]
        )
    steps_per_epoch = math.ceil(n_batches / config.grad_accum_steps)
    optimizer = _build_optimizer(model, config, param_groups_fn)
    scheduler = _build_scheduler(optimizer, config, steps_per_epoch)
    trainable = [p for g in optimizer.param_groups for p in g["params"]]

    rows: list[dict[str, float]] = []
    best_epoch, best_val_mae, stopped_early, start_epoch = 0, math.nan, False, 1
    if last_path.exists():
        ckpt = _load_checkpoint(last_path)
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                f"{last_path}: not a checkpoint written by fit (format {ckpt.get('format')!r})"
            )
        _check_resume_config(ckpt["config"], config, last_path)
        rows = _history_from_dict(ckpt["history"])
        best_epoch, best_val_mae = int(ckpt["best_epoch"]), float(ckpt["best_val_mae"])
        stopped_early = bool(ckpt["stopped_early"])
        done = int(ckpt["epoch"])
        if stopped_early or done >= config.epochs:
            if done > config.epochs:
                warnings.warn(
                    f"{last_path}: run already has {done} epochs > requested {config.epochs}",
                    stacklevel=2,
                )
            del ckpt
            load_model_weights(model, best_path)
            model.eval()
            logger.info("%s: run already finished (%d epochs), nothing to do", ckpt_dir, done)
            return _result_from_state(
                rows, best_epoch, best_val_mae, stopped_early, best_path, last_path
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        _set_rng_state(ckpt["rng"])
        start_epoch = done + 1
        del ckpt
        logger.info("%s: resuming at epoch %d of %d", ckpt_dir, start_epoch, config.epochs)

    val_loader = (
        _eval_loader(val_dataset, config.eval_batch_size, num_workers, pin)
        if val_dataset is not None
        else None
    )
    loss_weights = {"w_ce": config.w_ce, "w_kl": config.w_kl, "w_l1": config.w_l1}

    if config.select_start and val_loader is not None and start_epoch == 1:
        # the RNG is forked so that training is bit-identical with or without this
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            start_mae, _ = _validate(
                model, val_loader, device, amp_dtype, config, progress, 0, prediction_cache
            )
        if math.isfinite(start_mae):
            best_epoch, best_val_mae = 0, start_mae
            _save_best(model, 0, start_mae, config, best_path)
            logger.info("epoch 0 (starting weights): val_mae %.3f", start_mae)

    for epoch in range(start_epoch, config.epochs + 1):
        epoch_start = time.perf_counter()
        if hasattr(train_dataset, "set_epoch"):
            train_dataset.set_epoch(epoch)
        train_loader.generator.manual_seed(_epoch_seed(config.seed, epoch))
        model.train()
        optimizer.zero_grad(set_to_none=True)
        epoch_lrs = [float(g["lr"]) for g in optimizer.param_groups]

        loss_sum, part_sums, n_micro, n_clips = 0.0, {}, 0, 0
        wait = 0.0
        tick = time.perf_counter()
        iterator = iter(train_loader)
        wait += time.perf_counter() - tick
        bar = tqdm(
            total=n_batches,
            desc=f"epoch {epoch}/{config.epochs}",
            disable=not progress,
            leave=False,
        )
        for batch_idx in range(n_batches):
            tick = time.perf_counter()
            batch = next(iterator)
            wait += time.perf_counter() - tick

            window_start = (batch_idx // config.grad_accum_steps) * config.grad_accum_steps
            window = min(config.grad_accum_steps, n_batches - window_start)
            clips = batch["clip"].to(device, non_blocking=True)
            ef_target = batch["ef"].to(device, dtype=torch.float32, non_blocking=True)
            with _autocast(device, amp_dtype):
                output = model(clips)
                loss, parts = loss_fn(output, ef_target, **loss_weights)
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise FloatingPointError(
                    f"epoch {epoch}, batch {batch_idx}: non-finite loss {loss_value} "
                    f"(videos {list(batch.get('file_name', []))})"
                )
            (loss / window).backward()
            if batch_idx + 1 == window_start + window:
                if config.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)

            n_micro += 1
            n_clips += int(clips.shape[0])
            loss_sum += loss_value
            for key, value in parts.items():
                part_sums[key] = part_sums.get(key, 0.0) + float(value)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / n_micro:.4g}")
        bar.close()
        del iterator
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds = time.perf_counter() - epoch_start

        val_start = time.perf_counter()
        val_mae, val_rmse = math.nan, math.nan
        if val_loader is not None:
            val_mae, val_rmse = _validate(
                model, val_loader, device, amp_dtype, config, progress, epoch
            )
        val_seconds = time.perf_counter() - val_start

        row: dict[str, float] = {"epoch": epoch, "train_loss": loss_sum / n_micro}
        row.update({f"train_{k}": v / n_micro for k, v in part_sums.items()})
        # learning rates at the epoch's first step (the first group's, and each by name)
        row.update({"val_mae": val_mae, "val_rmse": val_rmse, "lr": epoch_lrs[0]})
        for i, group in enumerate(optimizer.param_groups):
            row[f"lr_{group.get('name', i)}"] = epoch_lrs[i]
        row.update(
            {
                "seconds": time.perf_counter() - epoch_start,
                "train_seconds": train_seconds,
                "val_seconds": val_seconds,
                "clips_per_s": n_clips / train_seconds if train_seconds > 0 else math.nan,
                "data_wait_share": wait / train_seconds if train_seconds > 0 else math.nan,
            }
        )
        row = {k: _plain(v) for k, v in row.items()}
        rows.append(row)

        # Strictly better MAE wins; without labelled validation the latest epoch is "best".
        improved = math.isnan(val_mae) or math.isnan(best_val_mae) or val_mae < best_val_mae
        if improved:
            best_epoch, best_val_mae = epoch, val_mae
            _save_best(model, epoch, val_mae, config, best_path)
        if config.patience is not None and epoch - best_epoch >= config.patience:
            stopped_early = True
        final = stopped_early or epoch == config.epochs
        if final or epoch % config.checkpoint_every == 0:
            _atomic_save(
                {
                    "format": CHECKPOINT_FORMAT,
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "history": _history_to_dict(rows),
                    "best_epoch": best_epoch,
                    "best_val_mae": _plain(best_val_mae),
                    "stopped_early": stopped_early,
                    "config": config.to_dict(),
                    "rng": _rng_state(),
                },
                last_path,
            )
        logger.info(
            "epoch %d/%d: train_loss %.4f val_mae %.3f (%.1f clips/s, data wait %.0f%%)",
            epoch,
            config.epochs,
            row["train_loss"],
            val_mae,
            row["clips_per_s"],
            100 * row["data_wait_share"],
        )
        if on_epoch_end is not None:
            on_epoch_end(epoch, dict(row))
        if stopped_early:
            logger.info("early stop at epoch %d (best %d)", epoch, best_epoch)
            break

    load_model_weights(model, best_path)
    model.eval()
    return _result_from_state(rows, best_epoch, best_val_mae, stopped_early, best_path, last_path)
