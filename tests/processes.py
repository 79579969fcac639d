"""Another process holding a store's build lock: what the lock tests meet."""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from cardiac_pipeline.io import build_lock

SPAWN = multiprocessing.get_context("spawn")  # a real second process, no forked state


def hold_build_lock(path: Path, held, release) -> None:
    """Take the lock at ``path``, say so, keep it until ``release`` is set."""
    with build_lock(path, "store"):
        held.set()
        release.wait(120)


@contextlib.contextmanager
def another_process_holding(path: Path) -> Iterator[tuple]:
    """A spawned process holding the build lock at ``path``; yields (process, release)."""
    held, release = SPAWN.Event(), SPAWN.Event()
    process = SPAWN.Process(target=hold_build_lock, args=(path, held, release))
    process.start()
    try:
        assert held.wait(120), "the other process never took the lock"
        yield process, release
    finally:
        if process.exitcode is None:  # a killed one may have died inside the Event's lock
            release.set()
        process.join(120)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` (the other process's progress); fail after two minutes."""
    deadline = time.monotonic() + 120
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)
