"""Cores for nodes that run side by side (ParallelRunner processes, ThreadRunner threads)."""

from __future__ import annotations

import multiprocessing
import os
import threading

TORCH_THREADS_ENV = "CARDIAC_PIPELINE_TORCH_THREADS"
"""Torch threads per concurrent model; unset: the machine's cores shared by its workers."""


def share_cores() -> None:
    """Give torch this worker's share of the cores when nodes run concurrently.

    Kedro's ParallelRunner and ThreadRunner start as many workers as there are cores, and
    torch would give each of them every core: N workers x N threads on N cores thrash.
    In a worker (a child process, or a thread other than the main one) torch gets
    ``cores // workers`` threads, at least one; in a plain sequential run nothing changes.
    """
    in_worker = (
        multiprocessing.parent_process() is not None
        or threading.current_thread() is not threading.main_thread()
    )
    wanted = os.environ.get(TORCH_THREADS_ENV)
    if not wanted and not in_worker:
        return
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = os.cpu_count() or 1  # both runners' default max_workers
    threads = int(wanted) if wanted else max(1, (cores or 1) // workers)
    torch.set_num_threads(max(1, threads))
