"""Versioned folders of named artifacts: one file per (k, seed) or (method, k, seed).

Kedro's PartitionedDataset does not version; these do. A save writes every member into a
hidden temporary folder and renames it into place, so a crash never leaves a version
that looks complete.

With ``member``, the dataset is one member of such a folder: the model of one (k, seed),
saved by its own node into ``<filepath>/<version>/<name>/<member><suffix>`` (the run's
version, shared by every member saved in that run) and loaded from the newest version
that holds it. The folder layout stays the one readers of the whole folder expect.
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

from cardiac_pipeline.io import atomic_write


class _VersionedFolderDataset(AbstractVersionedDataset[dict[str, Any], dict[str, Any]]):
    suffix = ""

    def __init__(
        self, filepath: str, version: Version | None = None, member: str | None = None
    ) -> None:
        super().__init__(PurePosixPath(filepath), version)
        if member is not None and ("/" in member or member.startswith(".") or not member):
            raise DatasetError(f"{filepath}: bad member name {member!r}")
        self._member = member

    def _write_member(self, value: Any, path: Path) -> None:
        raise NotImplementedError

    def _read_member(self, path: Path) -> Any:
        raise NotImplementedError

    def _member_file(self, version: str) -> Path:
        root = Path(str(self._filepath))
        return root / version / root.name / f"{self._member}{self.suffix}"

    def _own_version(self) -> str | None:
        """This run's version when it saved one: a run loads what it saved itself, not the
        latest on disk, which may be another run's started at the same time."""
        return self._version.save if self._version and not self._version.load else None

    def _member_load_file(self) -> Path:
        if self._version and self._version.load:
            return self._member_file(self._version.load)
        own = self._own_version()
        if own and self._member_file(own).is_file():
            return self._member_file(own)
        root = Path(str(self._filepath))
        found = sorted(root.glob(f"*/{root.name}/{self._member}{self.suffix}"))
        if not found:
            raise DatasetError(
                f"{root}: no version holds {self._member}{self.suffix} (has its node run?)"
            )
        return found[-1]

    def load(self) -> Any:
        if self._member is not None:
            return self._read_member(self._member_load_file())
        own = self._own_version()
        saved = Path(str(self._get_versioned_path(own))) if own else None
        folder = saved if saved and saved.is_dir() else Path(str(self._get_load_path()))
        if not folder.is_dir():
            raise DatasetError(f"{folder}: no such folder (has the producing pipeline run?)")
        return {
            p.name[: -len(self.suffix)]: self._read_member(p)
            for p in sorted(folder.glob(f"*{self.suffix}"))
        }

    def save(self, data: Any) -> None:
        if self._member is not None:
            target = self._member_file(self.resolve_save_version() or "")
            if target.exists():
                raise DatasetError(f"{target}: already saved in this version")
            target.parent.mkdir(parents=True, exist_ok=True)
            self._write_member(data, target)
            return
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
            if self._member is not None:
                return self._member_load_file().is_file()
            return Path(str(self._get_load_path())).is_dir()
        except DatasetError:
            return False

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "member": self._member, "version": self._version}


class VersionedCSVFolderDataset(_VersionedFolderDataset):
    """A dict of DataFrames saved as ``<name>.csv`` in one versioned folder."""

    suffix = ".csv"

    def _write_member(self, value: pd.DataFrame, path: Path) -> None:
        atomic_write(path, lambda handle: value.to_csv(handle, index=False), fsync=False)

    def _read_member(self, path: Path) -> pd.DataFrame:
        return pd.read_csv(path)


class VersionedCheckpointFolderDataset(_VersionedFolderDataset):
    """A dict of torch checkpoints (plain dicts of tensors) saved as ``<name>.pt``.

    Loaded with ``weights_only=True``: a checkpoint can never execute code.
    """

    suffix = ".pt"

    def _write_member(self, value: Any, path: Path) -> None:
        if isinstance(value, str | os.PathLike):
            with open(value, "rb") as source:
                atomic_write(path, lambda handle: shutil.copyfileobj(source, handle), fsync=False)
        else:
            atomic_write(path, lambda handle: torch.save(value, handle), fsync=False)

    def _read_member(self, path: Path) -> Any:
        return torch.load(path, map_location="cpu", weights_only=True)
