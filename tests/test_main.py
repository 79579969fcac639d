"""``python -m cardiac_pipeline train``: the README's torchrun command, run for real on CPU
(two gloo processes) on a tiny project, through to a calibrated checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cardiac_pipeline.__main__ import _parse_train_args, _runtime_params
from cardiac_pipeline.errors import UserError
from tests.conftest import conf_base

TORCHRUN = Path(sys.executable).with_name("torchrun")
SRC = Path(__file__).resolve().parents[1] / "src"
TINY = {
    "ingestion": {"workers": 1},
    "preprocessing": {"workers": 1},
    "fewshot": {"shots": [1], "seeds": [0], "val_size": 4},
    "cardiac_clip": {"scales": [1, 2]},
    "clips": {"frames": 4, "period": 4, "val_clips": 1, "augment_pad": 0},
    "training": {
        "epochs": 1,
        "device": "cpu",
        "max_batches_per_epoch": 2,
        "cached": {"epochs": 2, "batch_size": 4, "warmup_steps": 0, "checkpoint_every": 1},
    },
    "evaluation": {"n_clips": 1},
}


@pytest.fixture
def preprocessed(kedro_project, tmp_path: Path):
    """A project after ingestion and preprocessing of a tiny folder, with its own weights."""
    from cardiac_pipeline.echo.synthetic import generate_dataset
    from cardiac_pipeline.model.backbone import create_backbone
    from cardiac_pipeline.model.pretrain import save_pretrained_checkpoint

    folder = tmp_path / "clinic"
    generate_dataset(folder, n_train=8, n_val=4, n_test=2, seed=3, workers=1, progress=False)
    weights = tmp_path / "weights.pt"
    save_pretrained_checkpoint(
        create_backbone("echo-vit-tiny", seed=0).model, "echo-vit-tiny", weights, {}
    )
    backbone = {"name": "echo-vit-tiny", "pretrained": str(weights)}
    kedro_project.set_params({**TINY, "backbone": backbone})
    for pipeline in ("ingestion", "preprocessing"):
        kedro_project.run(pipeline, runtime_params={"echonet_root": str(folder)})
    return kedro_project.path


def _torchrun(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
    }
    command = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "cardiac_pipeline"]
    return subprocess.run(
        [*command, "train", *args], cwd=project, env=env, capture_output=True, text=True
    )


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs the gloo backend")
def test_torchrun_trains_across_two_processes_to_a_calibrated_checkpoint(preprocessed: Path):
    out = preprocessed / "model.pt"
    params = "training.batch_size=2,training.adaptation=cached_then_full"
    done = _torchrun(preprocessed, "--k", "1", "--seed", "0", "--params", params, "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]

    checkpoint = torch.load(out, map_location="cpu", weights_only=True)
    assert checkpoint["adaptation"] == "cached_then_full"
    assert set(checkpoint["meta"]["stages"]) == {"cached", "full"}
    assert checkpoint["meta"]["split"] == "k1_seed0"
    assert checkpoint["interval"]["alpha"] == 0.1 and checkpoint["interval"]["n_val"] == 4
    # the cached stage trained on the store the fewshot pipeline's node builds
    assert list((preprocessed / "data/04_feature/frame_features").glob("*/*"))
    assert (preprocessed / "data/04_feature/frame_features/current.json").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs the gloo backend")
def test_a_user_error_under_torchrun_is_one_line_from_one_process(kedro_project):
    done = _torchrun(kedro_project.path, "--k", "1", "--seed", "0", "--params", "training.epochs=0")
    assert done.returncode != 0  # torchrun adds its own report of the failed processes
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "'training.epochs': must be >= 1" in errors[0]
    assert "cardiac_pipeline/" not in done.stderr  # no traceback of the project's code


def test_train_command_reads_runtime_params_as_kedro_run_does() -> None:
    args = _parse_train_args(["--k", "2", "--seed", "1", "--params", "training.epochs=5,a.b.c=x"])
    assert (args.k, args.seed, args.out) == (2, 1, None)
    assert _runtime_params(args.params) == {"training": {"epochs": 5}, "a": {"b": {"c": "x"}}}
    assert _runtime_params("backbone.pretrained=null") == {"backbone": {"pretrained": None}}
    with pytest.raises(UserError, match="key=value"):
        _runtime_params("training.epochs")
    with pytest.raises(UserError, match="--seed"):
        _parse_train_args(["--k", "1"])


def test_what_a_train_command_needs_first_is_one_line_naming_the_run(tmp_path: Path) -> None:
    from kedro.io import DataCatalog

    from cardiac_pipeline.__main__ import _backbone, _load_prerequisite
    from cardiac_pipeline.datasets import ClipStoreDataset

    catalog = DataCatalog({"clip_store": ClipStoreDataset(path=str(tmp_path / "none"))})
    with pytest.raises(UserError, match=r"'clip_store' is missing.*--pipeline preprocessing"):
        _load_prerequisite(catalog, "clip_store")
    with pytest.raises(UserError, match="kedro run --pipeline pretrain"):
        _backbone(catalog, conf_base().backbone)
