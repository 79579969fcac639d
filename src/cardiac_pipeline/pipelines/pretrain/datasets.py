"""The pretrained backbone checkpoint as Kedro datasets: load and save, nothing else.

``PretrainedBackboneDataset`` is the checkpoint at ``filepath`` (plain, not versioned, so
that ``backbone.pretrained`` can name it); it loads as the file's path. With
``archive_dir`` every checkpoint saved is also kept there as ``<config_hash>.pt``, and
``PretrainedBackboneArchive`` lists them by config hash (``PretrainedCheckpoints``): the
pretrain node reads that list and, for a config pretrained before, returns its file instead
of pretraining again. A config not there is pretrained under its build lock
(``PretrainedCheckpoints.building``), and kept there before the lock is released, so a
second run needing the same config waits for the first and restores its checkpoint.

A save takes either a new checkpoint (``{"arch", "state_dict", "meta"}``, from the node
that trained it) or the path of a kept one (a restore); the checkpoint it replaces is
archived first when the archive lacks it (made before archiving existed).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from cardiac_pipeline.io import atomic_write, build_lock


def _config_hash(path: Path) -> str | None:
    from cardiac_pipeline.model.pretrain import read_checkpoint_meta

    return (read_checkpoint_meta(path) or {}).get("config_hash")


class PretrainedCheckpoints(Mapping[str, Path]):
    """The checkpoints on disk by config hash (the current file wins), and how a new one
    is made: ``building(hash)`` then ``keep(checkpoint)`` under it."""

    def __init__(self, filepath: Path, archive: Path | None) -> None:
        self._filepath, self._archive = filepath, archive
        self._found = self._scan()

    def _scan(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        kept = (
            sorted(self._archive.glob("*.pt")) if self._archive and self._archive.is_dir() else []
        )
        for path in [*kept, self._filepath]:
            key = _config_hash(path) if path.is_file() else None
            if key:
                found[str(key)] = path
        return found

    def __getitem__(self, config_hash: str) -> Path:
        return self._found[config_hash]

    def __iter__(self) -> Iterator[str]:
        return iter(self._found)

    def __len__(self) -> int:
        return len(self._found)

    @contextlib.contextmanager
    def building(self, config_hash: str) -> Iterator[None]:
        """Hold the build lock of ``config_hash`` (waiting while another run pretrains it),
        then list the checkpoints again: the run waited for may have kept it."""
        lock = self._filepath.with_name(f".{self._filepath.stem}.{config_hash}.lock")
        with build_lock(lock, f"pretrained backbone {config_hash}"):
            self._found = self._scan()
            yield

    def keep(self, checkpoint: dict[str, Any]) -> Path:
        """Write a new checkpoint where its config is found again (inside ``building``)."""
        import torch

        key = str(checkpoint["meta"]["config_hash"])
        target = self._archive / f"{key}.pt" if self._archive else self._filepath
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda handle: torch.save(checkpoint, handle), fsync=False)
        self._found[key] = target
        return target


class PretrainedBackboneArchive(AbstractDataset[None, PretrainedCheckpoints]):
    """Checkpoints on disk by config hash: the current file and every archived one."""

    def __init__(self, filepath: str, archive_dir: str | None = None) -> None:
        self._filepath = Path(filepath)
        self._archive = Path(archive_dir) if archive_dir else None

    def load(self) -> PretrainedCheckpoints:
        return PretrainedCheckpoints(self._filepath, self._archive)

    def save(self, data: None) -> None:
        raise DatasetError(f"{self._filepath}: the checkpoint list is read-only")

    def _exists(self) -> bool:
        return True

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "archive_dir": str(self._archive)}


class PretrainedBackboneDataset(AbstractDataset[dict[str, Any] | Path, Path]):
    """``{"arch", "state_dict", "meta"}`` at ``filepath``; loads as the file's path."""

    def __init__(self, filepath: str, archive_dir: str | None = None) -> None:
        self._filepath = Path(filepath)
        self._archive = Path(archive_dir) if archive_dir else None

    def _archived(self, config_hash: str) -> Path | None:
        return self._archive / f"{config_hash}.pt" if self._archive else None

    def _archive_current(self) -> None:
        """Keep the checkpoint about to be replaced if the archive lacks it."""
        key = _config_hash(self._filepath) if self._filepath.is_file() else None
        target = self._archived(str(key)) if key else None
        if target is not None and not target.is_file():
            _copy_atomic(self._filepath, target)

    def save(self, data: dict[str, Any] | Path) -> None:
        import torch

        if isinstance(data, str | Path):
            if Path(data).resolve() == self._filepath.resolve():
                return  # already current
            self._archive_current()
            _copy_atomic(Path(data), self._filepath)
            return
        key = str(data["meta"]["config_hash"])
        self._archive_current()
        self._filepath.parent.mkdir(parents=True, exist_ok=True)
        target = self._archived(key) or self._filepath
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda handle: torch.save(data, handle), fsync=False)
        if target != self._filepath:
            _copy_atomic(target, self._filepath)

    def load(self) -> Path:
        if not self._filepath.is_file():
            raise DatasetError(
                f"{self._filepath}: no pretrained backbone; run `kedro run --pipeline pretrain`"
            )
        return self._filepath

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "archive_dir": str(self._archive)}


def _copy_atomic(source: Path, target: Path) -> None:
    """Copy through a temporary file and a rename: a reader never sees half a checkpoint."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(source, "rb") as handle:
        atomic_write(target, lambda out: shutil.copyfileobj(handle, out), fsync=False)
