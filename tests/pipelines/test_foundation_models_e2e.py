"""Each echo foundation model through its run file: a tiny cached fewshot, then predict.

Random weights in each model's published layout (written here, shrunken through
``backbone.options``), a few synthetic videos, on CPU and without network; the trained
checkpoint then predicts a real-format AVI and the real DICOM that pydicom ships.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
import torch
import yaml
from pydicom.data import get_testdata_file

from cardiac_pipeline.echo.video import write_video
from cardiac_pipeline.model import recipe
from cardiac_pipeline.model.predict import predict_folder
from tests.echo.test_inputs import moving_video
from tests.nn.conftest import (
    TINY_ECHOPRIME,
    TINY_PANECHO,
    write_echoclip_weights,
    write_model_data,
    write_panecho,
    write_tokenizer,
)

RUNS = Path(__file__).resolve().parents[2] / "conf" / "runs"
TINY = {
    "synthetic": {"generate": {"n_train": 12, "n_val": 4, "n_test": 4, "seed": 7, "workers": 1}},
    "ingestion": {"workers": 1},
    "preprocessing": {"workers": 1},
    "fewshot": {"shots": [1], "seeds": [0], "val_size": 4, "calibration_size": 0},
    "clips": {"frames": 8, "period": 2, "val_clips": 1},
    "training": {
        "cached": {"epochs": 2, "max_batches_per_epoch": 2},
        "device": "cpu",
        "amp": "off",
    },
    "evaluation": {"n_clips": 1, "attention_plot_videos": 1, "device": "cpu"},
}


def _echoclip(folder: Path) -> dict[str, Any]:
    write_echoclip_weights(folder / "echo-clip")
    return {"pretrained": str(folder / "echo-clip"), "options": {}}


def _echoprime(folder: Path) -> dict[str, Any]:
    tokenizer = write_tokenizer(folder / "biomedbert")
    write_model_data(folder / "model_data", tokenizer)
    return {
        "pretrained": str(folder / "model_data"),
        "tokenizer": str(tokenizer),
        "options": TINY_ECHOPRIME,
    }


def _panecho(folder: Path) -> dict[str, Any]:
    write_panecho(folder / "panecho.pt")
    return {"pretrained": str(folder / "panecho.pt"), "options": TINY_PANECHO}


WRITERS = {"echoclip": _echoclip, "echoprime": _echoprime, "panecho": _panecho}


def _run_params(name: str, weights: Path) -> dict[str, Any]:
    """The model's run file as shipped, with this test's weights and tiny sizes."""
    params = yaml.safe_load((RUNS / f"{name}.yml").read_text())["run"]["params"]
    params.pop("echonet_root")  # the synthetic default
    params["backbone"] = {**params["backbone"], **WRITERS[name](weights)}
    return {**params, **TINY, "training": {**params["training"], **TINY["training"]}}


def _latest(dataset: Path) -> pd.DataFrame:
    """A versioned CSV dataset's only version."""
    return pd.read_csv(next(dataset.glob(f"*/{dataset.name}")))


def _videos(folder: Path) -> Path:
    folder.mkdir()
    write_video(folder / "clinic.avi", moving_video(24, 64, 80), 50)
    shutil.copy(get_testdata_file("examples_ybr_color.dcm"), folder / "echo.dcm")
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(WRITERS))
def test_run_file_fewshot_then_predict_on_avi_and_dicom(
    name: str, kedro_project, tmp_path: Path, no_network: None
) -> None:
    params = _run_params(name, tmp_path / "weights")
    kedro_project.set_params(params)
    kedro_project.run("fewshot")
    root = kedro_project.path

    methods = _latest(root / "data/08_reporting/fewshot_metrics.csv").set_index("method")
    assert methods.loc[["cardiac_clip"], "mae"].between(0, 100).all()
    assert "zero_shot" in methods.index  # by the EF prompts, or PanEcho's own EF head

    runs = mlflow.search_runs(search_all_experiments=True)
    child = runs[runs["tags.mlflow.parentRunId"].notna()].iloc[0]
    assert child["params.backbone.name"] == name
    assert len(child["params.backbone.weights_fingerprint"]) >= 8
    logged = " ".join(str(v) for k, v in child.items() if k.startswith("params."))
    assert str(tmp_path) not in logged  # the weights' path never reaches MLflow

    model = next((root / "data/06_models/fewshot_models").glob("*/fewshot_models/k1_seed0.pt"))
    checkpoint = recipe.load_checkpoint(model)
    size = params["backbone"]["options"].get("size", 64)
    assert checkpoint["input_spec"]["size"] == size
    predictions, failures, _ = predict_folder(
        _videos(tmp_path / "videos"), checkpoint, n_clips=1, device="cpu"
    )
    assert failures.empty, failures.to_dict("records")
    assert sorted(predictions["file"]) == ["clinic.avi", "echo.dcm"]
    assert predictions["EF_pred"].between(0, 100).all()
    assert torch.isfinite(torch.tensor(predictions["EF_pred"].to_numpy())).all()
