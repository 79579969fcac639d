"""The registry builds every pipeline from conf/ without a Kedro warning: every namespace
valid (no path leaves a namespace and comes back), no dotted dataset name outside its own."""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import pytest

from cardiac_pipeline import pipeline_registry


def _open_session(project: Path) -> None:
    """Hand the project's merged parameters to the registry (``ProjectParametersHook``),
    outside the warnings check: reading conf/ is not building (omegaconf warns of its own
    deprecations there)."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    with KedroSession.create(project_path=project) as session:
        session.load_context()


@pytest.mark.parametrize("variant", ["full", "quick", "pretraining"])
def test_every_pipeline_builds_without_a_warning(kedro_project, monkeypatch, variant):
    kedro_project.set_params({"benchmark": {"variant": variant}})
    _open_session(kedro_project.path)  # the run's parameters, as in `kedro run`
    # Kedro warns of dotted dataset names once per process: make this build warn again
    kedro_node = importlib.import_module("kedro.pipeline.node")
    monkeypatch.setattr(
        kedro_node.Node, kedro_node._DOTTED_DATASET_NAME_WARNED, False, raising=False
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipelines = pipeline_registry.register_pipelines()
    assert {"fewshot", "benchmark", "predict", "__default__"} <= set(pipelines)
    for name in ("fewshot", "benchmark"):  # one namespace each, the whole grid inside
        grid = {node.name for node in pipelines[name].nodes if node.namespace}
        assert grid and all(node.startswith(f"{name}.") for node in grid)


def test_one_model_is_one_namespace_of_the_grid(kedro_project):
    _open_session(kedro_project.path)
    fewshot = pipeline_registry.register_pipelines()["fewshot"]
    one = fewshot.only_nodes_with_namespaces(["fewshot.k1_seed0"])
    assert {node.name for node in one.nodes} == {
        "fewshot.k1_seed0.train",
        "fewshot.k1_seed0.evaluate",
    }
    # what it reads from outside its namespace was written before by the shared nodes
    assert one.inputs() >= {"fewshot.k1_seed0.k_shot_split", "frame_features"}
