"""One node per model: ParallelRunner trains the grid concurrently with the sequential
runner's results, nests one MLflow run per model under the pipeline's run, and one
namespace trains alone."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest

from tests.pipelines.test_fewshot_e2e import TINY

# no pretraining (backbone from random init): the test is about the runners
PARALLEL = {**TINY, "backbone": {"name": "echo-vit-tiny", "pretrained": None}}
COLUMNS = ["mae", "rmse", "r2", "bias"]


def _run(project, runner=None, **filters) -> None:
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project.path)
    with KedroSession.create(project_path=project.path) as session:
        session.run(pipeline_names=["fewshot"], runner=runner, **filters)


def _metrics(root) -> pd.DataFrame:
    versions = sorted(
        (root / "data/08_reporting/fewshot_metrics.csv").glob("*/fewshot_metrics.csv")
    )
    table = pd.read_csv(versions[-1])
    return table.sort_values(["split", "method"]).reset_index(drop=True)


@pytest.mark.slow
def test_parallel_runner_gives_the_sequential_metrics_and_one_nested_run_per_model(
    kedro_project,
):
    from kedro.runner import ParallelRunner

    kedro_project.set_params(PARALLEL)
    _run(kedro_project)
    sequential = _metrics(kedro_project.path)
    # a fresh work folder: the parallel run trains again instead of resuming finished runs
    kedro_project.set_params({"training": {"work_dir": "data/06_models/work_parallel"}})
    _run(kedro_project, runner=ParallelRunner(max_workers=2))
    parallel = _metrics(kedro_project.path)

    assert sorted(parallel.loc[parallel["method"] == "cardiac_clip", "split"]) == [
        "k1_seed0",
        "k1_seed1",
    ]
    # labels exactly; every number (metrics and their bootstrap CIs) to float tolerance:
    # workers run with other thread counts, so sums may round differently
    numbers = sequential.select_dtypes("number").columns.drop(["k", "seed"], errors="ignore")
    pd.testing.assert_frame_equal(
        sequential.drop(columns=numbers), parallel.drop(columns=numbers), check_dtype=False
    )
    pd.testing.assert_frame_equal(
        sequential[numbers], parallel[numbers], check_exact=False, rtol=1e-3, atol=1e-2
    )

    runs = mlflow.search_runs(search_all_experiments=True)
    parents = runs[runs["tags.mlflow.parentRunId"].isna()].sort_values("start_time")
    last = parents["run_id"].iloc[-1]
    children = runs[runs["tags.mlflow.parentRunId"] == last]
    assert sorted(children["tags.k"] + "-" + children["tags.seed"]) == ["1-0", "1-1"]
    assert children["metrics.test_mae"].notna().all()  # evaluation reopened the same run
    assert children["metrics.val_mae"].notna().all()  # training logged there per epoch

    # one namespace alone trains one model
    before = len(mlflow.search_runs(search_all_experiments=True))
    _run(kedro_project, namespaces=["fewshot.k1_seed1"])
    runs = mlflow.search_runs(search_all_experiments=True)
    assert len(runs) == before + 2  # the pipeline's run and k1_seed1's
    newest = runs.sort_values("start_time").iloc[-1]
    assert (newest["tags.k"], newest["tags.seed"]) == ("1", "1")
