"""Two `kedro run --pipeline fewshot` started together on one project: both finish, and
with the same metrics (one builds each store, the other waits for it and reuses it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

TINY = {
    "synthetic": {
        "generate": {
            **{"n_train": 10, "n_val": 4, "n_test": 4, "seed": 7, "workers": 1},
            "site_overrides": {"frames_range": [24, 32]},
        }
    },
    "ingestion": {"workers": 1},
    "preprocessing": {"workers": 1},
    "fewshot": {"shots": [1], "seeds": [0], "val_size": 4},
    "cardiac_clip": {"scales": [1]},
    "clips": {"frames": 4, "period": 4, "val_clips": 1},
    "training": {"epochs": 1},
    "evaluation": {"n_clips": 1, "attention_plot_videos": 1},
    "pretrain": {
        "arch": "echo-vit-tiny",
        "corpus": {
            **{"n_train": 4, "n_val": 0, "n_test": 0, "workers": 1},
            "site_overrides": {"frames_range": [24, 32]},
        },
        "epochs": 1,
        "batch_size": 4,
        "frames": 2,
    },
}


def start_run(project: Path, name: str) -> subprocess.Popen:
    """The real CLI, as a user starts it; its own MLflow store, its log in ``<name>.log``."""
    kedro = Path(sys.executable).with_name("kedro")
    command = [str(kedro)] if kedro.exists() else [sys.executable, "-m", "kedro"]
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{project / name}.db",
        "KEDRO_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
    }
    log = open(project / f"{name}.log", "w")  # noqa: SIM115 (closed when the run ends)
    return subprocess.Popen(
        [*command, "run", "--pipeline", "fewshot"],
        cwd=project,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )


@pytest.mark.slow
def test_two_runs_started_together_both_finish_with_the_same_metrics(kedro_project):
    kedro_project.set_params(TINY)
    root = kedro_project.path
    runs = {name: start_run(root, name) for name in ("first", "second")}
    for name, run in runs.items():
        assert run.wait(timeout=1800) == 0, (root / f"{name}.log").read_text()[-3000:]
    logs = " ".join((root / f"{name}.log").read_text() for name in runs)
    assert "another build" not in logs

    tables = sorted((root / "data/08_reporting/fewshot_metrics.csv").glob("*/fewshot_metrics.csv"))
    assert len(tables) == 2  # one version per run
    first, second = (pd.read_csv(t) for t in tables)
    numbers = first.select_dtypes("number").columns
    pd.testing.assert_frame_equal(first.drop(columns=numbers), second.drop(columns=numbers))
    pd.testing.assert_frame_equal(first[numbers], second[numbers], rtol=1e-5, atol=1e-6)
    assert first["mae"].notna().all()
