"""A real MLflow tracking server (sqlite backend, artifact root) receives a tiny fewshot run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.pipelines.test_fewshot_e2e import TINY

SERVER_START_TIMEOUT_S = 180  # a loaded 2-core machine needs ~20 s, a quiet one ~5 s


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """``mlflow server`` on a free loopback port; always stopped (with its workers) after."""
    folder = tmp_path / "server"
    folder.mkdir()
    port = _free_port()
    log = open(folder / "server.log", "wb")  # noqa: SIM115 - closed in the finally below
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination",
        str(folder / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    try:
        while True:
            if server.poll() is not None:
                pytest.fail(f"mlflow server exited: {(folder / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.perf_counter() - started > SERVER_START_TIMEOUT_S:
                pytest.fail(f"mlflow server not ready after {SERVER_START_TIMEOUT_S} s")
            time.sleep(0.25)
        yield {
            "url": url,
            "artifacts": folder / "artifacts",
            "start_s": time.perf_counter() - started,
        }
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its workers
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


def _has_a_path(text: str, private: list[str]) -> bool:
    return text.startswith("/") or any(p in text for p in private)


@pytest.mark.slow
def test_fewshot_logs_parent_and_nested_runs_to_a_tracking_server(
    kedro_project, mlflow_server, monkeypatch, tmp_path
):
    # the documented route: tracking_uri in conf/local/mlflow.yml
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    (kedro_project.path / "conf/local/mlflow.yml").write_text(
        f"tracking_uri: {mlflow_server['url']}\n"
    )
    kedro_project.set_params({**TINY, "fewshot": {**TINY["fewshot"], "seeds": [0]}})
    clinic = tmp_path / "Jane_Doe_clinic"  # a folder name that must not reach the server
    kedro_project.run("fewshot", runtime_params={"predict": {"input_dir": str(clinic)}})

    client = MlflowClient(mlflow_server["url"])
    experiment = client.get_experiment_by_name("cardiac-pipeline")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert [p.data.tags["kedro.pipeline"] for p in parents] == ["fewshot"]
    assert parents[0].info.status == "FINISHED"
    assert [(c.data.tags["k"], c.data.tags["seed"]) for c in children] == [("1", "0")]
    child = children[0]
    assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert {"val_mae", "test_mae", "train_loss"} <= set(child.data.metrics)
    assert [a.path for a in client.list_artifacts(child.info.run_id, "model")] == [
        "model/cardiac_clip.pt"
    ]
    assert list(mlflow_server["artifacts"].rglob("cardiac_clip.pt"))  # in the server's root

    private = [str(tmp_path), tempfile.gettempdir() + "/", str(Path.home())]
    for run in runs:
        logged = {**run.data.params, **run.data.tags}
        leaks = {k: v for k, v in logged.items() if _has_a_path(v, private)}
        assert not leaks, f"run {run.info.run_name}: {leaks}"
    assert parents[0].data.params["runtime.predict.input_dir"].startswith("path:")

    model = next((kedro_project.path / "data/06_models/fewshot_models").rglob("k1_seed0.pt"))
    checkpoint = torch.load(model, map_location="cpu", weights_only=True)
    paths = [s for s in _strings({"arch": checkpoint["arch"], "meta": checkpoint["meta"]})]
    assert not [s for s in paths if _has_a_path(s, private)]
    assert checkpoint["meta"]["work_dir"].startswith("data/06_models/work/k1_seed0-")


def _everything_logged(client: MlflowClient, run: Any, folder: Path) -> dict[str, str]:
    """``{where: text}`` of a run: its name, every param, tag and metric name, and the text
    of every artifact (embedded images removed: base64 may spell anything)."""
    import re

    logged = {"run name": run.info.run_name or "", "metrics": " ".join(run.data.metrics)}
    for kind, values in (("param", run.data.params), ("tag", run.data.tags)):
        logged.update({f"{kind} {k}": f"{k}={v}" for k, v in values.items()})
    pending = [None]
    while pending:
        for entry in client.list_artifacts(run.info.run_id, pending.pop()):
            if entry.is_dir:
                pending.append(entry.path)
                continue
            local = Path(client.download_artifacts(run.info.run_id, entry.path, str(folder)))
            text = local.read_bytes().decode("utf-8", "replace")
            logged[f"artifact {entry.path}"] = re.sub(r"base64,[A-Za-z0-9+/=]+", "", text)
    return logged


@pytest.mark.slow
def test_a_predict_run_sends_no_file_name_and_no_absolute_path_to_the_server(
    kedro_project, mlflow_server, monkeypatch, tmp_path
):
    from cardiac_pipeline.echo.video import write_video
    from tests.echo.test_dicom import PHI, write_echo
    from tests.echo.test_inputs import moving_video
    from tests.pipelines.test_predict import tiny_checkpoint

    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the default log_paths: hash
    (kedro_project.path / "conf/local/mlflow.yml").write_text(
        f"tracking_uri: {mlflow_server['url']}\n"
    )
    clinic = tmp_path / "St_Jude_echo_lab"
    clinic.mkdir()
    write_video(clinic / "Jane_Doe_1957.avi", moving_video(24), 50)
    write_video(clinic / "John_Smith_1962.mp4", moving_video(24, 64, 80), 50)
    write_echo(clinic / "Ann_Miller.dcm", n_frames=24)
    (clinic / "Bob_Jones.avi").write_bytes(b"RIFF" + bytes(300))  # unreadable: listed
    stems = ["Jane_Doe", "John_Smith", "Ann_Miller", "Bob_Jones", "St_Jude"]
    model = tmp_path / "models" / "k1_seed0.pt"
    model.parent.mkdir()
    torch.save(tiny_checkpoint(), model)
    kedro_project.run(
        "predict",
        runtime_params={
            "predict": {"input_dir": str(clinic), "model": str(model), "device": "cpu"}
        },
    )

    client = MlflowClient(mlflow_server["url"])
    experiment = client.get_experiment_by_name("cardiac-pipeline")
    (run,) = client.search_runs([experiment.experiment_id])
    logged = _everything_logged(client, run, tmp_path / "downloaded")
    assert {"artifact predict/predictions.csv", "artifact predict/predict_report.html"} <= set(
        logged
    )
    private = [str(tmp_path), tempfile.gettempdir() + "/", str(Path.home()) + "/", *stems, *PHI]
    leaks = {where: p for where, text in logged.items() for p in private if p in text}
    assert not leaks
    source = run.data.tags["mlflow.source.name"]
    assert not source.startswith("/") and source
    # the local files keep the names, for the user
    local = next((kedro_project.path / "data/07_model_output").glob("predictions.csv/*/*.csv"))
    assert "Jane_Doe_1957.avi" in local.read_text()
    shared = logged["artifact predict/predictions.csv"]
    assert shared.count(".avi") == 1 and shared.count(".mp4") == 1 and ".dcm" in shared
    assert "Bob_Jones" not in logged["artifact predict/prediction_failures.csv"]
