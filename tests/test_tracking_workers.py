"""Model runs nest under the pipeline's run also where that run is not active (a runner's
worker thread), and metrics logged there reach the pipeline's run."""

from __future__ import annotations

import os
import threading

import mlflow

from cardiac_pipeline import tracking


def test_a_worker_thread_nests_its_model_run_and_logs_to_the_pipeline_run(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.set_experiment("t")
    seen: dict[str, object] = {}

    def worker() -> None:  # like a ThreadRunner thread: no active run here
        seen["active"] = mlflow.active_run()
        tracking.log_metrics({"ingestion.usable": 3})
        with tracking.child_run("k1_seed0", {"k": 1, "seed": 0}) as run_id:
            tracking.log_metrics({"val_mae": 9.5}, step=1)
            seen["child"] = run_id

    with mlflow.start_run(run_name="fewshot") as parent:
        tracking.publish_context(uri, experiment.experiment_id, parent.info.run_id)
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
        tracking.clear_context()

    assert seen["active"] is None and seen["child"]
    child = mlflow.get_run(str(seen["child"]))
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.data.tags["k"] == "1" and child.data.metrics["val_mae"] == 9.5
    assert mlflow.get_run(parent.info.run_id).data.metrics["ingestion.usable"] == 3
    assert tracking.CONTEXT_ENV not in os.environ


def test_without_a_pipeline_run_nothing_is_tracked(monkeypatch):
    monkeypatch.delenv(tracking.CONTEXT_ENV, raising=False)
    with tracking.child_run("k1_seed0", {}) as run_id:
        tracking.log_metrics({"val_mae": 1.0})
    assert run_id is None
