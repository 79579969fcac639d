"""Shared fixtures: a throw-away copy of the Kedro project for end-to-end runs."""

from __future__ import annotations

import functools
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class KedroProject:
    """A copy of ``conf/`` and ``pyproject.toml`` in a temp folder, runnable with Kedro."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def set_params(self, params: dict[str, Any]) -> None:
        """Override parameters (soft-merged over conf/base) in conf/local/parameters.yml."""
        target = self.path / "conf" / "local" / "parameters.yml"
        current = yaml.safe_load(target.read_text()) if target.exists() else {}
        current = _deep_merge(current or {}, params)
        target.write_text(yaml.safe_dump(current))

    def run(self, pipeline: str, runtime_params: dict[str, Any] | None = None) -> None:
        from kedro.framework.session import KedroSession
        from kedro.framework.startup import bootstrap_project

        bootstrap_project(self.path)
        with KedroSession.create(project_path=self.path, runtime_params=runtime_params) as session:
            session.run(pipeline_names=[pipeline])


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture
def kedro_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> KedroProject:
    """A fresh project copy with its own data/ and MLflow store; cwd is its root."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copytree(PROJECT_ROOT / "conf" / "base", root / "conf" / "base")
    shutil.copy(PROJECT_ROOT / "conf" / "logging.yml", root / "conf" / "logging.yml")
    (root / "conf" / "local").mkdir()
    shutil.copy(PROJECT_ROOT / "pyproject.toml", root / "pyproject.toml")
    shutil.copy(PROJECT_ROOT / ".telemetry", root / ".telemetry")
    (root / "src").mkdir()  # Kedro checks it exists; the package itself is installed
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    return KedroProject(root)


@functools.cache
def conf_base_parameters() -> dict[str, Any]:
    """conf/base's parameters as Kedro merges them (globals resolved)."""
    from kedro.config import OmegaConfigLoader

    loader = OmegaConfigLoader(
        str(PROJECT_ROOT / "conf"),
        base_env="base",
        default_run_env="base",
        merge_strategy={"parameters": "soft"},
    )
    return loader["parameters"]


def conf_base():
    """The typed conf/base parameters (``config.ProjectConfig``): where tests start from."""
    from cardiac_pipeline import config

    return config.build_config(conf_base_parameters())


def base_recipe(**overrides: dict[str, Any]):
    """conf/base's fewshot recipe with partial ``overrides`` per section (checked as conf)."""
    from cardiac_pipeline import config

    base = conf_base()
    typed = config.Recipe(**{name: getattr(base, name) for name in config.RECIPE_SECTIONS})
    return config.override(typed, overrides, "test")


def loop_config(**overrides: Any):
    """A ``TrainConfig``: conf/base's training loop with ``overrides``."""
    import dataclasses

    loop = conf_base().training.loop(eval_batch_size=1)
    return dataclasses.replace(loop, **overrides)


# build_video_index's rules as conf/base's ingestion section sets them (a plain dict: the
# echo layer knows no config)
INGESTION = dict(conf_base_parameters()["ingestion"])


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any socket connection fails the test: the code path must stay offline."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def synthetic_clip_store(
    root: Path, n_videos: int, *, seed: int, frames_range: tuple[int, int], site: str = "target"
) -> tuple[Any, Any]:
    """``n_videos`` short synthetic videos of ``site`` in a clip store under ``root``:
    ``(ClipStore, video index)`` (the index has FileName and EF)."""
    from cardiac_pipeline.echo.clipstore import ClipStore, build_clip_store
    from cardiac_pipeline.echo.echonet import build_video_index
    from cardiac_pipeline.echo.synthetic import generate_dataset

    generate_dataset(
        root / "echonet",
        n_train=n_videos,
        n_val=0,
        n_test=0,
        seed=seed,
        site=site,
        workers=1,
        progress=False,
        site_overrides={"frames_range": frames_range},
    )
    index, _ = build_video_index(root / "echonet", **{**INGESTION, "min_frames": 8}, progress=False)
    build_clip_store(index, root / "store", size=112, workers=1, progress=False)
    return ClipStore(root / "store"), index
