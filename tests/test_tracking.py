"""MLflow after a crash (one run per model, stale runs marked) and paths kept out of tracking."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from cardiac_pipeline import hooks, tracking

PROJECT_SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A fresh sqlite store in tmp_path; the config the hook would use; MLflow reset after."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv(tracking.CONTEXT_ENV, raising=False)
    config = {**hooks.DEFAULT_MLFLOW_CONFIG, "artifact_location": str(tmp_path / "artifacts")}
    tracking.configure(tmp_path)
    yield {"uri": uri, "config": config, "root": tmp_path}
    while mlflow.active_run() is not None:
        mlflow.end_run()
    tracking.clear_context()


KILLED_TRAINING = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import mlflow
    from cardiac_pipeline import hooks, tracking

    config, root, work = eval(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    experiment = hooks.setup_mlflow(config, root)
    mlflow.start_run(run_name="fewshot", tags=tracking.process_tags())
    with tracking.model_run(work, "k1_seed0", {"k": 1, "seed": 0}) as run_id:
        for epoch in (1, 2):
            tracking.log_metrics({"epoch": epoch, "val_mae": 10.0 - epoch}, step=epoch)
        print(run_id, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # killed mid-training: nothing ends the runs
    """
)


def test_killed_then_resumed_training_has_one_mlflow_run_with_the_whole_history(store):
    work = store["root"] / "work" / "k1_seed0-abc"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_SRC)}
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            KILLED_TRAINING,
            repr(store["config"]),
            str(store["root"]),
            str(work),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run_id = killed.stdout.split()[-1]
    client = MlflowClient(store["uri"])
    killed_parent = client.get_run(run_id).data.tags[tracking.PARENT_TAG]
    assert client.get_run(run_id).info.status == "RUNNING"
    assert json.loads((work / tracking.RUN_RECORD_NAME).read_text())["run_id"] == run_id

    # the next start marks the orphans, then the resumed training continues the same run
    experiment = hooks.setup_mlflow(store["config"], store["root"])
    assert client.get_run(run_id).info.status == "KILLED"
    assert client.get_run(killed_parent).info.status == "KILLED"
    with (
        mlflow.start_run(run_name="fewshot", tags=tracking.process_tags()) as parent,
        tracking.model_run(work, "k1_seed0", {"k": 1, "seed": 0}) as resumed,
    ):
        for epoch in (3, 4):
            tracking.log_metrics({"epoch": epoch, "val_mae": 10.0 - epoch}, step=epoch)

    assert resumed == run_id
    children = client.search_runs(
        [experiment], filter_string=f"tags.`{tracking.PARENT_TAG}` = '{parent.info.run_id}'"
    )
    assert [c.info.run_id for c in children] == [run_id]
    history = client.get_metric_history(run_id, "val_mae")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["cardiac.resumed_from_parent"] == killed_parent
    assert run.data.tags[tracking.PID_TAG] == str(os.getpid())


def test_stale_runs_of_this_machine_with_a_gone_process_are_marked_killed(store):
    experiment = hooks.setup_mlflow(store["config"], store["root"])
    client = MlflowClient(store["uri"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = socket.gethostname()
    mine = tracking.process_tags()

    def running(tags: dict[str, str]) -> str:
        return client.create_run(experiment, tags=tags).info.run_id

    dead = running({tracking.HOST_TAG: host, tracking.PID_TAG: str(gone.pid)})
    alive = running(mine)
    reused_pid = running({**mine, tracking.PID_START_TAG: "1"})  # same pid, other start
    elsewhere = running({tracking.HOST_TAG: "another-machine", tracking.PID_TAG: str(gone.pid)})
    untagged = running({})

    marked = tracking.mark_stale_runs(experiment, client)

    assert tracking.PID_START_TAG in mine  # Linux: /proc gives the process's start time
    assert set(marked) == {dead, reused_pid}
    status = {r: client.get_run(r).info.status for r in (dead, alive, elsewhere, untagged)}
    assert status == {dead: "KILLED", alive: "RUNNING", elsewhere: "RUNNING", untagged: "RUNNING"}


def test_a_model_of_a_finished_pipeline_run_gets_a_new_run_with_its_history(store):
    hooks.setup_mlflow(store["config"], store["root"])
    work = store["root"] / "work" / "k1_seed0-abc"
    history = [{"epoch": e, "val_mae": 10.0 - e} for e in (1, 2)]
    with mlflow.start_run(run_name="fewshot"), tracking.model_run(work, "k1", {}) as first:
        for row in history:
            tracking.log_metrics(row, step=row["epoch"])
        assert tracking.log_history(history) == 0  # nothing missing
    # a later kedro run reuses the trained model: a new run, its history filled in
    with mlflow.start_run(run_name="fewshot"), tracking.model_run(work, "k1", {}) as second:
        assert tracking.log_history(history) == 2
    assert second != first
    steps = [m.step for m in MlflowClient(store["uri"]).get_metric_history(second, "val_mae")]
    assert sorted(steps) == [1, 2]


def test_nested_runs_from_a_worker_without_active_run_use_the_published_parent(store):
    experiment = hooks.setup_mlflow(store["config"], store["root"])
    with mlflow.start_run(run_name="fewshot") as parent:
        tracking.publish_context(store["uri"], experiment, parent.info.run_id)
        script = textwrap.dedent(
            """
            import sys
            from cardiac_pipeline import tracking
            with tracking.model_run(sys.argv[1], "k2_seed0", {"k": 2}) as run_id:
                tracking.log_metrics({"val_mae": 3.0}, step=1)
            print(run_id)
            """
        )
        worker = subprocess.run(
            [sys.executable, "-c", script, str(store["root"] / "work" / "k2")],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(PROJECT_SRC)},
            timeout=120,
        )
    assert worker.returncode == 0, worker.stderr[-2000:]
    run = MlflowClient(store["uri"]).get_run(worker.stdout.split()[-1])
    assert run.data.tags[tracking.PARENT_TAG] == parent.info.run_id
    assert run.data.tags["k"] == "2" and run.info.status == "FINISHED"


def test_without_a_parent_run_nothing_is_tracked(store, tmp_path):
    with tracking.model_run(tmp_path / "work", "k1_seed0", {}) as run_id:
        assert run_id is None
    assert not (tmp_path / "work" / tracking.RUN_RECORD_NAME).exists()


def test_paths_are_logged_relative_to_the_project_or_as_a_fingerprint(tmp_path):
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    clinic = tmp_path / "Jane_Doe_1957"
    clinic.mkdir()
    (clinic / "a.avi").write_bytes(b"x" * 10)
    copy = tmp_path / "elsewhere" / "copy"
    copy.mkdir(parents=True)
    (copy / "a.avi").write_bytes(b"x" * 10)
    tracking.fingerprint.cache_clear()
    try:
        tracking.configure(project, "hash")
        assert tracking.loggable(str(project / "data" / "x.pt")) == "data/x.pt"
        assert tracking.loggable("data/01_raw") == "data/01_raw"  # relative: unchanged
        hashed = tracking.loggable(str(clinic))
        assert hashed.startswith("path:") and "Jane" not in hashed and "/" not in hashed
        assert tracking.loggable(str(copy)) == hashed  # same content, same value
        assert tracking.loggable("../Jane_Doe_1957") == hashed
        assert tracking.loggable(f"local-dir:{clinic}") == f"local-dir:{hashed}"
        for kept in ("hf-hub:org/repo", "runs:/abc/model", "http://127.0.0.1:5000", "k1_seed0"):
            assert tracking.loggable(kept) == kept
        flat = tracking.flatten_params({"predict": {"input_dir": str(clinic), "n": 2}})
        assert flat == {"predict.input_dir": hashed, "predict.n": "2"}

        tracking.configure(project, "basename")
        assert tracking.loggable(str(clinic)) == "Jane_Doe_1957:" + hashed.split(":")[1]
        tracking.configure(project, "full")
        assert tracking.loggable(str(clinic)) == str(clinic)
        with pytest.raises(ValueError, match="log_paths"):
            tracking.configure(project, "nope")
    finally:
        tracking.configure(Path.cwd())


def test_log_params_on_a_resumed_run_keeps_first_values(store):
    hooks.setup_mlflow(store["config"], store["root"])
    with mlflow.start_run() as run:
        tracking.log_params({"training": {"epochs": 2, "device": "cpu"}})
        tracking.log_params({"training": {"epochs": 2, "device": "cuda", "lr": 0.1}})
    params = MlflowClient(store["uri"]).get_run(run.info.run_id).data.params
    assert params == {"training.epochs": "2", "training.device": "cpu", "training.lr": "0.1"}


def test_video_names_go_to_mlflow_as_their_fingerprints_under_hash(tmp_path, monkeypatch):
    import pandas as pd

    clinic = tmp_path / "clinic"
    clinic.mkdir()
    for name, body in (("Jane_Doe.avi", b"a" * 9), ("Ann_Lee.dcm", b"b" * 7)):
        (clinic / name).write_bytes(body)
    paths = {name: clinic / name for name in ("Jane_Doe.avi", "Ann_Lee.dcm")}
    table = pd.DataFrame(
        {"file": ["Ann_Lee.dcm"], "reason": ["ValueError: Ann_Lee.dcm: no pixel data"], "n": [3]}
    )
    try:
        tracking.configure(tmp_path / "project", "hash")
        names = tracking.loggable_names(paths)
        assert names["Jane_Doe.avi"] == tracking.loggable(str(clinic / "Jane_Doe.avi"))[5:] + ".avi"
        assert names["Ann_Lee.dcm"].endswith(".dcm") and "Ann" not in names["Ann_Lee.dcm"]
        shared = tracking.with_loggable_names(table, "file", names)
        assert shared.to_dict("list") == {
            "file": [names["Ann_Lee.dcm"]],
            "reason": [f"ValueError: {names['Ann_Lee.dcm']}: no pixel data"],
            "n": [3],
        }
        assert table["file"].tolist() == ["Ann_Lee.dcm"]  # the local table keeps its names
        for policy in ("basename", "full"):
            tracking.configure(tmp_path / "project", policy)
            assert tracking.loggable_names(paths) == {name: name for name in paths}

        tracking.configure(tmp_path, "hash")  # the script inside the project: relative
        script = tmp_path / ".venv" / "bin" / "kedro"
        monkeypatch.setattr(sys, "argv", [str(script)])
        assert tracking.source_tags() == {"mlflow.source.name": ".venv/bin/kedro"}
        tracking.configure(tmp_path / "project", "hash")  # outside: a fingerprint
        assert tracking.source_tags()["mlflow.source.name"].startswith("path:")
    finally:
        tracking.configure(Path.cwd())


def test_a_finished_model_run_of_another_live_pipeline_run_is_not_continued(store):
    """Two runs met in one work folder: the second starts its own model run."""
    hooks.setup_mlflow(store["config"], store["root"])
    client = MlflowClient(store["uri"])
    work = store["root"] / "work" / "k1_seed0-met"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        live = {
            tracking.HOST_TAG: socket.gethostname(),
            tracking.PID_TAG: str(other.pid),
            tracking.PID_START_TAG: tracking._process_start(other.pid) or "",
        }
        with (
            mlflow.start_run(run_name="fewshot", tags=live) as first_parent,
            tracking.model_run(work, "k1_seed0", {"k": 1, "seed": 0}) as first,
        ):
            pass
        client.update_run(first_parent.info.run_id, status="RUNNING")  # still evaluating
        with (
            mlflow.start_run(run_name="fewshot", tags=tracking.process_tags()),
            tracking.model_run(work, "k1_seed0", {"k": 1, "seed": 0}) as second,
        ):
            pass
    finally:
        other.kill()
        other.wait()
    assert second != first
    assert client.get_run(first).data.tags[tracking.PARENT_TAG] == first_parent.info.run_id
