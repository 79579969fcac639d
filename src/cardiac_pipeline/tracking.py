"""Small MLflow helpers for nodes: log only when a run is active (the hook opens one)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import mlflow

PARENT_RUN_ENV = "CARDIAC_PIPELINE_MLFLOW_PARENT_RUN"
"""The pipeline run's MLflow id, for nodes running where the hook's active run is not
(ParallelRunner's worker processes, ThreadRunner's threads: MLflow's active run is per
thread and per process)."""


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Log finite numeric metrics to the active run, if any (in a runner's worker, where
    no run is active, to the pipeline's run)."""
    clean = {k: float(v) for k, v in metrics.items() if _is_number(v)}
    if not clean:
        return
    if mlflow.active_run() is not None:
        mlflow.log_metrics(clean, step=step)
    elif os.environ.get(PARENT_RUN_ENV):
        _log_to_parent(clean, step)


@contextmanager
def child_run(name: str, tags: dict[str, Any], run_id: str | None = None) -> Iterator[str | None]:
    """A run nested under the pipeline's run (or reopened by ``run_id``); yields its id.

    Without an active parent run (MLflow disabled in conf) nothing is tracked.
    """
    if mlflow.active_run() is None:
        yield None
        return
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else name, nested=True) as run:
        if run_id is None:
            mlflow.set_tags({k: str(v) for k, v in tags.items()})
        yield run.info.run_id


def flatten_params(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested parameter dicts as MLflow's flat ``a.b.c`` keys."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_params(value, f"{name}."))
        else:
            out[name] = str(value)[:500]
    return out


def _is_number(value: Any) -> bool:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return False
    return v == v and v not in (float("inf"), float("-inf"))


# nested runs under any Kedro runner ------------------------------------------------------


def export_parent_run() -> None:
    """Publish the active (pipeline) run to nodes in other threads and worker processes.

    Called by the tracking hook right after it opens the pipeline's run: the run id,
    tracking URI and experiment go to environment variables, which ParallelRunner's
    workers (forked or spawned after the hook ran) inherit.
    """
    run = mlflow.active_run()
    if run is None:
        return
    exported = {
        PARENT_RUN_ENV: run.info.run_id,
        "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
        "MLFLOW_EXPERIMENT_ID": run.info.experiment_id,
    }
    for key, value in exported.items():
        _EXPORTED_BEFORE.setdefault(key, os.environ.get(key))
        os.environ[key] = value


def clear_parent_run() -> None:
    """Forget the published pipeline run (its run has ended); restore what was there."""
    for key, value in _EXPORTED_BEFORE.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _EXPORTED_BEFORE.clear()


_EXPORTED_BEFORE: dict[str, str | None] = {}


@contextmanager
def model_run(name: str, tags: dict[str, Any], run_id: str | None = None) -> Iterator[str | None]:
    """One model's MLflow run, nested under the pipeline's run under any runner; yields its id.

    In the hook's thread and process this is ``child_run``. Elsewhere (a ParallelRunner
    worker, a ThreadRunner thread) there is no active run, so the parent comes from
    ``PARENT_RUN_ENV``; ``run_id`` reopens a model's run (evaluation after training).
    Without a pipeline run (MLflow disabled) nothing is tracked and ``None`` is yielded.
    """
    parent = os.environ.get(PARENT_RUN_ENV)
    if mlflow.active_run() is not None or not parent:
        with child_run(name, tags, run_id=run_id) as child:
            yield child
        return
    if run_id is not None:
        with mlflow.start_run(run_id=run_id) as run:
            yield run.info.run_id
        return
    with mlflow.start_run(
        run_name=name,
        parent_run_id=parent,
        experiment_id=os.environ.get("MLFLOW_EXPERIMENT_ID"),
        tags={k: str(v) for k, v in tags.items()},
    ) as run:
        yield run.info.run_id


def _log_to_parent(metrics: dict[str, float], step: int | None) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    mlflow.MlflowClient().log_batch(
        os.environ[PARENT_RUN_ENV],
        metrics=[Metric(key, value, now, step or 0) for key, value in metrics.items()],
    )
