"""Predict on new videos: mixed formats, failures listed, deterministic, PHI-free, via Kedro."""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from cardiac_pipeline.config import record
from cardiac_pipeline.echo.video import write_video
from cardiac_pipeline.errors import UserError
from cardiac_pipeline.model import recipe
from cardiac_pipeline.model.predict import (
    MLFLOW_CHECKPOINT_ARTIFACT,
    RANGE_COLUMNS,
    check_model,
    latest_checkpoint,
    predict_folder,
    resolve_checkpoint,
)
from cardiac_pipeline.reporting.predict_report import prediction_report_html
from tests.conftest import base_recipe
from tests.echo.test_dicom import PHI, write_echo
from tests.echo.test_inputs import moving_video

TINY = base_recipe(
    backbone={"name": "echo-vit-tiny", "pretrained": None},
    cardiac_clip={"scales": [1], "pooling": "attention", "head": "prompt", "prompt_set": "ranges"},
)
ARCH = recipe.Arch(backbone=TINY.backbone, cardiac_clip=TINY.cardiac_clip, adapters=None)


def tiny_checkpoint(seed: int = 0) -> dict:
    model = recipe.build_cardiac_clip(ARCH, seed=seed)
    return {
        "format": recipe.CHECKPOINT_FORMAT,
        "arch": record(ARCH),
        "clips": {"frames": 4, "period": 2},
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "meta": {"selected_epoch": 0},
    }


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "k1_seed0.pt"
    torch.save(tiny_checkpoint(), path)
    return path


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("videos")
    write_video(folder / "clinic_a.avi", moving_video(24, 64, 80), 50)
    write_video(folder / "clinic_b.mp4", moving_video(24), 50)
    write_echo(folder / "echo_001.dcm", n_frames=24)
    (folder / "corrupt.avi").write_bytes(b"RIFF" + bytes(300))
    return folder


def assert_no_phi(text: str, where: str) -> None:
    for secret in PHI:
        assert secret not in text, f"PHI {secret!r} leaked into {where}"


def test_mixed_folder_three_predictions_one_failure_deterministic(
    checkpoint_file: Path, video_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    checkpoint = recipe.load_checkpoint(checkpoint_file)
    with caplog.at_level(logging.DEBUG):
        first, failures, details = predict_folder(video_folder, checkpoint, n_clips=2, device="cpu")
    second, _, _ = predict_folder(video_folder, checkpoint, n_clips=2, device="cpu")

    assert sorted(first["file"]) == ["clinic_a.avi", "clinic_b.mp4", "echo_001.dcm"]
    assert failures["file"].tolist() == ["corrupt.avi"] and "corrupt.avi" in failures["reason"][0]
    pd.testing.assert_frame_equal(first, second)  # same model and input: same numbers

    rows = first.set_index("file")
    assert rows["EF_pred"].between(15, 85).all()  # expectation over the range bin values
    assert np.allclose(rows[list(RANGE_COLUMNS)].sum(axis=1), 1.0)
    assert (rows["n_clips"] == 2).all() and (rows["EF_clip_sd"] >= 0).all()
    assert rows.loc["echo_001.dcm", "anonymous_id"].startswith("0X")
    assert rows.loc["clinic_a.avi", "anonymous_id"] == ""
    assert rows.loc["clinic_a.avi", "flags"] == "non_standard_size 80x64"
    assert rows.loc["clinic_b.mp4", "flags"] == ""
    attention = details["echo_001.dcm"]
    assert attention["attention"].shape == (2, 4) and attention["frame_indices"].shape == (2, 4)
    assert np.allclose(attention["attention"].sum(axis=1), 1.0, atol=1e-5)

    html = prediction_report_html(first, failures, details)
    assert html.count("<div class='video'>") == 3 and "corrupt.avi" in html
    assert html.count("data:image/png;base64,") == 6  # frames + attention per video
    for where, text in (("CSV", first.to_csv()), ("failures", failures.to_csv()), ("HTML", html)):
        assert_no_phi(text, where)
    assert_no_phi(caplog.text, "logs")


def _visible_text(html: str) -> str:
    """The page without its embedded images (base64 may spell anything)."""
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)


def test_interval_in_predictions_and_report_after_a_csv_round_trip(
    checkpoint_file: Path, video_folder: Path, tmp_path: Path
) -> None:
    checkpoint = {
        **recipe.load_checkpoint(checkpoint_file),
        "interval": {"alpha": 0.1, "half_width": 8.0, "n_val": 60, "n_clips": 2},
    }
    predictions, failures, details = predict_folder(
        video_folder, checkpoint, n_clips=2, device="cpu"
    )
    assert (predictions["EF_upper"] - predictions["EF_lower"]).between(0, 16).all()
    inside = (predictions["EF_lower"] <= predictions["EF_pred"]) & (
        predictions["EF_pred"] <= predictions["EF_upper"]
    )
    assert inside.all() and predictions["EF_lower"].ge(0).all()
    # the report node reads the tables back from CSV: '' becomes NaN there
    predictions.to_csv(tmp_path / "p.csv", index=False)
    failures.to_csv(tmp_path / "f.csv", index=False)
    html = prediction_report_html(
        pd.read_csv(tmp_path / "p.csv"),
        pd.read_csv(tmp_path / "f.csv"),
        details,
        interval_level=0.9,
    )
    text = _visible_text(html)
    assert "nan" not in text.lower()
    summary = text[text.index("<h2>Summary</h2>") : text.index("</table>")]
    assert text.index("<h2>Summary</h2>") < text.index("<div class='video'>")
    assert summary.count("<tr><td>") == 3 and "90% interval" in summary
    assert "clinic_a.avi</td>" in summary and "non_standard_size 80x64" in summary
    first = predictions.iloc[0]
    assert f"{first['EF_lower']:.0f}–{first['EF_upper']:.0f}" in summary

    # a model stored without an interval: empty columns, '–' in the report, still no nan
    plain, _, _ = predict_folder(video_folder, tiny_checkpoint(), n_clips=2, device="cpu")
    assert plain["EF_lower"].isna().all() and plain["EF_upper"].isna().all()
    plain.to_csv(tmp_path / "plain.csv", index=False)
    text = _visible_text(prediction_report_html(pd.read_csv(tmp_path / "plain.csv"), failures, {}))
    assert "nan" not in text.lower() and "<h2>Summary</h2>" in text


def test_other_model_gives_other_numbers(checkpoint_file: Path, video_folder: Path) -> None:
    a, _, _ = predict_folder(video_folder, recipe.load_checkpoint(checkpoint_file), device="cpu")
    b, _, _ = predict_folder(video_folder, tiny_checkpoint(seed=1), device="cpu")
    assert not np.allclose(a["EF_pred"], b["EF_pred"])


def test_resolves_path_folder_and_mlflow_run(
    tmp_path: Path, checkpoint_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    versions = tmp_path / "fewshot_models"
    for version in ("2024-01-01T00.00.00.000Z", "2025-01-01T00.00.00.000Z"):
        (versions / version / "fewshot_models").mkdir(parents=True)
        for name in ("k2_seed0.pt", "k1_seed0.pt"):
            (versions / version / "fewshot_models" / name).write_bytes(checkpoint_file.read_bytes())
    newest = latest_checkpoint(versions)
    assert newest.parent.parent.name.startswith("2025") and newest.name == "k1_seed0.pt"
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        latest_checkpoint(tmp_path / "empty")

    checkpoint, source = resolve_checkpoint(str(checkpoint_file))
    assert source == str(checkpoint_file) and checkpoint["format"] == recipe.CHECKPOINT_FORMAT

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    copy = tmp_path / "cardiac_clip.pt"  # the name the fewshot pipeline logs it under
    copy.write_bytes(checkpoint_file.read_bytes())
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_artifact(str(copy), artifact_path=MLFLOW_CHECKPOINT_ARTIFACT.split("/")[0])
    scratch = tmp_path / "scratch"  # the temp dir of this test: the download leaves nothing
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    for ref in (run.info.run_id, f"runs:/{run.info.run_id}"):
        loaded, source = resolve_checkpoint(ref)
        assert source == f"runs:/{run.info.run_id}/{MLFLOW_CHECKPOINT_ARTIFACT}"
        for key, value in checkpoint["state_dict"].items():
            assert torch.equal(loaded["state_dict"][key], value)
    assert not list(scratch.rglob("*.pt"))
    with pytest.raises(UserError, match="nope.pt': file not found; give a fewshot model"):
        resolve_checkpoint(str(tmp_path / "nope.pt"))


def test_a_file_that_is_not_a_fewshot_model_is_named_with_what_it_is(
    tmp_path: Path, checkpoint_file: Path
) -> None:
    from cardiac_pipeline.model import train

    (tmp_path / "notes.pt").write_text("not a checkpoint")
    torch.save({"arch": "echo-vit-tiny", "state_dict": {}}, tmp_path / "backbone.pt")
    torch.save({"format": train.CHECKPOINT_FORMAT}, tmp_path / "last.pt")
    torch.save({"format": "other/1"}, tmp_path / "other.pt")
    expected = {
        "missing.pt": "file not found",
        "notes.pt": "not a checkpoint",
        "backbone.pt": "a backbone checkpoint",
        "last.pt": "a training state",
        "other.pt": "a checkpoint of another kind (format 'other/1')",
    }
    for name, problem in expected.items():
        with pytest.raises(UserError, match=re.escape(f"{name}': {problem}")):
            check_model(str(tmp_path / name))
    check_model(str(checkpoint_file))  # a fewshot model passes
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no .pt in the folder"):
        check_model(str(tmp_path / "empty"))


def test_predict_pipeline_through_kedro(
    kedro_project,
    checkpoint_file: Path,
    video_folder: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG):
        kedro_project.run(
            "predict",
            runtime_params={
                "predict": {
                    "input_dir": str(video_folder),
                    "model": str(checkpoint_file),
                    "device": "cpu",
                }
            },
        )
    root = kedro_project.path
    predictions = pd.read_csv(
        next((root / "data/07_model_output/predictions.csv").glob("*/predictions.csv"))
    )
    failures = pd.read_csv(
        next((root / "data/07_model_output/prediction_failures.csv").glob("*/*.csv"))
    )
    assert len(predictions) == 3 and failures["file"].tolist() == ["corrupt.avi"]
    # the run ends with its per-video table, printed whole, and where the full one is
    screen = capsys.readouterr().out.strip().splitlines()
    table = screen[screen.index("Predictions: 3 videos, 1 unreadable") :]
    assert [line.split()[0] for line in table[3:6]] == sorted(predictions["file"])
    assert table[-2].startswith("Full table: data/07_model_output/predictions.csv/")
    assert table[-1].startswith("Report: data/08_reporting/predict_report/report.html/")
    report = next((root / "data/08_reporting/predict_report").glob("report.html/*/report.html"))
    assert report.read_text().count("<div class='video'>") == 3

    for path in (root / "data").rglob("*"):
        if path.is_file():
            assert_no_phi(path.read_bytes().decode("utf-8", "replace"), str(path))
    assert_no_phi(caplog.text, "logs")

    runs = mlflow.search_runs(search_all_experiments=True)
    run = runs[runs["tags.kedro.pipeline"] == "predict"].iloc[0]
    assert run["metrics.n_predicted"] == 3 and run["metrics.n_failed"] == 1
    assert run["metrics.videos_per_s"] > 0
    artifacts = mlflow.artifacts.list_artifacts(run_id=run["run_id"], artifact_path="predict")
    assert {Path(a.path).name for a in artifacts} == {
        "predictions.csv",
        "prediction_failures.csv",
        "predict_report.html",
    }


def _rings(n_frames: int, wavelength: float, speed: float) -> np.ndarray:
    """Concentric rings moving outwards: the in-distribution family of the OOD tests."""
    yy, xx = np.mgrid[:112, :112]
    radius = np.hypot(yy - 56, xx - 56)
    return np.stack(
        [
            (100 + 60 * np.sin(radius / wavelength - speed * t)).astype(np.uint8)
            for t in range(n_frames)
        ]
    )


@pytest.fixture(scope="module")
def described_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """A tiny model with an interval and a description of 12 ring videos (its calibration)."""
    from cardiac_pipeline.model.ood import describe_calibration

    folder = tmp_path_factory.mktemp("calibration")
    for i in range(12):
        write_video(folder / f"rings_{i:02d}.avi", _rings(24, 4.0 + i / 6, 0.3 + i / 30), 50)
    checkpoint = {
        **tiny_checkpoint(),
        "interval": {"alpha": 0.1, "half_width": 8.0, "n_val": 12, "n_clips": 2},
    }
    _, _, details = predict_folder(folder, checkpoint, n_clips=2, device="cpu")
    checkpoint["ood"] = describe_calibration(details, sorted(details), quantile=0.99)
    return checkpoint, folder


def test_predict_flags_a_shifted_video_and_not_a_calibration_like_one(
    described_checkpoint: tuple[dict, Path], tmp_path: Path
) -> None:
    checkpoint, calibration = described_checkpoint
    (tmp_path / "like.avi").write_bytes((calibration / "rings_05.avi").read_bytes())
    noise = np.random.default_rng(0).integers(0, 256, size=(24, 112, 112), dtype=np.uint8)
    write_video(tmp_path / "shifted.avi", noise, 50)
    predictions, failures, details = predict_folder(tmp_path, checkpoint, n_clips=2, device="cpu")
    rows = predictions.set_index("file")

    assert rows.loc["shifted.avi", "out_of_distribution"]
    assert rows.loc["shifted.avi", "ood_percentile"] == pytest.approx(100.0)
    assert rows.loc["shifted.avi", "flags"].split(";")[0] == "out_of_distribution"
    assert not rows.loc["like.avi", "out_of_distribution"]
    assert rows.loc["like.avi", "ood_score"] < rows.loc["shifted.avi", "ood_score"]
    assert "out_of_distribution" not in rows.loc["like.avi", "flags"]

    predictions.to_csv(tmp_path / "p.csv", index=False)  # the report node reads the CSV
    html = prediction_report_html(
        pd.read_csv(tmp_path / "p.csv"), failures, details, interval_level=0.9
    )
    text = _visible_text(html)
    shifted = text[text.index("<h2>shifted.avi</h2>") :]
    shifted = shifted[: shifted.index("</div>")]
    assert shifted.index("Out of distribution") < shifted.index("EF ")  # the flag first
    assert "90% interval is not guaranteed" in shifted
    like = text[text.index("<h2>like.avi</h2>") :]
    assert "Out of distribution" not in like[: like.index("</div>")]
    summary = text[text.index("<h2>Summary</h2>") : text.index("</table>")]
    assert summary.count("(not guaranteed)") == 1


def test_a_model_without_a_description_predicts_and_says_so_once(
    video_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        predictions, _, _ = predict_folder(
            video_folder, tiny_checkpoint(), n_clips=2, device="cpu", load_batch=1
        )
    assert len(predictions) == 3 and predictions["EF_pred"].notna().all()
    assert predictions["out_of_distribution"].isna().all()
    assert predictions["ood_score"].isna().all()
    assert caplog.text.count("out-of-distribution flags are not available") == 1
