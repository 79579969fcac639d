"""MLflow helpers for nodes: nested runs that survive a crash, and logging without paths.

The hook (``hooks.py``) opens one parent run per ``kedro run`` and publishes it, with the
tracking store and the path policy, in the ``CARDIAC_MLFLOW_CONTEXT`` environment variable,
so that node code in a runner's worker process or thread (where MLflow has no active run)
nests under the same parent. Every helper here does nothing when no parent run exists
(MLflow disabled in conf, or a node called outside Kedro).

- ``model_run(work_dir, name, tags)``: the nested run of one trained model. Its id is kept
  in ``work_dir/mlflow_run.json`` beside ``last.pt``; a training run resumed from that
  folder after a crash continues the same MLflow run, so its metric history stays whole.
- ``child_run(name, tags, run_id=None)``: a nested run without a work folder (or reopened).
- Every run carries ``cardiac.host`` and ``cardiac.pid``; ``mark_stale_runs`` marks KILLED
  the RUNNING runs of this machine whose process is gone (the hook calls it at start).
- ``flatten_params`` / ``loggable``: parameter and tag values with file-system paths
  rewritten by the ``log_paths`` policy of ``mlflow.yml`` (see ``loggable``);
  ``loggable_names`` / ``with_loggable_names``: the file names of per-video tables and
  reports that go to MLflow (under ``hash`` their files' fingerprints; the local files
  keep the names).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cardiac_pipeline.io import atomic_write

logger = logging.getLogger(__name__)

CONTEXT_ENV = "CARDIAC_MLFLOW_CONTEXT"
RUN_RECORD_NAME = "mlflow_run.json"  # in a model's work folder, beside last.pt
LOG_PATHS_CHOICES = ("hash", "basename", "full")
HOST_TAG, PID_TAG, PID_START_TAG = "cardiac.host", "cardiac.pid", "cardiac.pid_start"
PARENT_TAG = "mlflow.parentRunId"
_PATH_PREFIXES = ("local-dir:", "file://", "file:")
_FINISHED = RunStatus.to_string(RunStatus.FINISHED)

# Path policy of this process (set by the hook; worker processes read CONTEXT_ENV).
_policy: dict[str, str] = {"log_paths": "hash", "project_path": ""}


# --------------------------------------------------------------------------- context


def publish_context(tracking_uri: str, experiment_id: str, parent_run_id: str) -> None:
    """Make the parent run findable from node code in other threads and processes."""
    os.environ[CONTEXT_ENV] = json.dumps(
        {
            "tracking_uri": tracking_uri,
            "experiment_id": experiment_id,
            "parent_run_id": parent_run_id,
            **_policy,
        }
    )


def clear_context() -> None:
    """Forget the published parent run (at the end of a pipeline run)."""
    os.environ.pop(CONTEXT_ENV, None)


def configure(project_path: str | Path, log_paths: str = "hash") -> None:
    """Set how paths are logged: relative to ``project_path``, else by ``log_paths``."""
    if log_paths not in LOG_PATHS_CHOICES:
        raise ValueError(f"log_paths {log_paths!r}: not one of {list(LOG_PATHS_CHOICES)}")
    _policy.update(log_paths=log_paths, project_path=str(Path(project_path).resolve()))


def _context() -> dict[str, str]:
    try:
        return json.loads(os.environ.get(CONTEXT_ENV) or "{}")
    except json.JSONDecodeError:
        return {}


def _parent_run_id() -> str | None:
    """The run that nested runs go under: this thread's active run, else the published one.

    In a worker (no active run here) the published tracking store is selected as well.
    """
    active = mlflow.active_run()
    if active is not None:
        return active.info.run_id
    context = _context()
    if not context.get("parent_run_id"):
        return None
    if mlflow.get_tracking_uri() != context["tracking_uri"]:
        mlflow.set_tracking_uri(context["tracking_uri"])
    for key in ("log_paths", "project_path"):
        if context.get(key):
            _policy[key] = context[key]
    return context["parent_run_id"]


# --------------------------------------------------------------------------- nested runs


def process_tags() -> dict[str, str]:
    """Who is running: host, pid and the process's start time (tells a reused pid apart)."""
    tags = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
    start = _process_start(os.getpid())
    if start:
        tags[PID_START_TAG] = start
    return tags


def source_tags() -> dict[str, str]:
    """MLflow's source tag: the script relative to the project (``.venv/bin/kedro``); one
    outside it as ``log_paths`` says (``path:3fa2c1d0`` under ``hash``), never absolute."""
    script = sys.argv[0] if sys.argv and sys.argv[0] else ""
    return {"mlflow.source.name": loggable(str(Path(script).resolve())) if script else ""}


@contextmanager
def child_run(name: str, tags: dict[str, Any], run_id: str | None = None) -> Iterator[str | None]:
    """A run nested under the pipeline's run (or reopened by ``run_id``); yields its id.

    Without a parent run (MLflow disabled in conf) nothing is tracked and None is yielded.
    """
    parent = _parent_run_id()
    if parent is None:
        yield None
        return
    if run_id is not None:
        with _start(run_id=run_id, parent=parent, tags=process_tags()) as run:
            yield run.info.run_id
        return
    with _start(name=name, parent=parent, tags={**_str_tags(tags), **process_tags()}) as run:
        yield run.info.run_id


@contextmanager
def model_run(
    work_dir: str | Path, name: str, tags: Mapping[str, Any] | None = None
) -> Iterator[str | None]:
    """The nested run of the model trained in ``work_dir``: resumed after a crash, else new.

    The run recorded in ``work_dir/mlflow_run.json`` is continued (and moved under the
    current parent run) when it did not finish, or when the pipeline run it belonged to did
    not finish (killed during evaluation); otherwise a new nested run is started and
    recorded. Yields the run id, or None without a parent run. Call it with the same work
    folder that training uses, e.g. ``recipe.work_folder(...)``.
    """
    parent = _parent_run_id()
    if parent is None:
        yield None
        return
    record = Path(work_dir) / RUN_RECORD_NAME
    previous = _resumable_run(record, parent)
    if previous is not None:
        old_parent = previous.data.tags.get(PARENT_TAG)
        extra = {"cardiac.resumed_from_parent": old_parent} if old_parent != parent else {}
        logger.info("MLflow: continuing run %s of %s", previous.info.run_id, name)
        with _start(run_id=previous.info.run_id, parent=parent, tags={**process_tags(), **extra}):
            yield previous.info.run_id
        return
    with _start(name=name, parent=parent, tags={**_str_tags(tags or {}), **process_tags()}) as run:
        record.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"run_id": run.info.run_id, "experiment_id": run.info.experiment_id})
        atomic_write(record, lambda handle: handle.write(text.encode()), fsync=True)
        yield run.info.run_id


def log_params(params: Mapping[str, Any], prefix: str = "") -> None:
    """Log nested parameters to the active run; on a resumed run only the ones not yet logged.

    MLflow refuses to change a logged parameter; a resumed run may differ only in settings
    that do not change its numbers (device, workers), which keep their first value.
    """
    run = mlflow.active_run()
    if run is None:
        return
    flat = flatten_params(dict(params), prefix)
    logged = MlflowClient().get_run(run.info.run_id).data.params
    changed = sorted(k for k, v in flat.items() if k in logged and logged[k] != v)
    if changed:
        logger.info("MLflow run %s keeps its first %s", run.info.run_id, ", ".join(changed))
    new = {k: v for k, v in flat.items() if k not in logged}
    if new:
        mlflow.log_params(new)


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Log finite numeric metrics to the active run, if any; in a runner's worker (thread
    or process, where no run is active) to the pipeline's published run."""
    clean = {k: float(v) for k, v in metrics.items() if _is_number(v)}
    if not clean:
        return
    if mlflow.active_run() is not None:
        mlflow.log_metrics(clean, step=step)
        return
    parent = _parent_run_id()
    if parent is not None:
        now = int(time.time() * 1000)
        MlflowClient().log_batch(
            parent, metrics=[Metric(k, v, now, step or 0) for k, v in clean.items()]
        )


def log_history(history: Any, step_key: str = "epoch") -> int:
    """Log the epochs of a training history that the active run lacks; returns how many.

    ``history``: a table (``TrainResult.history``) or a sequence of rows with ``step_key``.
    Fills the gap when a new nested run reuses a model already trained in its work folder
    (training returns at once and reports no epochs). Epochs already logged stay as they are.
    """
    rows: Sequence[Mapping[str, Any]] = (
        history.to_dict("records") if hasattr(history, "to_dict") else list(history)
    )
    run = mlflow.active_run()
    if run is None or not rows:
        return 0
    probe = next((k for k in rows[0] if k != step_key and _is_number(rows[0][k])), None)
    if probe is None:
        return 0
    have = {m.step for m in MlflowClient().get_metric_history(run.info.run_id, probe)}
    missing = [row for row in rows if int(row[step_key]) not in have]
    for row in missing:
        log_metrics(dict(row), step=int(row[step_key]))
    return len(missing)


def mark_stale_runs(experiment_id: str, client: MlflowClient | None = None) -> list[str]:
    """Mark KILLED the RUNNING runs of this machine whose process is gone; their ids.

    A SIGKILL or a power cut leaves MLflow runs RUNNING forever. Only runs tagged with this
    host's name are touched, and only when their pid is not alive (or is alive but was
    started at another time: a reused pid).
    """
    client = client or MlflowClient()
    host = socket.gethostname().replace("'", "")
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'",
        max_results=1000,
    )
    marked = []
    for run in runs:
        pid = run.data.tags.get(PID_TAG, "")
        if not pid.isdigit() or _process_alive(int(pid), run.data.tags.get(PID_START_TAG)):
            continue
        client.set_tag(run.info.run_id, "cardiac.ended", "process gone; marked at a later start")
        client.set_terminated(run.info.run_id, status="KILLED")
        marked.append(run.info.run_id)
    if marked:
        logger.warning(
            "MLflow: %d run(s) left RUNNING by a process that is gone marked KILLED", len(marked)
        )
    return marked


def _start(
    *, parent: str, tags: dict[str, str], name: str | None = None, run_id: str | None = None
) -> Any:
    """``mlflow.start_run`` nested under ``parent`` from this thread or another process."""
    nested = mlflow.active_run() is not None
    tags = {**tags, **source_tags()}
    if run_id is not None:
        run = mlflow.start_run(run_id=run_id, nested=nested, tags={**tags, PARENT_TAG: parent})
    else:
        run = mlflow.start_run(
            run_name=name,
            nested=nested,
            parent_run_id=None if nested else parent,
            experiment_id=None if nested else _context().get("experiment_id"),
            tags=tags,
        )
    scrub_run_tags(run.info.run_id)
    return run


def scrub_run_tags(run_id: str) -> None:
    """Rewrite tags MLflow filled in by itself (source, git) that hold a file-system path."""
    client = MlflowClient()
    for key, value in client.get_run(run_id).data.tags.items():
        clean = loggable(value)
        if clean != value:
            client.set_tag(run_id, key, clean)


def _resumable_run(record: Path, parent: str) -> Any:
    """The run recorded in ``record`` if it should be continued, else None."""
    if not record.is_file():
        return None
    try:
        run_id = json.loads(record.read_text())["run_id"]
        client = MlflowClient()
        run = client.get_run(run_id)
    except (OSError, ValueError, KeyError, TypeError, MlflowException) as error:
        logger.info("%s: not continuing its MLflow run (%s); starting a new one", record, error)
        return None
    if run.info.lifecycle_stage != "active":
        return None
    if _context().get("experiment_id") not in (None, run.info.experiment_id):
        return None
    if run.info.status != _FINISHED:
        return run
    old_parent = run.data.tags.get(PARENT_TAG)
    if not old_parent:
        return None
    try:
        old = client.get_run(old_parent)
    except MlflowException:
        return None
    if old.info.status == _FINISHED or old_parent == parent or _runs_elsewhere(old.data.tags):
        return None
    return run  # its pipeline run was killed after it: continue it under this one


def _runs_elsewhere(tags: Mapping[str, str]) -> bool:
    """The run's process is alive (another run that met this one): not to be continued."""
    pid = tags.get(PID_TAG, "")
    if tags.get(HOST_TAG) != socket.gethostname() or not pid.isdigit():
        return False
    return int(pid) != os.getpid() and _process_alive(int(pid), tags.get(PID_START_TAG))


# --------------------------------------------------------------------------- paths


def flatten_params(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested parameter dicts as MLflow's flat ``a.b.c`` keys, paths made loggable."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_params(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[name] = str([loggable(v) if isinstance(v, str) else v for v in value])[:500]
        else:
            out[name] = (loggable(value) if isinstance(value, str) else str(value))[:500]
    return out


def loggable(value: str) -> str:
    """``value`` as it may go to MLflow: file-system paths rewritten, other text kept.

    A path inside the project becomes relative to it (``data/01_raw/echonet``). A path
    outside it, by ``log_paths`` in ``mlflow.yml``: ``hash`` (default) a short fingerprint
    of what it holds (``path:3fa2c1d0``), ``basename`` the last name plus that fingerprint
    (``echonet:3fa2c1d0``), ``full`` the path as given. ``local-dir:`` and ``file:`` prefixes
    are kept. Relative paths count from the project folder.
    """
    for prefix in _PATH_PREFIXES:
        if value.startswith(prefix) and len(value) > len(prefix):
            return prefix + loggable(value[len(prefix) :])
    if not _looks_like_path(value):
        return value
    policy = _policy
    if policy["log_paths"] == "full":
        return value
    root = Path(policy["project_path"] or Path.cwd())
    path = Path(os.path.expanduser(value))
    path = path if path.is_absolute() else root / path
    path = Path(os.path.normpath(path))
    try:
        return path.relative_to(root).as_posix() or "."
    except ValueError:
        pass
    token = fingerprint(str(path))
    return f"{path.name}:{token}" if policy["log_paths"] == "basename" else f"path:{token}"


def loggable_names(paths: Mapping[str, str | Path]) -> dict[str, str]:
    """``{name: path}`` of per-video files -> the name each may have in MLflow: under
    ``log_paths: hash`` the fingerprint its path gets, with the name's suffix
    (``3fa2c1d0.avi``); under ``basename`` and ``full`` the name itself."""
    if _policy["log_paths"] != "hash":
        return {name: name for name in paths}
    return {
        name: fingerprint(os.path.abspath(path)) + Path(name).suffix for name, path in paths.items()
    }


def with_loggable_names(table: Any, column: str, names: Mapping[str, str]) -> Any:
    """A copy of ``table`` whose ``column`` holds ``names[value]``, and each text column
    (an error message) the same names in place of the originals."""
    out = table.copy()
    out[column] = [names.get(value, value) for value in out[column]]
    renamed = sorted((k for k, v in names.items() if k != v), key=len, reverse=True)
    for other in out.columns.drop(column) if renamed else ():
        if any(isinstance(value, str) for value in out[other]):
            out[other] = [_replace_names(value, renamed, names) for value in out[other]]
    return out


def _replace_names(value: Any, renamed: Sequence[str], names: Mapping[str, str]) -> Any:
    if not isinstance(value, str):
        return value
    for name in renamed:  # longest first: "a.avi" inside "aa.avi" is not replaced first
        value = value.replace(name, names[name])
    return value


@lru_cache(maxsize=4096)
def fingerprint(path: str) -> str:
    """8 hex digits from what ``path`` holds: a folder's file names and sizes, a file's size
    and first and last MiB, else the path's text. The same data gives the same value on any
    machine; the value cannot be read back into a name.
    """
    digest = hashlib.sha1()
    target = Path(path)
    if target.is_dir():
        for root, dirs, files in os.walk(target):
            dirs.sort()
            for name in sorted(files):
                file = Path(root) / name
                try:
                    size = file.stat().st_size
                except OSError:
                    continue
                digest.update(f"{file.relative_to(target).as_posix()}\0{size}\n".encode())
    elif target.is_file():
        size = target.stat().st_size
        digest.update(str(size).encode())
        with open(target, "rb") as handle:
            digest.update(handle.read(1 << 20))
            if size > 2 << 20:
                handle.seek(-(1 << 20), os.SEEK_END)
                digest.update(handle.read())
    else:
        digest.update(path.encode())
    return digest.hexdigest()[:8]


def _looks_like_path(value: str) -> bool:
    """Absolute (``/x``, ``~/x``, ``C:\\x``) or relative with a parent step (``../x``)."""
    if "://" in value or value.startswith(("runs:/", "models:/", "mlflow-artifacts:/")):
        return False
    if value.startswith(("/", "~")) or (len(value) > 2 and value[1] == ":" and value[2] in "\\/"):
        return True
    return value.startswith("..") or "/../" in value


# --------------------------------------------------------------------------- processes


def _process_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (Linux), None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _process_alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not started or _process_start(pid) in (None, started)


def _str_tags(tags: Mapping[str, Any]) -> dict[str, str]:
    return {k: loggable(str(v)) for k, v in tags.items()}


def _is_number(value: Any) -> bool:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return False
    return v == v and v not in (float("inf"), float("-inf"))
