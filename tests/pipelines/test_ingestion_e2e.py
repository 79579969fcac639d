"""Real-format smoke test: the ingestion pipeline through Kedro's runner on a generated folder."""

from __future__ import annotations

import hashlib

import pandas as pd

from cardiac_pipeline.echo.synthetic import generate_dataset


def _digest(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_ingestion_pipeline_indexes_and_rejects(kedro_project, tmp_path):
    raw = tmp_path / "echonet"
    file_list = generate_dataset(
        raw, n_train=4, n_val=1, n_test=1, seed=3, workers=1, progress=False
    )
    missing = file_list["FileName"].iloc[0]
    (raw / "Videos" / f"{missing}.avi").unlink()
    before = _digest(raw)

    kedro_project.set_params({"ingestion": {"workers": 1}})
    kedro_project.run("ingestion", runtime_params={"echonet_root": str(raw)})

    out = kedro_project.path / "data/02_intermediate"
    index = pd.read_csv(next(out.glob("video_index.csv/*/video_index.csv")))
    rejects = pd.read_csv(next(out.glob("video_rejects.csv/*/video_rejects.csv")))
    assert len(index) == 5 and missing not in set(index["FileName"])
    assert rejects[["FileName", "reason"]].values.tolist() == [[missing, "missing_file"]]
    assert index["ED_frame"].notna().all()  # tracings were read
    assert _digest(raw) == before  # the raw folder is never modified


def test_synthetic_pipeline_never_writes_over_a_real_dataset(kedro_project, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "FileList.csv").write_text("FileName,EF\n")
    kedro_project.set_params({"synthetic": {"generate": {"n_train": 2, "n_val": 1, "n_test": 1}}})
    kedro_project.run("synthetic", runtime_params={"echonet_root": str(real)})
    assert [p.name for p in real.iterdir()] == ["FileList.csv"]
    assert not (kedro_project.path / "data/01_raw/echonet_synthetic").exists()
