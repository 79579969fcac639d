"""The frame-feature store as a Kedro dataset (the clip store's pattern): load and save only.

Each feature key (weights' content digest, trunk, scales, preprocessing, clip grid: see
``model.features.feature_store_key``) gets its own folder under ``path``, built by the
``build_frame_features`` node; ``current.json`` names the store that the last build wrote,
which is what ``load`` opens. The node saves ``{}`` (Kedro saves no None) when the run
adapts without cached features; ``load`` then gives None.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from cardiac_pipeline.io import atomic_write


class FrameFeatureStoreDataset(AbstractDataset[Any, Any]):
    """Folder of frame-feature stores under ``path``; loads the current one (or None)."""

    def __init__(self, path: str) -> None:
        self._path = Path(path)

    def save(self, data: Any) -> None:
        key = None
        if data != {}:
            root = Path(data.root)
            if root.resolve().parent != self._path.resolve():
                raise DatasetError(f"{root}: a feature store saved here must be in {self._path}")
            key = root.name
        payload = json.dumps({"key": key}, indent=2).encode()
        self._path.mkdir(parents=True, exist_ok=True)
        atomic_write(self._path / "current.json", lambda f: f.write(payload), fsync=True)

    def load(self) -> Any:
        from cardiac_pipeline.model.features import FeatureStore

        pointer = self._path / "current.json"
        key = json.loads(pointer.read_text()).get("key") if pointer.is_file() else None
        return FeatureStore(self._path / key) if key else None

    def _exists(self) -> bool:
        return (self._path / "current.json").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
