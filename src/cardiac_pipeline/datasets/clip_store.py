"""The clip store as Kedro datasets: a folder of stores and the pointer to the current one.

Each (dataset, preprocessing parameters) pair gets its own immutable store folder under
``path``, named by a content key (``echo.clipstore.store_key``): that is how the store is
versioned. The preprocessing node decodes into ``<path>/<key>`` (resumable: finished
entries are kept, see ``echo.clipstore``); saving the resulting ``ClipStore`` here only
records it in ``current.json``, so downstream nodes load that one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from cardiac_pipeline.echo.clipstore import ClipStore
from cardiac_pipeline.io import atomic_write

POINTER = "current.json"


class ClipStoreDataset(AbstractDataset[ClipStore, ClipStore]):
    """Folder of per-dataset clip stores under ``path``; loads the current one."""

    def __init__(self, path: str) -> None:
        self._path = Path(path)

    def save(self, data: ClipStore) -> None:
        root = Path(data.root)
        if root.resolve().parent != self._path.resolve():
            raise DatasetError(f"{root}: a clip store saved here must be a folder of {self._path}")
        payload = json.dumps({"key": root.name}, indent=2).encode()
        self._path.mkdir(parents=True, exist_ok=True)
        atomic_write(self._path / POINTER, lambda handle: handle.write(payload), fsync=True)

    def load(self) -> ClipStore:
        pointer = self._path / POINTER
        if not pointer.is_file():
            raise DatasetError(
                f"{pointer}: no clip store built yet; run `kedro run --pipeline preprocessing`"
            )
        key = json.loads(pointer.read_text())["key"]
        return ClipStore(self._path / key)

    def _exists(self) -> bool:
        return (self._path / POINTER).is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}


class FolderDataset(AbstractDataset[None, Path]):
    """A folder a node writes into itself (a clip store's home): loads as its path.

    Loading creates nothing; the node that builds there makes the folder.
    """

    def __init__(self, path: str) -> None:
        self._path = Path(path)

    def load(self) -> Path:
        return self._path

    def save(self, data: None) -> None:
        raise DatasetError(f"{self._path}: a folder dataset is read-only")

    def _exists(self) -> bool:
        return True

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
