"""Linear-probe baseline: ridge regression of LVEF on frozen pretrained video embeddings.

The backbone is never trained, so each video's embedding depends only on (backbone, clip
parameters): ``EmbeddingCache`` stores it once per video and every k-shot split and seed
reuses it. Fitting a ridge on a few hundred 512-d vectors then takes milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from torch.utils.data import Dataset

from cardiac_pipeline.io import atomic_write

EncodeFn = Callable[[torch.Tensor], torch.Tensor]
ComputeFn = Callable[[list[str]], tuple[np.ndarray, Sequence[str]]]

# Ridge strengths tried by leave-one-out CV (features standardised, so on a common scale).
DEFAULT_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-2, 5, 15))
EF_RANGE: tuple[float, float] = (0.0, 100.0)
CACHE_FORMAT = "cardiac_pipeline.embeddings/1"


# ----------------------------------------------------------------------- embeddings


def embed_videos(
    encode_fn: EncodeFn,
    dataset: Dataset | Sequence[Mapping[str, Any]],
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
) -> tuple[np.ndarray, list[str]]:
    """Frozen video embeddings: ``encode_fn`` on every clip, averaged over a video's clips.

    ``dataset`` items hold ``"clip"`` uint8 ``(N, T, C, H, W)`` (eval mode; a single
    ``(T, C, H, W)`` clip counts as N = 1) and ``"file_name"``. ``encode_fn`` maps clips
    ``[B, T, C, H, W]`` on ``device`` to ``[B, D]``. ``batch_size`` caps the clips per call
    (clips of consecutive videos share calls). Returns ``(embeddings [V, D] float32,
    file_names)`` in dataset order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = torch.device(device)
    sums: list[np.ndarray | None] = []
    counts: list[int] = []
    names: list[str] = []
    pending: list[tuple[int, torch.Tensor]] = []  # (video index, clips [n, T, C, H, W])
    n_pending = 0

    def flush() -> None:
        nonlocal n_pending
        if not pending:
            return
        owners = torch.cat(
            [torch.full((c.shape[0],), v, dtype=torch.long) for v, c in pending]
        ).numpy()
        clips = torch.cat([c for _, c in pending]).to(dev, non_blocking=True)
        emb = torch.as_tensor(encode_fn(clips))
        if emb.ndim != 2 or emb.shape[0] != clips.shape[0]:
            raise ValueError(
                f"encode_fn must return [B, D] for {clips.shape[0]} clips, got {tuple(emb.shape)}"
            )
        emb_np = emb.detach().float().cpu().numpy().astype(np.float64)
        for video in np.unique(owners):
            part = emb_np[owners == video].sum(axis=0)
            sums[video] = part if sums[video] is None else sums[video] + part
        pending.clear()
        n_pending = 0

    with torch.inference_mode():
        for i in range(len(dataset)):  # type: ignore[arg-type]
            item = dataset[i]
            name = str(item["file_name"])
            clip = torch.as_tensor(item["clip"])
            if clip.ndim == 4:
                clip = clip.unsqueeze(0)
            if clip.ndim != 5 or clip.shape[0] == 0:
                raise ValueError(
                    f"video {name!r}: expected clips (N, T, C, H, W) with N >= 1, "
                    f"got {tuple(clip.shape)}"
                )
            video = len(names)
            names.append(name)
            sums.append(None)
            counts.append(int(clip.shape[0]))
            for start in range(0, clip.shape[0], batch_size):
                part = clip[start : start + batch_size]
                if n_pending + part.shape[0] > batch_size:
                    flush()
                pending.append((video, part))
                n_pending += part.shape[0]
        flush()
    if not names:
        return np.zeros((0, 0), dtype=np.float32), []
    embeddings = np.stack([s / n for s, n in zip(sums, counts, strict=True)])  # type: ignore[operator]
    return embeddings.astype(np.float32), names


# ---------------------------------------------------------------------------- cache


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:60] or "model"


def _canonical(model_id: str, clip_params: Mapping[str, Any]) -> str:
    return json.dumps(
        {"model_id": str(model_id), "clip_params": dict(clip_params)},
        sort_keys=True,
        default=str,
        separators=(",", ":"),
    )


class EmbeddingCache:
    """Per-video embeddings on disk, one ``.npz`` per (model id, clip parameters).

    ``model_id`` must name the weights, not only the architecture (e.g. include a checksum
    or a version of the checkpoint): two different weights under one id would share a
    file. ``clip_params`` is any JSON-able mapping (frames, period, size, eval clips ...).
    Files are replaced atomically (temporary file + rename), so a crash mid-write leaves the
    previous file or none, never a partial one.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, model_id: str, clip_params: Mapping[str, Any]) -> Path:
        """The file for this key: ``<model slug>-<sha256 of id and params, 16 hex>.npz``."""
        digest = hashlib.sha256(_canonical(model_id, clip_params).encode()).hexdigest()[:16]
        return self.root / f"{_slug(model_id)}-{digest}.npz"

    def load(
        self, model_id: str, clip_params: Mapping[str, Any]
    ) -> tuple[np.ndarray, list[str]] | None:
        """``(embeddings [V, D] float32, file_names)`` or None when nothing is cached."""
        path = self.path(model_id, clip_params)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                key = str(data["key"])
                embeddings = np.asarray(data["embeddings"], dtype=np.float32)
                names = [str(n) for n in data["file_names"]]
        except Exception as exc:
            raise ValueError(f"{path}: unreadable embedding cache ({exc}); delete it") from exc
        if key != _canonical(model_id, clip_params):
            raise ValueError(f"{path}: cache was written for another key ({key}); delete it")
        if embeddings.ndim != 2 or embeddings.shape[0] != len(names):
            raise ValueError(
                f"{path}: {embeddings.shape} embeddings for {len(names)} file names; delete it"
            )
        return embeddings, names

    def save(
        self,
        model_id: str,
        clip_params: Mapping[str, Any],
        embeddings: np.ndarray,
        file_names: Sequence[str],
    ) -> Path:
        """Write (replace) the cache file for this key atomically; returns its path."""
        embeddings = np.asarray(embeddings, dtype=np.float32)
        names = [str(n) for n in file_names]
        if embeddings.ndim != 2 or embeddings.shape[0] != len(names):
            raise ValueError(f"embeddings {embeddings.shape} do not match {len(names)} file names")
        if len(set(names)) != len(names):
            raise ValueError("file_names contain duplicates")
        path = self.path(model_id, clip_params)
        path.parent.mkdir(parents=True, exist_ok=True)
        key = np.array(_canonical(model_id, clip_params))
        atomic_write(
            path,
            lambda handle: np.savez(
                handle,
                format=np.array(CACHE_FORMAT),
                key=key,
                embeddings=embeddings,
                file_names=np.array(names, dtype=str),
            ),
            fsync=True,
        )
        return path

    def get_or_compute(
        self,
        model_id: str,
        clip_params: Mapping[str, Any],
        file_names: Iterable[str],
        compute: ComputeFn,
    ) -> np.ndarray:
        """Embeddings [len(file_names), D] in the order asked; only the videos not cached yet
        go to ``compute(missing_names) -> (embeddings, names)`` and are added to the file."""
        wanted = [str(n) for n in file_names]
        cached = self.load(model_id, clip_params)
        emb, names = cached if cached is not None else (None, [])
        index = {n: i for i, n in enumerate(names)}
        missing = list(dict.fromkeys(n for n in wanted if n not in index))
        if missing:
            new_emb, new_names = compute(missing)
            new_emb = np.asarray(new_emb, dtype=np.float32)
            new_names = [str(n) for n in new_names]
            absent = sorted(set(missing) - set(new_names))
            if absent:
                raise ValueError(f"compute returned no embedding for {absent[:10]}")
            if emb is not None and new_emb.ndim == 2 and new_emb.shape[1] != emb.shape[1]:
                raise ValueError(
                    f"{self.path(model_id, clip_params)}: cached embeddings are "
                    f"{emb.shape[1]}-d but compute returned {new_emb.shape[1]}-d"
                )
            keep = [i for i, n in enumerate(new_names) if n not in index]
            new_emb, new_names = new_emb[keep], [new_names[i] for i in keep]
            emb = new_emb if emb is None else np.concatenate([emb, new_emb])
            names = [*names, *new_names]
            self.save(model_id, clip_params, emb, names)
            index = {n: i for i, n in enumerate(names)}
        if emb is None or not wanted:
            return np.zeros((0, 0 if emb is None else emb.shape[1]), dtype=np.float32)
        return emb[[index[n] for n in wanted]]


# ------------------------------------------------------------------------------ probe


def fit_linear_probe(
    train_emb: np.ndarray,
    train_ef: np.ndarray,
    *,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
) -> Pipeline:
    """Standardise the features, then ridge regression with the strength chosen by efficient
    leave-one-out CV over ``alphas`` (no data is held out: few-shot sets are tiny).
    Returns the fitted sklearn pipeline (``probe[-1].alpha_`` is the chosen strength)."""
    x = np.asarray(train_emb, dtype=np.float64)
    y = np.asarray(train_ef, dtype=np.float64).reshape(-1)
    if x.ndim != 2:
        raise ValueError(f"train_emb must be [N, D], got shape {x.shape}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{x.shape[0]} embeddings but {y.shape[0]} EF values")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 training videos, got {x.shape[0]}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("train_emb / train_ef contain NaN or inf")
    if not alphas or any(a <= 0 for a in alphas):
        raise ValueError(f"alphas must be a non-empty list of positive values, got {alphas}")
    probe = make_pipeline(StandardScaler(), RidgeCV(alphas=np.array(alphas, dtype=np.float64)))
    probe.fit(x, y)
    return probe


def predict_linear_probe(
    probe: Pipeline, emb: np.ndarray, *, ef_range: tuple[float, float] = EF_RANGE
) -> np.ndarray:
    """LVEF predictions [N] (float64), clipped to ``ef_range`` (a linear map can overshoot)."""
    x = np.asarray(emb, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"emb must be [N, D], got shape {x.shape}")
    return np.clip(probe.predict(x), *ef_range)
