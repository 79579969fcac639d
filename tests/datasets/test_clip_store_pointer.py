"""``current.json`` goes through the one atomic write: the permissions a plain open() gives."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pandas as pd
import pytest

from cardiac_pipeline.datasets import clip_store
from cardiac_pipeline.datasets.clip_store import ClipStoreDataset, ClipStoreRequest


def test_current_json_is_written_atomically_with_default_permissions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clip_store, "build_clip_store", lambda *args, **kwargs: None)
    dataset = ClipStoreDataset(str(tmp_path / "stores"))
    dataset.save(ClipStoreRequest(index=pd.DataFrame(), echonet_root="data/x"))
    umask = os.umask(0)
    os.umask(umask)
    pointer = tmp_path / "stores" / "current.json"
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    mode = stat.S_IMODE(pointer.stat().st_mode)
    assert mode == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~umask
    assert mode & stat.S_IRGRP or umask & 0o040  # group may read unless the umask says no
    assert json.loads(pointer.read_text())["key"] == dataset.load().root.name
    assert [p.name for p in pointer.parent.iterdir()] == ["current.json"]  # no temp file left
