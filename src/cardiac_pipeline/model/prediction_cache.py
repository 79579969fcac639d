"""Video-level predictions kept on disk per (model weights, evaluation inputs).

A model's predictions on fixed evaluation clips are a pure function of its weights, its
architecture, the clips and this package's code. The benchmark meets the same weights
again and again: VAL keeps the pretrained start in most runs at small k (so their TEST
predictions are the start's), and every run of a pretrained method scores that start on
the same VAL videos as "epoch 0". Computing each once saves whole evaluation passes and
changes no number (a hit returns the stored float64 values).

The key hashes the weights' bytes, a caller context (architecture, clips, device, batch
size ...) and the source of the modules that compute a prediction, so editing the model
code invalidates every entry instead of serving predictions of the old code.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from cardiac_pipeline.io import atomic_write, build_lock

logger = logging.getLogger(__name__)

CACHE_FORMAT = "cardiac-pipeline/predictions/1"
_PACKAGE = Path(__file__).resolve().parent.parent
# Everything between a stored clip and an EF prediction.
_CODE = ("model", "echo/clips.py", "echo/clipstore.py")


@functools.cache
def code_digest() -> str:
    """Hash of the source files that turn clips into predictions."""
    digest = hashlib.sha256()
    for entry in _CODE:
        path = _PACKAGE / entry
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(str(file.relative_to(_PACKAGE)).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def weights_digest(model: nn.Module) -> str:
    """Hash of every parameter and buffer (name, dtype, shape, bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}".encode())
        if value.dtype == torch.bfloat16:
            value = value.view(torch.int16)
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()[:32]


class PredictionCache:
    """``get_or_compute(model, context, compute)``: a stored table or ``compute()``'s, saved.

    ``context`` is a JSON-able mapping of everything besides the weights that decides the
    predictions (architecture config, dataset identity, device, batch size); ``scoped``
    returns a view that adds to it. One ``.npz`` per key; written atomically.
    """

    def __init__(self, root: str | os.PathLike, context: Mapping[str, Any] | None = None) -> None:
        self.root = Path(root)
        self.context = dict(context or {})

    def __repr__(self) -> str:
        return f"PredictionCache({str(self.root)!r})"

    def scoped(self, context: Mapping[str, Any]) -> PredictionCache:
        """The same store with ``context`` added to every key."""
        return PredictionCache(self.root, {**self.context, **context})

    def key(self, model: nn.Module, context: Mapping[str, Any]) -> str:
        return json.dumps(
            {
                "format": CACHE_FORMAT,
                "code": code_digest(),
                "weights": weights_digest(model),
                "context": {**self.context, **context},
            },
            sort_keys=True,
            default=str,
            separators=(",", ":"),
        )

    def path(self, key: str) -> Path:
        return self.root / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz"

    def get_or_compute(
        self,
        model: nn.Module,
        context: Mapping[str, Any],
        compute: Callable[[], pd.DataFrame],
    ) -> pd.DataFrame:
        """The predictions table for ``model`` under ``context``; computed at most once
        (a run meeting another one computing the same key waits for it, then reads it)."""
        key = self.key(model, context)
        path = self.path(key)
        if not path.exists():
            with build_lock(path.with_name(f".{path.stem}.lock"), f"predictions {path.stem}"):
                if not path.exists():
                    table = compute()
                    _save(path, key, table)
                    return table
        logger.info("predictions of these weights reused from %s", path.name)
        return _load(path, key)


def _load(path: Path, key: str) -> pd.DataFrame:
    try:
        with np.load(path, allow_pickle=False) as data:
            stored_key = str(data["key"])
            columns = [str(c) for c in data["columns"]]
            table = pd.DataFrame({c: data[f"column_{i}"] for i, c in enumerate(columns)})
    except Exception as exc:
        raise ValueError(f"{path}: unreadable prediction cache ({exc}); delete it") from exc
    if stored_key != key:
        raise ValueError(f"{path}: written for another key; delete it")
    return table


def _save(path: Path, key: str, table: pd.DataFrame) -> None:
    arrays = {}
    for i, column in enumerate(table.columns):
        values = table[column].to_numpy()
        arrays[f"column_{i}"] = values.astype(str) if values.dtype == object else values
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = np.array([str(c) for c in table.columns])
    atomic_write(
        path,
        lambda handle: np.savez(handle, key=np.array(key), columns=columns, **arrays),
        fsync=False,
    )
