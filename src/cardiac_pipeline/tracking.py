"""Small MLflow helpers for nodes: log only when a run is active (the hook opens one)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import mlflow


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Log finite numeric metrics to the active run, if any."""
    if mlflow.active_run() is None:
        return
    clean = {k: float(v) for k, v in metrics.items() if _is_number(v)}
    if clean:
        mlflow.log_metrics(clean, step=step)


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
