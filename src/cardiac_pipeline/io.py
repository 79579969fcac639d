"""Atomic writes and build locks: the one way every content-keyed store is written.

A store on disk (the clip store, the frame-feature store, the pretrained checkpoints, the
prediction cache) is keyed by what it holds, so two runs that need the same store need
the same bytes, and a run that meets another one building it should wait and reuse it
instead of building it twice or failing.

- Readers never lock. Every file appears whole (``atomic_write``: temp file, rename) and
  each store trusts an entry only once its record is written, so a complete store is read
  while another process builds something else in it.
- Builders hold the store's ``build_lock`` and, once they have it, skip what is already
  there. A builder that finds the lock held logs one line, waits (repeating how long so
  far every ``WAIT_REPORT_S``), then finds the other build's work done and reuses it.
- The lock is ``flock`` on a file: the kernel releases it when its holder dies, so a run
  killed mid-build never blocks the next one. The holder writes who it is into the file
  and clears it on release; the next builder that finds a record left there logs that it
  recovers a stale lock (the store's own resume rule rebuilds the unfinished entries).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
"""Temp files of ``atomic_write`` start with this; a builder deletes leftovers under lock."""

LOCK_FILE = ".build.lock"
"""The usual name of a store's lock file (in the store's folder)."""

WAIT_REPORT_S = 30.0
"""While waiting for another build, log how long so far this often (seconds)."""

POLL_S = 0.5
"""How often a waiting builder tries the lock again (seconds)."""


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _default_file_mode()  # what open() would give; mkstemp makes files owner-only


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any], *, fsync: bool) -> None:
    """Write through ``write(fileobj)`` into a temp file beside ``path``, then rename.

    A reader sees the old file or the whole new one, never half of it. The file gets the
    permissions a plain ``open()`` would give it (others may read a model or a cache, as
    with any file the user writes).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def build_lock(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold the build lock at ``path`` (created with its folder), waiting while another
    process holds it. ``what`` names the store in the log lines (no absolute path).

    Re-check the store after entering: the build waited for may have done the work.
    Without ``fcntl`` (not POSIX) there is no lock: one build at a time is on the caller.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(os.open(path, os.O_RDWR | os.O_CREAT, _FILE_MODE), "r+", encoding="utf-8") as lock:
        _acquire(lock, fcntl, what)
        left = _read_owner(lock)
        if left:
            logger.warning(
                "%s: recovered the lock of a build that stopped without releasing it (%s); "
                "its unfinished entries are rebuilt",
                what,
                left,
            )
        _write_owner(lock, _owner())
        try:
            yield
        finally:
            _write_owner(lock, "")
            fcntl.flock(lock, fcntl.LOCK_UN)


def _acquire(lock: IO[str], fcntl: Any, what: str) -> None:
    """Take the lock, waiting (with log lines) while another process holds it."""
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    holder = _read_owner(lock) or "another process"
    logger.info("%s is being built by %s; waiting for it, then reusing it", what, holder)
    started = time.monotonic()
    report_at = started + WAIT_REPORT_S
    while True:
        time.sleep(POLL_S)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= report_at:
                logger.info("%s: still waiting (%.0f s so far)", what, report_at - started)
                report_at += WAIT_REPORT_S
    logger.info("%s: the other build ended after %.0f s waited", what, time.monotonic() - started)


def _owner() -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"process {os.getpid()} on {socket.gethostname()} since {now}"


def _read_owner(lock: IO[str]) -> str:
    lock.seek(0)
    return lock.read().strip()


def _write_owner(lock: IO[str], owner: str) -> None:
    lock.seek(0)
    lock.truncate()
    lock.write(owner)
    lock.flush()
