"""Build locks between processes: a complete store is read, a build in progress is waited
for and reused, the lock of a killed builder is recovered; atomic writes leave no half file."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cardiac_pipeline import io
from cardiac_pipeline.io import LOCK_FILE, atomic_write, build_lock
from tests.processes import another_process_holding, wait_until

pytest.importorskip("fcntl")


def build_toy_store(root: Path) -> str:
    """A store of one file, kept as every real store is: read when complete, else built
    under its lock, re-checked after the lock is taken."""
    value = root / "value.txt"
    if value.is_file():
        return "read"
    with build_lock(root / LOCK_FILE, "toy store"):
        if value.is_file():
            return "reused"
        atomic_write(value, lambda f: f.write(b"mine"), fsync=False)
        return "built"


def test_build_in_progress_is_waited_for_with_a_log_line_then_reused(tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="cardiac_pipeline.io")
    monkeypatch.setattr(io, "POLL_S", 0.02)
    monkeypatch.setattr(io, "WAIT_REPORT_S", 0.1)
    with (
        another_process_holding(tmp_path / LOCK_FILE) as (process, release),
        ThreadPoolExecutor(1) as pool,
    ):
        waiter = pool.submit(build_toy_store, tmp_path)
        wait_until(lambda: "still waiting" in caplog.text, "a line saying how long so far")
        assert not waiter.done()
        atomic_write(tmp_path / "value.txt", lambda f: f.write(b"theirs"), fsync=False)
        release.set()  # the other build ends, its value written
        assert waiter.result(timeout=120) == "reused"
    assert (tmp_path / "value.txt").read_bytes() == b"theirs"
    assert process.exitcode == 0
    first = caplog.records[0].getMessage()
    assert "toy store is being built by process" in first and "waiting for it" in first
    assert "recovered" not in caplog.text


def test_complete_store_is_read_while_another_process_holds_its_lock(tmp_path):
    assert build_toy_store(tmp_path) == "built"
    with another_process_holding(tmp_path / LOCK_FILE), ThreadPoolExecutor(1) as pool:
        assert pool.submit(build_toy_store, tmp_path).result(timeout=120) == "read"


def test_lock_of_a_killed_builder_is_recovered_with_a_log_line(tmp_path, caplog):
    with another_process_holding(tmp_path / LOCK_FILE) as (process, _):
        process.kill()  # dies holding the lock: no release, its record stays in the file
        process.join(120)
    assert "process" in (tmp_path / LOCK_FILE).read_text()
    caplog.set_level(logging.INFO, logger="cardiac_pipeline.io")
    assert build_toy_store(tmp_path) == "built"
    assert "toy store: recovered the lock of a build that stopped" in caplog.text
    assert (tmp_path / LOCK_FILE).read_text() == ""  # released cleanly this time
    caplog.clear()
    (tmp_path / "value.txt").unlink()
    assert build_toy_store(tmp_path) == "built"
    assert "recovered" not in caplog.text


def test_failed_atomic_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "model.bin"
    atomic_write(target, lambda f: f.write(b"old"), fsync=True)

    def fail_halfway(handle):
        handle.write(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail_halfway, fsync=False)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]
