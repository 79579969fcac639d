"""The README's route for a clinic's own data, through Kedro: no Split column + a split file."""

from __future__ import annotations

import pandas as pd
import pytest

from cardiac_pipeline.echo.synthetic import generate_dataset

TINY = {
    "ingestion": {"workers": 1},
    "preprocessing": {"workers": 1},
    "cardiac_clip": {"scales": [1]},
    "clips": {"frames": 4, "period": 4, "val_clips": 1},
    "training": {"epochs": 1},
    "evaluation": {"n_clips": 1, "attention_plot_videos": 1},
    "pretrain": {
        "arch": "echo-vit-tiny",
        "corpus": {"n_train": 4, "n_val": 0, "n_test": 0, "workers": 1},
        "epochs": 1,
        "batch_size": 4,
        "frames": 2,
    },
}


def clinic_folder(path):
    """``FileList.csv`` with just ``FileName,EF`` and a ``Videos/`` folder (no tracings)."""
    file_list = generate_dataset(
        path, n_train=6, n_val=2, n_test=3, seed=5, workers=1, progress=False
    )
    (path / "VolumeTracings.csv").unlink()
    (path / "Reports.csv").unlink(missing_ok=True)
    (path / ".synthetic.json").unlink(missing_ok=True)
    file_list[["FileName", "EF"]].to_csv(path / "FileList.csv", index=False)
    return file_list


@pytest.mark.slow
def test_split_file_trains_and_tests_a_folder_without_split_column(kedro_project, tmp_path):
    clinic = tmp_path / "clinic"
    file_list = clinic_folder(clinic)
    split_file = tmp_path / "my_split.csv"
    file_list[["FileName", "Split"]].to_csv(split_file, index=False)
    kedro_project.set_params({**TINY, "fewshot": {"split_file": str(split_file)}})

    kedro_project.run("fewshot", runtime_params={"echonet_root": str(clinic)})

    root = kedro_project.path
    metrics = pd.read_csv(
        next((root / "data/08_reporting/fewshot_metrics.csv").glob("*/fewshot_metrics.csv"))
    )
    model = metrics[metrics["method"] == "cardiac_clip"]
    assert model["split"].tolist() == ["user_split"]
    assert int(model["n"].iloc[0]) == 3  # the split file's TEST rows
    assert model["mae"].between(0, 100).all()
    assert list((root / "data/08_reporting").glob("fewshot_summary.md/*/fewshot_summary.md"))
    assert not (root / "data/01_raw/echonet_synthetic").exists()  # nothing generated
