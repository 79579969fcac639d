"""A run on the user's own folder with their own weights builds nothing synthetic and
pretrains nothing; a mistyped folder is not created."""

from __future__ import annotations

import pandas as pd
import pytest

from cardiac_pipeline.errors import UserError
from tests.pipelines.test_fewshot_e2e import TINY


@pytest.fixture
def real_folder(tmp_path):
    """A tiny folder in EchoNet-Dynamic's format, not made by the project's pipelines."""
    from cardiac_pipeline.echo.synthetic import generate_dataset

    root = tmp_path / "clinic"
    generate_dataset(root, n_train=8, n_val=4, n_test=4, seed=3, workers=1, progress=False)
    return root


@pytest.fixture
def weights_file(tmp_path):
    from cardiac_pipeline.model.backbone import create_backbone
    from cardiac_pipeline.model.pretrain import save_pretrained_checkpoint

    path = tmp_path / "weights.pt"
    save_pretrained_checkpoint(
        create_backbone("echo-vit-tiny", seed=0).model, "echo-vit-tiny", path, {}
    )
    return path


@pytest.mark.slow
def test_own_data_and_weights_run_no_synthetic_or_pretraining_node(
    kedro_project, real_folder, weights_file
):
    from kedro.framework.project import pipelines

    before = sorted(p.relative_to(real_folder) for p in real_folder.rglob("*"))
    kedro_project.set_params(
        {
            **TINY,
            "fewshot": {"shots": [1], "seeds": [0], "val_size": 4},
            "backbone": {"name": "echo-vit-tiny", "pretrained": str(weights_file)},
        }
    )
    kedro_project.run("fewshot", runtime_params={"echonet_root": str(real_folder)})

    ran = {node.name for node in pipelines["fewshot"].nodes}  # the pipeline this run ran
    assert not {n for n in ran if "synthetic" in n or "pretrain" in n}
    assert {"ingest_echonet", "build_clip_store", "fewshot.k1_seed0.train"} <= ran
    data = kedro_project.path / "data"
    assert not (data / "01_raw").exists()  # no synthetic target, no source corpus
    assert not (data / "06_models/pretrained_backbone.pt").exists()
    assert not (data / "04_feature/pretrain_clip_stores").exists()
    assert sorted(p.relative_to(real_folder) for p in real_folder.rglob("*")) == before
    metrics = pd.read_csv(next((data / "08_reporting/fewshot_metrics.csv").glob("*/*.csv")))
    assert metrics.loc[metrics["method"] == "cardiac_clip", "split"].tolist() == ["k1_seed0"]


def test_a_mistyped_folder_stops_the_run_and_is_not_created(kedro_project, tmp_path):
    missing = tmp_path / "EchoNet-Dynamik"
    kedro_project.set_params({**TINY, "backbone": {"name": "echo-vit-tiny", "pretrained": None}})
    with pytest.raises(UserError, match="echonet_root .*EchoNet-Dynamik': folder not found"):
        kedro_project.run("fewshot", runtime_params={"echonet_root": str(missing)})
    assert not missing.exists()
    assert not (kedro_project.path / "data/01_raw").exists()
