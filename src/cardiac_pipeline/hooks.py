"""MLflow tracking for every Kedro run.

One parent MLflow run per ``kedro run`` (named after the pipeline); nodes that train or
evaluate models open nested runs under it (one per (k, seed) or (method, k, seed)).
Where runs go is configured in ``conf/<env>/mlflow.yml``; the ``MLFLOW_TRACKING_URI``
environment variable, when set, wins (that is how CI and tests isolate their stores).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl

from cardiac_pipeline.tracking import clear_parent_run, export_parent_run, flatten_params

logger = logging.getLogger(__name__)

DEFAULT_MLFLOW_CONFIG = {
    "tracking_uri": "sqlite:///mlruns/mlflow.db",
    "artifact_location": "mlruns/artifacts",
    "experiment_name": "cardiac-pipeline",
    "enabled": True,
}


def resolve_tracking_uri(uri: str, project_path: Path) -> str:
    """Make a relative sqlite/file store path absolute against the project folder."""
    for scheme in ("sqlite:///", "file:"):
        if uri.startswith(scheme):
            rest = uri[len(scheme) :]
            if rest and not rest.startswith("/"):
                return scheme + str((project_path / rest).resolve())
    if "://" not in uri and not uri.startswith("/"):
        return str((project_path / uri).resolve())
    return uri


def setup_mlflow(config: dict[str, Any], project_path: Path) -> str | None:
    """Point MLflow at the configured store and experiment; return the experiment id."""
    if not config.get("enabled", True):
        return None
    uri = os.environ.get("MLFLOW_TRACKING_URI") or resolve_tracking_uri(
        config["tracking_uri"], project_path
    )
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    name = config["experiment_name"]
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        artifact_location = config.get("artifact_location")
        if artifact_location and "://" not in artifact_location:
            artifact_location = (project_path / artifact_location).resolve().as_uri()
        experiment_id = mlflow.create_experiment(name, artifact_location=artifact_location)
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


class MlflowTrackingHook:
    """Opens a parent MLflow run around each pipeline run and closes it with its status."""

    def __init__(self) -> None:
        self._config: dict[str, Any] = dict(DEFAULT_MLFLOW_CONFIG)
        self._project_path = Path.cwd()
        self._started = False

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        try:
            user_config = context.config_loader["mlflow"] or {}
        except Exception:  # no mlflow.yml in this env
            user_config = {}
        self._config = {**DEFAULT_MLFLOW_CONFIG, **user_config}
        self._project_path = Path(context.project_path)

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        if setup_mlflow(self._config, self._project_path) is None:
            return
        while mlflow.active_run() is not None:  # a stale run from an earlier in-process call
            mlflow.end_run()
        name = "+".join(run_params.get("pipeline_names") or ["__default__"])
        mlflow.start_run(run_name=name)
        export_parent_run()  # nodes in worker processes and threads nest under this run
        self._started = True
        mlflow.set_tags(
            {
                "kedro.pipeline": name,
                "kedro.run_id": str(run_params.get("run_id") or run_params.get("session_id")),
                "kedro.env": str(run_params.get("env") or "local"),
            }
        )
        extra = run_params.get("runtime_params") or run_params.get("extra_params") or {}
        if extra:
            mlflow.log_params(flatten_params(extra, "runtime."))
        logger.info("MLflow run %s started at %s", name, mlflow.get_tracking_uri())

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any]) -> None:
        self._end("FINISHED")

    @hook_impl
    def on_pipeline_error(self, error: Exception, run_params: dict[str, Any]) -> None:
        self._end("FAILED")

    def _end(self, status: str) -> None:
        if self._started:
            while mlflow.active_run() is not None:
                mlflow.end_run(status=status)
            clear_parent_run()
            self._started = False
