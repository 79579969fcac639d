"""The pretrained backbone checkpoint as a Kedro dataset that skips work already done.

Saving a ``PretrainRequest`` trains only when the checkpoint at ``filepath`` is missing or
was made with another config (its ``meta.config_hash``), so ``kedro run`` does not pretrain
again. The file is plain (not versioned) so that ``backbone.pretrained`` can name it.
With ``archive_dir``, every checkpoint is also kept there as ``<config_hash>.pt``: going
back to a config pretrained before (after trying other pretraining settings, the defaults
again) copies its checkpoint back instead of pretraining again.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from kedro.io import AbstractDataset, DatasetError

from cardiac_pipeline.echo.clipstore import atomic_write

logger = logging.getLogger(__name__)


@dataclass
class PretrainRequest:
    """What to pretrain: ``run()`` gives ``(model, history)``; ``config`` identifies it."""

    arch: str
    config: dict[str, Any]
    run: Callable[[], tuple[Any, pd.DataFrame]]
    extra_meta: dict[str, Any] = field(default_factory=dict)


class PretrainedBackboneDataset(AbstractDataset[PretrainRequest, Path]):
    """``{"arch", "state_dict", "meta"}`` at ``filepath``; loads as the file's path."""

    def __init__(self, filepath: str, archive_dir: str | None = None) -> None:
        self._filepath = Path(filepath)
        self._archive = Path(archive_dir) if archive_dir else None

    def _archived(self, config_hash: str) -> Path | None:
        return self._archive / f"{config_hash}.pt" if self._archive else None

    def _archive_current(self, meta: dict[str, Any] | None) -> None:
        """Keep the checkpoint about to be replaced if the archive lacks it (made before
        archiving existed, or its copy deleted)."""
        key = (meta or {}).get("config_hash")
        target = self._archived(str(key)) if key else None
        if target is not None and not target.is_file():
            _copy_atomic(self._filepath, target)

    def save(self, data: PretrainRequest) -> None:
        import mlflow

        from cardiac_pipeline.model.pretrain import (
            config_hash,
            read_checkpoint_meta,
            save_pretrained_checkpoint,
        )
        from cardiac_pipeline.tracking import flatten_params, log_metrics

        wanted = config_hash({"arch": data.arch, **data.config})
        meta = read_checkpoint_meta(self._filepath)
        if meta is not None and meta.get("config_hash") == wanted:
            logger.info("Pretrained backbone %s is up to date; not pretraining", self._filepath)
            return
        self._archive_current(meta)
        archived = self._archived(wanted)
        if (
            archived is not None
            and (read_checkpoint_meta(archived) or {}).get("config_hash") == wanted
        ):
            _copy_atomic(archived, self._filepath)
            logger.info(
                "Pretrained backbone %s: this config was pretrained before; restored from %s",
                self._filepath,
                archived,
            )
            return
        logger.info("Pretraining %s into %s", data.arch, self._filepath)
        model, history = data.run()
        meta = {
            "config_hash": wanted,
            "config": data.config,
            "history": history.to_dict("list"),
            **data.extra_meta,
        }
        save_pretrained_checkpoint(model, data.arch, archived or self._filepath, meta)
        if archived is not None:
            _copy_atomic(archived, self._filepath)
        if mlflow.active_run() is not None:
            mlflow.log_params(flatten_params({"pretrain": data.config}))
            for row in history.to_dict("records"):
                log_metrics({"pretrain.loss": row["loss"]}, step=int(row["epoch"]))
            mlflow.log_artifact(str(self._filepath), artifact_path="pretrained_backbone")
            with tempfile.TemporaryDirectory() as tmp:
                csv = Path(tmp) / "pretrain_history.csv"
                history.to_csv(csv, index=False)
                mlflow.log_artifact(str(csv), artifact_path="pretrained_backbone")

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
