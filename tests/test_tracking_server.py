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
