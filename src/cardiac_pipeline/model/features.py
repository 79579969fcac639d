"""Frame-feature cache and adaptation on it: CardiacCLIP's head trained on frozen-trunk features.

Full fine-tuning runs the image trunk on every frame of every tile of every step, which on
2 CPU cores allows a few hundred steps per model: a few percent of what the reference's
adaptation needs. With the trunk frozen, its output per frame is a fixed function of the
frame, so it is computed once and stored; EchoZoom's norm and projection, MFL and the
prompt head then train on the stored features for thousands of steps in seconds.

What is stored: for every frame the clip sampler can draw, EchoZoom's globally pooled
trunk features at every scale (``EchoZoom.pooled_features``: scale 1 as is; scale 2
upsampled, cut into tiles, encoded, stitched, pooled), float16, shape ``(G, S, C)`` per
video. "Frames the sampler can draw": clips take every ``p``-th frame (``p`` =
``echo.clips.effective_period`` at the video's fps), and cached clips start on that grid
(frames 0, p, 2p, ...), so only a ``1/p`` share of the frames is encoded; random clip offsets
(the augmentation) are the grid's ``G - T + 1`` starts, and evaluation clips start at the
grid frame at or before the usual evenly spaced starts. Pixel augmentation (pad and crop)
cannot be applied to cached features and is not.

A clip encoder (``kind == "clip"``) stores one embedding per backbone clip instead: the grid
frames cut into consecutive clips of its ``clip_frames`` (the last one padded as
``clips.pad_mode`` says), shape ``(G / clip_frames, 1, D)``, and the entry's ``step`` is the
clip's stride in video frames; training clips then hold ``clips.frames / clip_frames`` of
them, and MFL attends over those.

Layout under ``root`` (one folder per ``feature_store_key``: weights' content digest, trunk
architecture, scales, tile, interpolation, pixel normalisation, clip store, clip grid)::

    features/<FileName>.npy    (G, S, C) float16, memory-mapped on reading
    entries/<FileName>.json    frames, step, shape, the clip store entry's checksum
    pad.npy                    (S, C) features of an all-zero frame (pad_mode zero)
    key.json                   what the key was made of
    manifest.csv               one row per entry of the last build

The clip store's trust rule holds here too: ``.npy`` then its JSON, each through
``io.atomic_write``; an entry exists only when its JSON does, and a build skips
entries whose JSON matches the clip store's entry (so an interrupted build resumes).
A store that holds every video asked for is read without a lock; a build holds the
store's ``io.build_lock``, so a second run needing the same features waits, then reuses.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from cardiac_pipeline.echo.clips import ClipSpec, effective_period, eval_clip_starts
from cardiac_pipeline.echo.clipstore import ClipStore
from cardiac_pipeline.errors import UserError
from cardiac_pipeline.io import LOCK_FILE, atomic_write, build_lock
from cardiac_pipeline.model.cardiac_clip import CardiacCLIP
from cardiac_pipeline.model.prediction_cache import weights_digest

logger = logging.getLogger(__name__)

FEATURE_FORMAT = 1
"""Bump when what is stored changes: every key (so every store) changes with it."""

_FEATURES_DIR = "features"
_ENTRIES_DIR = "entries"


def _cpu_has_amx() -> bool:
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


def feature_precision(amp: str, device: torch.device) -> str:
    """``"bf16"`` or ``"fp32"``: the frozen trunk's precision for the frame-feature build.

    ``amp`` is the cached stage's ``training.amp``: ``off`` fp32, ``bf16`` bf16, ``auto`` bf16
    where bf16 inference is fast (CUDA; CPUs with AMX tiles, where the trunk encodes a frame
    ~1.9x faster on 2 cores, its pooled features within ~0.2 % of fp32's) and fp32 elsewhere.
    Training itself keeps its own rule (on CPU, bf16 steps were not faster).
    """
    from cardiac_pipeline.model.train import amp_dtype

    if amp_dtype(amp, device) is not None:  # training's rule: bf16 asked, or auto on CUDA
        return "bf16"
    return "bf16" if amp == "auto" and device.type == "cpu" and _cpu_has_amx() else "fp32"


def feature_store_key(
    model: CardiacCLIP, clip_store: ClipStore, spec: ClipSpec, arch: str, precision: str = "fp32"
) -> dict:
    """Everything the stored features depend on (its hash names the store's folder).

    ``arch`` names the backbone; its image side (EchoZoom, or a clip encoder's
    ``ClipEmbedding``) adds what its features depend on (``feature_key``). A clip
    encoder's store also depends on how a video's last, partial clip is padded.
    """
    encoder = model.image_encoder
    unit = int(encoder.frames_per_feature)
    key = {
        "format": FEATURE_FORMAT,
        "arch": str(arch),
        "precision": str(precision),
        **encoder.feature_key(),
        "weights": weights_digest(encoder.trunk),
        "mean": [round(float(v), 8) for v in model.normalize.mean.flatten()],
        "std": [round(float(v), 8) for v in model.normalize.std.flatten()],
        "clip_store": clip_store.root.name,
        "period": int(spec.period),
        "target_fps": spec.target_fps,
    }
    if unit > 1:
        key.update({"frames_per_feature": unit, "pad_mode": spec.pad_mode})
    return key


def frames_per_feature(key: Mapping[str, Any]) -> int:
    """Video frames behind one stored feature: 1 (a frame), or a clip encoder's clip length."""
    return int(key.get("frames_per_feature", 1))


def whole_clips(grid: np.ndarray, unit: int, pad_mode: str) -> np.ndarray:
    """``grid`` frames padded to whole clips of ``unit`` (zeros, or the last frame: ``edge``)."""
    missing = -len(grid) % unit
    if not missing:
        return grid
    fill = grid[-1:] if pad_mode == "edge" else np.zeros_like(grid[:1])
    return np.concatenate([grid, np.repeat(fill, missing, axis=0)])


def key_digest(key: Mapping[str, Any]) -> str:
    import hashlib

    return hashlib.sha1(json.dumps(dict(key), sort_keys=True).encode()).hexdigest()[:12]


class FeatureStore:
    """Read access to one frame-feature folder (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._entries: dict[str, dict[str, Any]] = {}
        self._pad: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.root)!r})"

    @property
    def key(self) -> dict[str, Any]:
        path = self.root / "key.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no frame-feature store here; build it first")
        return json.loads(path.read_text())

    def npy_path(self, name: str) -> Path:
        return self.root / _FEATURES_DIR / f"{name}.npy"

    def entry_path(self, name: str) -> Path:
        return self.root / _ENTRIES_DIR / f"{name}.json"

    def entry(self, name: str) -> dict[str, Any]:
        if name not in self._entries:
            path = self.entry_path(name)
            try:
                self._entries[name] = json.loads(path.read_text())
            except FileNotFoundError:
                raise KeyError(
                    f"{name}: not in frame-feature store {self.root}; rebuild it for this split"
                ) from None
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.entry_path(name).is_file()

    def load(self, name: str) -> np.ndarray:
        """``(G, S, C)`` float16 features of ``name``, memory-mapped read-only."""
        entry = self.entry(name)
        array = np.load(self.npy_path(name), mmap_mode="r", allow_pickle=False)
        if list(array.shape) != entry["shape"]:
            raise ValueError(
                f"{self.npy_path(name)}: shape {array.shape}, entry says {entry['shape']}; "
                "delete the file and rebuild the store"
            )
        return array

    def pad(self) -> np.ndarray:
        """``(S, C)`` features of an all-zero frame (what a zero-padded frame encodes to)."""
        if self._pad is None:
            self._pad = np.load(self.root / "pad.npy", allow_pickle=False)
        return self._pad


def _is_current(features: FeatureStore, name: str, checksum: str) -> bool:
    if name not in features:
        return False
    try:
        entry = features.entry(name)
        return entry.get("checksum") == checksum and features.npy_path(name).is_file()
    except (OSError, ValueError, KeyError):
        return False


@torch.inference_mode()
def _encode(
    model: CardiacCLIP, frames: np.ndarray, batch_frames: int, precision: str = "fp32"
) -> np.ndarray:
    """``(N, C, H, W)`` uint8 frames -> ``(N / u, S, C)`` float16 pooled features (u: the
    frames per feature, a clip encoder's clip length; N a multiple of it)."""
    out = []
    scales, channels = len(model.image_encoder.scales), model.image_encoder.num_features
    unit = int(model.image_encoder.frames_per_feature)
    batch_frames = max(unit, batch_frames // unit * unit)
    device = model.bin_values.device
    bf16 = precision == "bf16"
    for start in range(0, frames.shape[0], batch_frames):
        chunk = torch.from_numpy(np.ascontiguousarray(frames[start : start + batch_frames]))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            pooled = model.pooled_features(chunk.unsqueeze(0).to(device))[0]
        out.append(pooled.reshape(-1, scales, channels).to(torch.float16).cpu().numpy())
    return np.concatenate(out)


def build_feature_store(
    model: CardiacCLIP,
    clip_store: ClipStore,
    root: str | Path,
    names: Iterable[str],
    spec: ClipSpec,
    *,
    key: Mapping[str, Any],
    batch_frames: int = 16,
    progress: bool = True,
    device: str | torch.device = "auto",
) -> pd.DataFrame:
    """Encode the grid frames of every video in ``names`` not yet stored; the manifest.

    Videos already stored for the same clip store entry are skipped, so the store grows
    with the splits that need it and an interrupted build resumes. Logs how long it took.
    The trunk runs at ``key["precision"]`` (``feature_precision``; fp32 when absent), on
    torch's CPU threads (``pipelines.workers.share_cores`` divides them between workers).
    """
    from cardiac_pipeline.model.train import resolve_device

    dev = resolve_device(device)
    model.to(dev)
    return _build(model, clip_store, Path(root), names, spec, key, batch_frames, progress)


def _build(
    model: CardiacCLIP,
    clip_store: ClipStore,
    root: Path,
    names: Iterable[str],
    spec: ClipSpec,
    key: Mapping[str, Any],
    batch_frames: int,
    progress: bool,
) -> pd.DataFrame:
    """Read the store when it holds every video, else build it under its lock."""
    names = list(dict.fromkeys(str(n) for n in names))
    if not names:
        raise ValueError("build_feature_store: no videos to encode")
    features = FeatureStore(root)
    if (root / "pad.npy").is_file() and all(
        _is_current(features, n, clip_store.entry(n)["checksum"]) for n in names
    ):  # complete: no lock (another run may be building other videos into it)
        logger.info("frame features: all %d videos reused from %s", len(names), root.name)
        return _manifest(features, names, seconds=0.0, encoded=0)
    with build_lock(root / LOCK_FILE, f"frame-feature store {root.name}"):
        return _encode_missing(model, clip_store, root, names, spec, key, batch_frames, progress)


def _manifest(
    features: FeatureStore, names: list[str], seconds: float, encoded: int
) -> pd.DataFrame:
    manifest = pd.DataFrame(
        [{"FileName": n, **features.entry(n)} for n in names],
        columns=["FileName", "frames", "step", "shape", "checksum"],
    )
    manifest.attrs["seconds"] = seconds
    manifest.attrs["encoded"] = encoded
    return manifest


def _encode_missing(
    model: CardiacCLIP,
    clip_store: ClipStore,
    root: Path,
    names: list[str],
    spec: ClipSpec,
    key: Mapping[str, Any],
    batch_frames: int,
    progress: bool,
) -> pd.DataFrame:
    from tqdm.auto import tqdm

    (root / _FEATURES_DIR).mkdir(parents=True, exist_ok=True)
    (root / _ENTRIES_DIR).mkdir(parents=True, exist_ok=True)
    features = FeatureStore(root)
    model = model.eval()
    precision = str(key.get("precision", "fp32"))
    unit = frames_per_feature(key)
    key_bytes = json.dumps(dict(key), sort_keys=True, indent=1).encode()
    atomic_write(root / "key.json", lambda f: f.write(key_bytes), fsync=False)
    if not (root / "pad.npy").is_file():
        first = clip_store.entry(names[0])
        size = (int(first["channels"]), int(first["height"]), int(first["width"]))
        pad = _encode(model, np.zeros((unit, *size), dtype=np.uint8), unit, precision)[0]
        atomic_write(root / "pad.npy", lambda f: np.save(f, pad, allow_pickle=False), fsync=False)
    todo = [n for n in names if not _is_current(features, n, clip_store.entry(n)["checksum"])]
    started, n_frames = time.perf_counter(), 0
    for name in tqdm(todo, desc="frame features", unit="video", disable=not progress):
        source = clip_store.entry(name)
        video = clip_store.load(name, mmap=True)
        step = effective_period(spec, source.get("fps"))
        grid = np.asarray(video[::step])
        array = _encode(model, whole_clips(grid, unit, spec.pad_mode), batch_frames, precision)
        n_frames += len(grid)
        for stale in (features.entry_path(name), features.npy_path(name)):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        atomic_write(
            features.npy_path(name),
            lambda f, a=array: np.save(f, a, allow_pickle=False),
            fsync=False,
        )
        entry = {
            "format": FEATURE_FORMAT,
            "frames": int(video.shape[0]),
            "step": int(step) * unit,
            "shape": list(array.shape),
            "checksum": source["checksum"],
        }
        payload = json.dumps(entry, sort_keys=True).encode()
        atomic_write(features.entry_path(name), lambda f, p=payload: f.write(p), fsync=False)
    seconds = time.perf_counter() - started
    if todo:
        logger.info(
            "frame features: %d videos (%d grid frames, every %s-th) encoded in %.1f s "
            "(%.1f ms per frame at scales %s, %s); %d reused",
            len(todo),
            n_frames,
            "/".join(sorted({str(features.entry(n)["step"]) for n in todo})),
            seconds,
            1000 * seconds / max(1, n_frames),
            list(model.image_encoder.scales),
            precision,
            len(names) - len(todo),
        )
    else:
        logger.info("frame features: all %d videos reused from %s", len(names), root.name)
    manifest = _manifest(features, names, seconds, len(todo))
    atomic_write(root / "manifest.csv", lambda f: manifest.to_csv(f, index=False), fsync=False)
    return manifest


# --------------------------------------------------------------------- cached training


class FeatureClipDataset(Dataset):
    """Clips of cached features for the videos of ``table`` (``FileName``, ``EF``).

    Items look like clips to ``model.train.fit``: ``clip`` is ``(T, S*C, 1, 1)`` in training
    (one clip from a random grid start) and ``(N, T, S*C, 1, 1)`` in evaluation (the
    ``n_eval_clips`` evenly spaced starts, each moved back to the grid): a pooled feature
    map is a ``S*C x 1 x 1`` map. ``scales`` picks the model's scales out of the store's.
    ``start`` holds the clip start frames (video frame numbers), as ``EchoClipDataset``.
    A clip encoder's store holds one embedding per backbone clip (``frames_per_feature``
    grid frames): T is then ``clips.frames`` over that clip length, as in its forward.
    Each video's features (its scales, float32) are read once and kept: a dataset holds one
    model's videos, not the store, and reopening the memory map per item cost a third of a
    cached training run.
    """

    def __init__(
        self,
        features: FeatureStore,
        table: pd.DataFrame,
        spec: ClipSpec,
        train: bool,
        *,
        scales: Sequence[int],
        n_eval_clips: int = 1,
        seed: int = 0,
    ) -> None:
        missing = {"FileName", "EF"} - set(table.columns)
        if missing:
            raise ValueError(f"dataset table lacks columns {sorted(missing)}")
        self.features = features
        self.file_names = table["FileName"].astype(str).tolist()
        self.ejection_fraction = table["EF"].to_numpy(dtype=np.float32)
        absent = [n for n in self.file_names if n not in features]
        if absent:
            raise ValueError(
                f"{len(absent)} videos not in frame-feature store {features.root}: {absent[:5]}"
            )
        stored = list(features.key["scales"])
        unknown = [s for s in scales if s not in stored]
        if unknown:
            raise ValueError(
                f"cardiac_clip.scales {list(scales)}: scales {unknown} are not in the "
                f"frame-feature store (it has {stored}); build it with those scales"
            )
        self.scale_index = [stored.index(s) for s in scales]
        unit = frames_per_feature(features.key)
        if spec.frames % unit:
            raise UserError(
                f"clips.frames: {spec.frames} is not a multiple of the backbone's clip length "
                f"{unit}; fix: set clips.frames to a multiple of it"
            )
        self.frames = spec.frames // unit  # stored features per clip
        self.spec = spec
        self.train = train
        self.n_eval_clips = n_eval_clips
        self.seed = seed
        self.epoch = 0
        self._grids: dict[str, np.ndarray] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def eval_identity(self) -> dict[str, Any]:
        """What decides the evaluation items (a prediction-cache key part)."""
        return {
            "features": key_digest(self.features.key),
            "files": self.file_names,
            "ef": [float(v) for v in self.ejection_fraction],
            "frames": self.spec.frames,
            "pad_mode": self.spec.pad_mode,
            "scales": self.scale_index,
            "n_eval_clips": self.n_eval_clips,
        }

    def __len__(self) -> int:
        return len(self.file_names)

    def _grid(self, name: str) -> np.ndarray:
        """``(G, len(scales), C)`` float32 features of ``name`` at the model's scales."""
        grid = self._grids.get(name)
        if grid is None:
            grid = np.asarray(self.features.load(name)[:, self.scale_index], dtype=np.float32)
            self._grids[name] = grid
        return grid

    def _clip(self, grid: np.ndarray, start: int) -> np.ndarray:
        t = self.frames
        index = start + np.arange(t)
        inside = index < grid.shape[0]
        if inside.all():
            clip = grid[index]
        elif self.spec.pad_mode == "edge":
            clip = grid[np.minimum(index, grid.shape[0] - 1)]
        else:
            pad = self.features.pad()[self.scale_index].astype(np.float32)
            clip = np.broadcast_to(pad, (t, *grid.shape[1:])).copy()
            clip[inside] = grid[index[inside]]
        return clip.reshape(t, -1, 1, 1)

    def __getitem__(self, i: int) -> dict[str, Any]:
        name = self.file_names[i]
        entry = self.features.entry(name)
        grid = self._grid(name)
        step, last = int(entry["step"]), max(0, grid.shape[0] - self.frames)
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            starts = np.array([int(rng.integers(0, last + 1))])
        else:
            spec = ClipSpec(frames=self.frames, period=step)
            starts = np.minimum(
                eval_clip_starts(int(entry["frames"]), spec, self.n_eval_clips) // step, last
            )
        clips = np.stack([self._clip(grid, int(s)) for s in starts])
        return {
            "clip": torch.from_numpy(clips[0] if self.train else clips),
            "ef": torch.tensor(self.ejection_fraction[i], dtype=torch.float32),
            "file_name": name,
            "start": torch.from_numpy(starts * step)[0]
            if self.train
            else torch.from_numpy(starts * step),
        }


class CachedCardiacCLIP(nn.Module):
    """A CardiacCLIP run from cached features: ``forward(features [B, T, S*C, 1, 1])``.

    Holds (and so saves and loads) only the trainable head, the same module objects as the
    wrapped model's (EchoZoom's norm and projection, MFL, the learned prompt embeddings), so
    training this trains the model; ``.to`` and ``.train`` reach the whole model.
    """

    def __init__(self, model: CardiacCLIP) -> None:
        super().__init__()
        if model.prompt_embeddings is None and model.regressor is None:
            raise ValueError("cached adaptation needs learn_prompts (the text tower is not run)")
        self.norm = model.image_encoder.norm
        self.proj = model.image_encoder.proj
        self.mfl = model.mfl
        if model.prompt_embeddings is not None:
            self.prompt_embeddings = model.prompt_embeddings
        if model.regressor is not None:
            self.regressor = model.regressor
        object.__setattr__(self, "model", model)  # not a submodule: its trunk is not state

    def _apply(self, fn: Any, recurse: bool = True) -> CachedCardiacCLIP:  # .to(), .float() ...
        self.model._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True) -> CachedCardiacCLIP:
        self.model.train(mode)
        return super().train(mode)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> Any:
        return self.model.forward_features(features.flatten(2).float(), mask)


def cached_param_groups(
    model: CachedCardiacCLIP, lrs: Mapping[str, float], weight_decay: float = 0.0
) -> list[dict[str, Any]]:
    """Groups ``mfl`` (the frame pooling) and ``head`` (norm, projection, prompts, regressor)."""
    groups = []
    members = {
        "mfl": list(model.mfl.parameters()),
        "head": [p for n, p in model.named_parameters() if not n.startswith("mfl.")],
    }
    for name in ("mfl", "head"):
        params = [p for p in members[name] if p.requires_grad]
        if not params:
            continue
        if name not in lrs:
            raise ValueError(
                f"training.cached.lrs has no learning rate for '{name}' (needs mfl, head)"
            )
        groups.append(
            {"name": name, "params": params, "lr": float(lrs[name]), "weight_decay": weight_decay}
        )
    return groups


# ---------------------------------------------------------------------------- priors


def ef_density(ef: Sequence[float], values: Sequence[float], bandwidth: float) -> np.ndarray:
    """Gaussian-kernel density of the EF labels at ``values``, normalised to sum to 1.

    A floor of 1e-3 of the mean keeps values no label came near from a log of zero.
    """
    ef = np.asarray(ef, dtype=float)[:, None]
    grid = np.asarray(values, dtype=float)[None, :]
    density = np.exp(-0.5 * ((grid - ef) / bandwidth) ** 2).sum(axis=0)
    density = density / density.sum()
    density = np.maximum(density, 1e-3 * density.mean())
    return density / density.sum()


def prior_offset(
    train_ef: Sequence[float],
    population_ef: Sequence[float],
    values: Sequence[float],
    *,
    bandwidth: float = 5.0,
    kind: Literal["values", "ranges"] = "values",
    bin_of_value: Sequence[int] | None = None,
) -> np.ndarray:
    """Logit adjustment for prior shift: ``log p_train(v) - log p_population(v)`` per prompt.

    The k-shot TRAIN videos are uniform over EF levels while VAL and TEST follow the
    population (mostly normal EF). Added to the logits in training only, it lets the
    training labels speak under their own prior while the logits used at evaluation keep
    the population's (Menon et al. 2021, "Long-tail learning via logit adjustment").
    ``kind="ranges"``: the densities are summed over the values of each of the five bins.
    """
    grid = np.arange(5, 96, dtype=float)
    p_train = ef_density(train_ef, grid, bandwidth)
    p_pop = ef_density(population_ef, grid, bandwidth)
    if kind == "values":
        at = np.interp(np.asarray(values, dtype=float), grid, np.log(p_train) - np.log(p_pop))
        return at.astype(np.float32)
    from cardiac_pipeline.model.prompts import ef_to_bin

    bins = np.asarray(ef_to_bin(grid)) if bin_of_value is None else np.asarray(bin_of_value)
    n = int(bins.max()) + 1
    train_bins = np.array([p_train[bins == b].sum() for b in range(n)])
    pop_bins = np.array([p_pop[bins == b].sum() for b in range(n)])
    return (np.log(train_bins) - np.log(pop_bins)).astype(np.float32)


def model_prior_offset(
    model: CardiacCLIP, train_ef: Sequence[float], population_ef: Sequence[float]
) -> np.ndarray:
    """``prior_offset`` for the model's prompts (values or the five ranges)."""
    if model.prompt_set == "values":
        return prior_offset(train_ef, population_ef, model.bin_values.tolist(), kind="values")
    return prior_offset(train_ef, population_ef, model.bin_values.tolist(), kind="ranges")
