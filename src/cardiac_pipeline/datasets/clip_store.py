"""The clip store as a Kedro dataset.

Each (dataset, preprocessing parameters) pair gets its own immutable store folder, named
by a content key (``echo.clipstore.store_key``): that is how the store is versioned.
Re-running with unchanged inputs reuses finished entries, and pointing ``echonet_root``
at another dataset never mixes the two. ``current.json`` records which store the last
run built, so downstream nodes load that one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from kedro.io import AbstractDataset, DatasetError

from cardiac_pipeline.echo.clipstore import ClipStore, atomic_write, build_clip_store, store_key


@dataclass
class ClipStoreRequest:
    """Videos to cache and how: the node's output, built by the dataset's save."""

    index: pd.DataFrame
    echonet_root: str
    size: int = 112
    workers: int = 2
    options: dict[str, Any] = field(default_factory=dict)


class ClipStoreDataset(AbstractDataset[ClipStoreRequest, ClipStore]):
    """Folder of per-dataset clip stores under ``path``."""

    def __init__(self, path: str) -> None:
        self._path = Path(path)

    def save(self, data: ClipStoreRequest) -> None:
        key = store_key(data.echonet_root, {"size": data.size, **data.options})
        root = self._path / key
        build_clip_store(data.index, root, size=data.size, workers=data.workers, **data.options)
        pointer = {"key": key, "echonet_root": str(data.echonet_root), "size": data.size}
        self._path.mkdir(parents=True, exist_ok=True)
        text = json.dumps(pointer, indent=2).encode()
        atomic_write(self._path / "current.json", lambda f: f.write(text), fsync=True)

    def load(self) -> ClipStore:
        pointer = self._path / "current.json"
        if not pointer.is_file():
            raise DatasetError(
                f"{pointer}: no clip store built yet; run `kedro run --pipeline preprocessing`"
            )
        key = json.loads(pointer.read_text())["key"]
        return ClipStore(self._path / key)

    def _exists(self) -> bool:
        return (self._path / "current.json").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
