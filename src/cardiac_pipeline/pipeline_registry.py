"""Project pipelines, built from the project's parameters.

fewshot and benchmark are each one namespace holding one namespace per model (per
(k, seed)), so their shape comes from the parameter grid, and which data steps they
include (synthetic data, pretraining) from ``echonet_root`` and ``backbone``; they take
the parameters from here (``create_pipeline(parameters)``) and import nothing of it. The parameters are those of the run:
``ProjectParametersHook`` hands Kedro's merged parameters (conf/, the ``--config`` run
file, ``--params``) to the registry before the pipelines are built; without a session
(``kedro registry``, tools importing the registry) conf/ is read with the project's
config loader. A node that finds other parameters at run time than its pipeline was
built for fails naming the key (``fewshot.check_grid``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.pipeline import Pipeline

_run_parameters: dict[str, Any] | None = None
_built_from: dict[str, Any] | None = None


def project_parameters() -> dict[str, Any]:
    """The parameters of the current run, or conf/'s (base + the run env) without one."""
    if _run_parameters is not None:
        return _run_parameters
    from kedro.config import OmegaConfigLoader
    from kedro.framework.project import settings

    loader = OmegaConfigLoader(
        conf_source=str(Path.cwd() / settings.CONF_SOURCE),
        env=os.environ.get("KEDRO_ENV"),
        **settings.CONFIG_LOADER_ARGS,
    )
    return dict(loader["parameters"])


class ProjectParametersHook:
    """Gives the registry the run's parameters (runtime ``--params`` included)."""

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        global _run_parameters
        # the raw merged parameters: context.params would build the pipelines first
        _run_parameters = dict(context.config_loader["parameters"])
        if _built_from is not None and _built_from != _run_parameters:
            # pipelines built earlier in this process from other parameters: rebuild
            from kedro.framework.project import pipelines

            pipelines.configure(__name__)


def register_pipelines() -> dict[str, Pipeline]:
    """Every pipeline; the default is ``fewshot``."""
    global _built_from
    from cardiac_pipeline.config import build_config
    from cardiac_pipeline.pipelines import (
        benchmark,
        fewshot,
        ingestion,
        predict,
        preprocessing,
        pretrain,
        synthetic,
    )

    parameters = project_parameters()
    build_config(parameters)  # the grid is read from them: a wrong key is one line, here
    _built_from = parameters
    pipelines = {
        "synthetic": synthetic.create_pipeline(),
        "ingestion": ingestion.create_pipeline(),
        "preprocessing": preprocessing.create_pipeline(),
        "pretrain": pretrain.create_pipeline(),
        "predict": predict.create_pipeline(),
        "fewshot": fewshot.create_pipeline(parameters=parameters),
        "benchmark": benchmark.create_pipeline(parameters=parameters),
    }
    pipelines["__default__"] = pipelines["fewshot"]
    return pipelines
