"""An EchoNet-format folder as a Kedro dataset.

Loading gives the folder's path after checking it looks like EchoNet-Dynamic; readers of
its files live in ``echo/``. Saving a ``SyntheticRequest`` generates the embedded synthetic
dataset there, but only into an empty place or over an earlier synthetic dataset: a folder
that holds data the project did not generate (a real EchoNet copy) is never touched.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

logger = logging.getLogger(__name__)

MARKER = ".synthetic.json"


@dataclass(frozen=True)
class SyntheticRequest:
    """What to generate: keyword arguments of ``echo.synthetic.generate_dataset``."""

    params: dict[str, Any] = field(default_factory=dict)


class EchoNetFolderDataset(AbstractDataset[SyntheticRequest, Path]):
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

    def save(self, data: SyntheticRequest) -> None:
        from cardiac_pipeline.echo.synthetic import GENERATOR_VERSION, generate_dataset

        root = self._path.resolve()
        wanted = json.dumps(
            {"generator_version": GENERATOR_VERSION, "params": data.params},
            sort_keys=True,
            default=str,
        )
        marker = root / MARKER
        if root.exists() and any(root.iterdir()):
            if not marker.is_file():
                logger.info(
                    "%s holds a dataset the project did not generate; leaving it untouched "
                    "(no synthetic data written)",
                    root,
                )
                return
            if marker.read_text() == wanted and (root / "FileList.csv").is_file():
                logger.info("Synthetic dataset at %s is up to date; not regenerating", root)
                return
            logger.info("Synthetic parameters or generator changed; regenerating %s", root)
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
        try:
            generate_dataset(tmp, **data.params)
            (tmp / MARKER).write_text(wanted)
            if root.exists():
                shutil.rmtree(root)
            tmp.rename(root)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)

    def _exists(self) -> bool:
        return (self._path / "FileList.csv").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
