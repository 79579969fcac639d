"""The frame-feature store as a Kedro dataset (the clip store's pattern).

Each feature key (weights' content digest, trunk, scales, preprocessing, clip grid: see
``model.features.feature_store_key``) gets its own folder, so new pretrained weights make a
new store and the old one is left as it was; ``current.json`` names the store that the
last build wrote, which is what ``load`` opens. Saving a request encodes only the videos
the store does not hold yet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset

from cardiac_pipeline.echo.clipstore import atomic_write


@dataclass
class FeatureStoreRequest:
    """What to encode: ``model`` (a CardiacCLIP whose trunk is encoded), the clip store,
    the video names, the clip spec (its frame grid) and the key; ``None`` model: nothing
    to build (an adaptation that does not use cached features)."""

    model: Any
    clip_store: Any
    names: list[str]
    spec: Any
    key: dict[str, Any] = field(default_factory=dict)
    progress: bool = True


class FrameFeatureStoreDataset(AbstractDataset[FeatureStoreRequest, Any]):
    """Folder of frame-feature stores under ``path``; loads the current one (or None)."""

    def __init__(self, path: str) -> None:
        self._path = Path(path)

    def save(self, data: FeatureStoreRequest) -> None:
        from cardiac_pipeline.model.features import build_feature_store, key_digest

        self._path.mkdir(parents=True, exist_ok=True)
        pointer: dict[str, Any] = {"key": None}
        if data.model is not None:
            digest = key_digest(data.key)
            build_feature_store(
                data.model,
                data.clip_store,
                self._path / digest,
                data.names,
                data.spec,
                key=data.key,
                progress=data.progress,
            )
            pointer = {"key": digest}
        payload = json.dumps(pointer, indent=2).encode()
        atomic_write(self._path / "current.json", lambda f: f.write(payload), fsync=False)

    def load(self) -> Any:
        from cardiac_pipeline.model.features import FeatureStore

        pointer = self._path / "current.json"
        key = json.loads(pointer.read_text()).get("key") if pointer.is_file() else None
        return FeatureStore(self._path / key) if key else None

    def _exists(self) -> bool:
        return (self._path / "current.json").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
