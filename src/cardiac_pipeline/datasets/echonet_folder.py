"""An EchoNet-format folder as a Kedro dataset.

Loading gives the folder's path after checking it looks like EchoNet-Dynamic; readers of
its files live in ``echo/``. Saving takes a folder the synthetic node generated beside it
(``echo.synthetic.stage_dataset``) and renames it into place, replacing only an earlier
synthetic dataset: a folder that holds data the project did not generate (a real EchoNet
copy) is never touched. Saving the dataset's own path (the node found it current) does
nothing.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from cardiac_pipeline.echo.synthetic import MARKER

logger = logging.getLogger(__name__)


class EchoNetFolderDataset(AbstractDataset[Path, Path]):
    """``FileList.csv`` + ``Videos/`` (+ optional ``VolumeTracings.csv``) at ``path``."""

    def __init__(self, path: str) -> None:
        self._path = Path(path).expanduser()

    def load(self) -> Path:
        root = self._path.resolve()
        if not root.is_dir():
            raise DatasetError(
                f"{root}: EchoNet folder not found. Generate the synthetic one with "
                "`kedro run --pipeline synthetic`, or point at your copy with "
                "`kedro run --params=echonet_root=/path/to/EchoNet-Dynamic`."
            )
        if not (root / "FileList.csv").is_file():
            raise DatasetError(f"{root}: no FileList.csv; this is not an EchoNet-format folder")
        return root

    def save(self, data: Path) -> None:
        root, staged = self._path.resolve(), Path(data).resolve()
        if staged == root:
            return
        if staged.parent != root.parent or not (staged / MARKER).is_file():
            raise DatasetError(f"{staged}: not a generated dataset staged beside {root}")
        if root.exists() and any(root.iterdir()) and not (root / MARKER).is_file():
            shutil.rmtree(staged)
            raise DatasetError(
                f"{root} holds a dataset the project did not generate; not replacing it"
            )
        if (root / MARKER).is_file() and (root / MARKER).read_text() == (
            staged / MARKER
        ).read_text():
            shutil.rmtree(staged)  # another run published the same dataset; it may be reading it
            return
        if root.exists():
            shutil.rmtree(root)
        staged.rename(root)

    def _exists(self) -> bool:
        return (self._path / "FileList.csv").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
