"""Versioned folders of named artifacts: one file per (k, seed) or (method, k, seed).

Kedro's PartitionedDataset does not version; these do. A save writes every member into a
hidden temporary folder and renames it into place, so a crash never leaves a version
that looks complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
import torch
from kedro.io import AbstractVersionedDataset, DatasetError, Version


class _VersionedFolderDataset(AbstractVersionedDataset[dict[str, Any], dict[str, Any]]):
    suffix = ""

    def __init__(self, filepath: str, version: Version | None = None) -> None:
        super().__init__(PurePosixPath(filepath), version)

    def _write_member(self, value: Any, path: Path) -> None:
        raise NotImplementedError

    def _read_member(self, path: Path) -> Any:
        raise NotImplementedError

    def load(self) -> dict[str, Any]:
        folder = Path(str(self._get_load_path()))
        if not folder.is_dir():
            raise DatasetError(f"{folder}: no such folder (has the producing pipeline run?)")
        return {
            p.name[: -len(self.suffix)]: self._read_member(p)
            for p in sorted(folder.glob(f"*{self.suffix}"))
        }

    def save(self, data: dict[str, Any]) -> None:
        if not isinstance(data, dict):
            raise DatasetError(
                f"{self._filepath}: expected a dict of name -> item, got {type(data)}"
            )
        target = Path(str(self._get_save_path()))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            for name, value in data.items():
                if "/" in name or name.startswith("."):
                    raise DatasetError(f"{self._filepath}: bad member name {name!r}")
                self._write_member(value, tmp / f"{name}{self.suffix}")
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)

    def _exists(self) -> bool:
        try:
            return Path(str(self._get_load_path())).is_dir()
        except DatasetError:
            return False

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "version": self._version}


class VersionedCSVFolderDataset(_VersionedFolderDataset):
    """A dict of DataFrames saved as ``<name>.csv`` in one versioned folder."""

    suffix = ".csv"

    def _write_member(self, value: pd.DataFrame, path: Path) -> None:
        value.to_csv(path, index=False)

    def _read_member(self, path: Path) -> pd.DataFrame:
        return pd.read_csv(path)


class VersionedCheckpointFolderDataset(_VersionedFolderDataset):
    """A dict of torch checkpoints (plain dicts of tensors) saved as ``<name>.pt``.

    Loaded with ``weights_only=True``: a checkpoint can never execute code.
    """

    suffix = ".pt"

    def _write_member(self, value: Any, path: Path) -> None:
        if isinstance(value, str | os.PathLike):
            shutil.copyfile(value, path)
        else:
            torch.save(value, path)

    def _read_member(self, path: Path) -> Any:
        return torch.load(path, map_location="cpu", weights_only=True)
