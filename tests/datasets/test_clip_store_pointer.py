"""``current.json`` goes through the one atomic write: the permissions a plain open() gives."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from cardiac_pipeline.datasets.clip_store import ClipStoreDataset
from cardiac_pipeline.echo.clipstore import ClipStore


def test_current_json_is_written_atomically_with_default_permissions(tmp_path: Path) -> None:
    store = tmp_path / "stores" / "abc123"
    store.mkdir(parents=True)
    dataset = ClipStoreDataset(str(tmp_path / "stores"))
    dataset.save(ClipStore(store))
    umask = os.umask(0)
    os.umask(umask)
    pointer = tmp_path / "stores" / "current.json"
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    mode = stat.S_IMODE(pointer.stat().st_mode)
    assert mode == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~umask
    assert mode & stat.S_IRGRP or umask & 0o040  # group may read unless the umask says no
    assert json.loads(pointer.read_text())["key"] == "abc123"
    # no temp file left beside the pointer
    assert sorted(p.name for p in pointer.parent.iterdir()) == ["abc123", "current.json"]
