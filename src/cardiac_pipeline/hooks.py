"""MLflow tracking for every Kedro run, and the run's last screen (``EndOfRunHook``).

One parent MLflow run per ``kedro run`` (named after the pipeline); nodes that train or
evaluate models open nested runs under it (one per (k, seed) or (method, k, seed)) with
``tracking.model_run`` / ``tracking.child_run``, also from a runner's worker processes.
Where runs go is configured in ``conf/<env>/mlflow.yml``; the ``MLFLOW_TRACKING_URI``
environment variable, when set, wins (that is how CI and tests isolate their stores).
A missing ``mlflow.yml`` means the defaults below; a malformed one stops the run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import click
import mlflow
from kedro.config import MissingConfigException
from kedro.framework.hooks import hook_impl
from mlflow.tracking import MlflowClient

from cardiac_pipeline import tracking
from cardiac_pipeline.params import check_keys
from cardiac_pipeline.reporting.terminal import predictions_screen, summary_screen

logger = logging.getLogger(__name__)

DEFAULT_MLFLOW_CONFIG: dict[str, Any] = {
    "tracking_uri": "sqlite:///mlruns/mlflow.db",
    "artifact_location": "mlruns/artifacts",
    "experiment_name": "cardiac-pipeline",
    "enabled": True,
    "log_paths": "hash",
}
# The MLflow UI (3.x) opens an experiment on the page of its kind; without this tag it
# guesses GenAI and shows an empty traces page instead of the training runs. MLflow 3.17's
# UI lets its own GenAI / Model training switch (remembered by the browser) decide instead;
# ``?workflowType=machine_learning`` in the page address selects it (see ``ui_hint``).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


class MlflowConfigError(ValueError):
    """``mlflow.yml`` cannot be used as written (the message names the file and the fix)."""


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


def check_mlflow_config(config: Any, where: str) -> dict[str, Any]:
    """``config`` over the defaults, or ``MlflowConfigError`` naming ``where`` and the key."""
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise MlflowConfigError(
            f"{where}: expected a mapping of {sorted(DEFAULT_MLFLOW_CONFIG)}, "
            f"got {type(config).__name__}; fix the file or delete it to use the defaults"
        )
    try:
        check_keys("mlflow", config, DEFAULT_MLFLOW_CONFIG)
    except ValueError as error:
        raise MlflowConfigError(f"{where}: {error}") from None
    merged = {**DEFAULT_MLFLOW_CONFIG, **config}
    if not isinstance(merged["enabled"], bool):
        raise MlflowConfigError(
            f"{where}: enabled must be true or false, not {merged['enabled']!r}"
        )
    for key in ("tracking_uri", "experiment_name"):
        if not isinstance(merged[key], str) or not merged[key]:
            raise MlflowConfigError(f"{where}: {key} must be a non-empty string")
    if merged["log_paths"] not in tracking.LOG_PATHS_CHOICES:
        raise MlflowConfigError(
            f"{where}: log_paths {merged['log_paths']!r} is not one of "
            f"{', '.join(tracking.LOG_PATHS_CHOICES)}"
        )
    return merged


def tracking_uri(config: dict[str, Any], project_path: Path) -> str:
    """The store runs go to: ``MLFLOW_TRACKING_URI`` when set, else ``mlflow.yml``'s."""
    return os.environ.get("MLFLOW_TRACKING_URI") or resolve_tracking_uri(
        config["tracking_uri"], project_path
    )


def setup_mlflow(config: dict[str, Any], project_path: Path) -> str | None:
    """Point MLflow at the configured store and experiment; return the experiment id.

    The experiment is marked as model training (new or existing), and runs of this
    machine left RUNNING by a process that is gone are marked KILLED.
    """
    if not config.get("enabled", True):
        return None
    uri = tracking_uri(config, project_path)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    name = config["experiment_name"]
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        artifact_location = config.get("artifact_location")
        if artifact_location and "://" not in artifact_location:
            # a folder of this machine, for a local store only: a server keeps its own
            local = not uri.startswith(("http://", "https://", "databricks"))
            artifact_location = (
                (project_path / artifact_location).resolve().as_uri() if local else None
            )
        experiment_id = client.create_experiment(
            name,
            artifact_location=artifact_location,
            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
        )
    else:
        experiment_id = experiment.experiment_id
        if EXPERIMENT_KIND_TAG not in experiment.tags:  # kept when the user chose another
            client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    mlflow.set_experiment(experiment_id=experiment_id)
    tracking.mark_stale_runs(experiment_id, client)
    return experiment_id


def ui_hint(tracking_uri: str, experiment_id: str) -> str:
    """Where to see the runs (MLflow's UI starts on GenAI unless told "Model training")."""
    page = f"#/experiments/{experiment_id}?workflowType=machine_learning"
    if tracking_uri.startswith(("http://", "https://")):
        return f"see {tracking_uri.rstrip('/')}/{page}"
    if tracking_uri.startswith("sqlite:///"):
        tracking_uri = "sqlite:///" + tracking.loggable(tracking_uri[len("sqlite:///") :])
    return f"see `mlflow ui --backend-store-uri {tracking_uri}`, page {page}"


class MlflowTrackingHook:
    """Opens a parent MLflow run around each pipeline run and closes it with its status."""

    def __init__(self) -> None:
        self._config: dict[str, Any] = dict(DEFAULT_MLFLOW_CONFIG)
        self._project_path = Path.cwd()
        self._started = False

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        self._project_path = Path(context.project_path)
        where = _mlflow_files(context)
        try:
            user_config = context.config_loader["mlflow"]
        except MissingConfigException:  # no mlflow.yml in this env: the defaults
            user_config = {}
        except Exception as error:  # unreadable YAML, a list instead of a mapping, ...
            detail = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise MlflowConfigError(f"{where}: cannot be read ({detail}); fix the YAML") from None
        self._config = check_mlflow_config(
            dict(user_config) if hasattr(user_config, "keys") else user_config, where
        )
        tracking.configure(self._project_path, self._config["log_paths"])
        if self._config["enabled"]:  # where checks before the run look up models
            mlflow.set_tracking_uri(tracking_uri(self._config, self._project_path))

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        experiment_id = setup_mlflow(self._config, self._project_path)
        if experiment_id is None:
            return
        while mlflow.active_run() is not None:  # a stale run from an earlier in-process call
            mlflow.end_run()
        name = "+".join(run_params.get("pipeline_names") or ["__default__"])
        run = mlflow.start_run(
            run_name=name, tags={**tracking.process_tags(), **tracking.source_tags()}
        )
        self._started = True
        tracking.scrub_run_tags(run.info.run_id)
        mlflow.set_tags(
            {
                "kedro.pipeline": name,
                "kedro.run_id": str(run_params.get("run_id") or run_params.get("session_id")),
                "kedro.env": str(run_params.get("env") or "local"),
            }
        )
        extra = run_params.get("runtime_params") or run_params.get("extra_params") or {}
        if extra:
            mlflow.log_params(tracking.flatten_params(extra, "runtime."))
        tracking.publish_context(mlflow.get_tracking_uri(), experiment_id, run.info.run_id)
        logger.info(
            "MLflow run %s started; %s", name, ui_hint(mlflow.get_tracking_uri(), experiment_id)
        )

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any]) -> None:
        self._end("FINISHED")

    @hook_impl
    def on_pipeline_error(self, error: Exception, run_params: dict[str, Any]) -> None:
        self._end("FAILED")

    def _end(self, status: str) -> None:
        tracking.clear_context()
        if self._started:
            while mlflow.active_run() is not None:
                mlflow.end_run(status=status)
            self._started = False


def _mlflow_files(context: Any) -> str:
    """The mlflow.yml files of this run's config, as the user would name them."""
    loader = context.config_loader
    source = Path(getattr(loader, "conf_source", "conf"))
    envs = [getattr(loader, "base_env", "base"), getattr(loader, "env", None) or "local"]
    found = [
        path
        for env in dict.fromkeys(e for e in envs if e)
        for path in sorted((source / env).glob("mlflow*"))
        if path.is_file()
    ]
    names = [_relative(path, Path(context.project_path)) for path in found]
    return (
        " / ".join(names)
        if names
        else f"{_relative(source, Path(context.project_path))}/*/mlflow.yml"
    )


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- last screen


def _summary(title: str, full_table: str) -> Any:
    def screen(catalog: Any, name: str, params: dict[str, Any]) -> str:
        return summary_screen(
            catalog.load(name),
            title,
            saved_path(catalog, full_table),
            ci_level=float(params["evaluation"]["ci_level"]),
        )

    return screen


def _predictions(catalog: Any, name: str, params: dict[str, Any]) -> str:
    return predictions_screen(
        catalog.load(name),
        len(catalog.load("prediction_failures")),
        saved_path(catalog, name),
        report=saved_path(catalog, "predict_report"),
    )


# the datasets a run ends with (top-level names: a namespaced fewshot.k1_seed0.predictions
# is not the predict pipeline's) and how each is shown
END_SCREENS: dict[str, Any] = {
    "fewshot_summary": _summary("Few-shot summary (TEST set)", "fewshot_summary_table"),
    "benchmark_summary": _summary("Benchmark (TEST set)", "benchmark_summary_table"),
    "predictions": _predictions,
}


def saved_path(catalog: Any, name: str) -> str:
    """Where ``name`` was saved (its newest version), relative to the working folder."""
    try:
        path = Path(str(catalog[name]._get_load_path()))  # Kedro's versioned path
    except Exception:  # not a file dataset: say its name
        return name
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


class EndOfRunHook:
    """Ends a run with its result table, printed whole to the terminal after the last log
    line (a log record would be wrapped by the handler's columns); the full table's path
    below it."""

    def __init__(self) -> None:
        self._params: dict[str, Any] = {}

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        self._params = context.params

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        outputs = pipeline.all_outputs()
        for name, screen in END_SCREENS.items():
            if name in outputs:
                click.echo("\n" + screen(catalog, name, self._params))
