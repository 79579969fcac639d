"""Wrong input stops a run with one line before any node runs, and creates nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from kedro.framework.hooks import hook_impl

from cardiac_pipeline.errors import UserError


class NodeRecorder:
    """Records the name of every node that starts."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    @hook_impl
    def before_node_run(self, node: Any) -> None:
        self.ran.append(node.name)


def refused(project, pipeline: str, runtime_params: dict[str, Any] | None = None):
    """The UserError of a run that must not start, and the nodes that ran."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project.path)
    recorder = NodeRecorder()
    with KedroSession.create(project_path=project.path, runtime_params=runtime_params) as session:
        session._hook_manager.register(recorder)
        with pytest.raises(UserError) as info:
            session.run(pipeline_names=[pipeline])
    message = str(info.value)
    assert "\n" not in message
    return message, recorder.ran


def file_list_folder(path: Path, splits: list[str] | None) -> Path:
    """An EchoNet-format folder (FileList.csv, Videos/); the videos are never reached."""
    (path / "Videos").mkdir(parents=True)
    table = pd.DataFrame({"FileName": [f"v{i}" for i in range(4)], "EF": [35.0, 50.0, 60.0, 70.0]})
    if splits is not None:
        table["Split"] = splits
    table.to_csv(path / "FileList.csv", index=False)
    return path


def assert_nothing_ran(project, ran: list[str]) -> None:
    assert ran == []
    assert not (project.path / "data").exists()  # no dataset generated, cached or written
    assert not (project.path / "mlruns").exists()  # no MLflow run opened


@pytest.mark.slow
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "EchoNet-Dynamc", r"echonet_root '.*EchoNet-Dynamc': folder not found"),
        (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", r"'.*empty': the folder is empty"),
        (
            lambda tmp: file_list_folder(tmp / "ds", ["TRAIN"] * 4) / "Videos",
            r"'.*Videos': the folder is empty",
        ),
        (
            lambda tmp: (
                (tmp / "other").mkdir() or (tmp / "other" / "a.txt").touch() or tmp / "other"
            ),
            r"'.*other': no FileList.csv, so not an EchoNet-format folder",
        ),
    ],
    ids=["missing", "empty", "mistyped-videos-folder", "not-echonet"],
)
def test_wrong_echonet_root_stops_before_any_node_and_creates_nothing(
    kedro_project, tmp_path, make, message
) -> None:
    root = make(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    text, ran = refused(kedro_project, "fewshot", {"echonet_root": str(root)})
    assert pd.Series([text]).str.contains(message).all(), text
    assert "--params=echonet_root=" in text  # the fix
    assert_nothing_ran(kedro_project, ran)
    assert sorted(tmp_path.rglob("*")) == before  # the given folder is not created or filled


@pytest.mark.slow
def test_synthetic_default_not_generated_yet_says_how_to_generate(kedro_project) -> None:
    text, ran = refused(kedro_project, "ingestion")
    assert "echonet_root 'data/01_raw/echonet_synthetic': folder not found" in text
    assert "kedro run --pipeline synthetic" in text
    assert_nothing_ran(kedro_project, ran)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"trainig": {"epochs": 1}}, "unknown section(s) 'trainig' (did you mean 'training'?)"),
        (
            {"ingestion": {"min_frame": 8}},
            "'ingestion': unknown key(s) 'min_frame' (did you mean 'min_frames'?)",
        ),
        (
            {"preprocessing": {"sise": 64}},
            "'preprocessing': unknown key(s) 'sise' (did you mean 'size'?)",
        ),
        (
            {"predict": {"input_dri": "x"}},
            "'predict': unknown key(s) 'input_dri' (did you mean 'input_dir'?)",
        ),
        (
            {"fewshot": {"shots": 4}},
            "'fewshot.shots': expected a list, got 4; write fewshot.shots=[4]",
        ),
        ({"training": {"epochs": 0}}, "'training.epochs': must be >= 1, got 0"),
    ],
    ids=[
        "misspelt-section",
        "ingestion-key",
        "preprocessing-key",
        "predict-key",
        "scalar-shots",
        "epochs-0",
    ],
)
def test_wrong_parameters_stop_before_any_node(kedro_project, params, message) -> None:
    text, ran = refused(kedro_project, "fewshot", params)
    assert message in text
    assert_nothing_ran(kedro_project, ran)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("splits", "found"),
    [(["TEST"] * 4, "its videos are all TEST"), (None, "it has no Split column")],
    ids=["all-test", "no-split-column"],
)
def test_a_folder_without_train_videos_asks_for_a_split_file(
    kedro_project, tmp_path, splits, found
) -> None:
    root = file_list_folder(tmp_path / "clinic", splits)
    text, ran = refused(kedro_project, "fewshot", {"echonet_root": str(root)})
    assert f"FileList.csv has no TRAIN video ({found}); give the split with " in text
    assert "--params=fewshot.split_file=" in text
    assert_nothing_ran(kedro_project, ran)


@pytest.mark.slow
def test_a_missing_or_malformed_split_file_is_named(kedro_project, tmp_path) -> None:
    root = file_list_folder(tmp_path / "clinic", None)
    missing = tmp_path / "splt.csv"
    text, ran = refused(
        kedro_project,
        "fewshot",
        {"echonet_root": str(root), "fewshot": {"split_file": str(missing)}},
    )
    assert f"fewshot.split_file '{missing}': file not found" in text
    assert_nothing_ran(kedro_project, ran)

    bad = tmp_path / "split.csv"
    bad.write_text("FileName;Split\nv0;TRAIN\n")
    text, _ = refused(
        kedro_project, "fewshot", {"echonet_root": str(root), "fewshot": {"split_file": str(bad)}}
    )
    assert f"{bad}: split file lacks columns ['FileName', 'Split']" in text


@pytest.mark.slow
def test_malformed_file_list_is_named(kedro_project, tmp_path) -> None:
    root = tmp_path / "clinic"
    (root / "Videos").mkdir(parents=True)
    (root / "FileList.csv").write_text("Name,EF\nv0,50\n")
    text, ran = refused(kedro_project, "fewshot", {"echonet_root": str(root)})
    assert "FileList.csv" in text and "FileName" in text
    assert_nothing_ran(kedro_project, ran)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("input_dir", "message"),
    [
        (None, "predict.input_dir is not set"),
        ("empty", "no video in the folder (AVI, MP4 or DICOM"),
        ("nowhere", "folder not found"),
    ],
)
def test_predict_on_no_videos_stops_before_any_node(
    kedro_project, tmp_path, input_dir, message
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a video")
    params = {"predict": {"input_dir": str(tmp_path / input_dir)}} if input_dir else {}
    text, ran = refused(kedro_project, "predict", params)
    assert message in text
    assert_nothing_ran(kedro_project, ran)


@pytest.mark.slow
def test_predict_without_any_model_says_to_run_fewshot(kedro_project, tmp_path) -> None:
    from cardiac_pipeline.echo.video import write_video
    from tests.echo.test_inputs import moving_video

    write_video(tmp_path / "a.avi", moving_video(8), 50)
    text, ran = refused(kedro_project, "predict", {"predict": {"input_dir": str(tmp_path)}})
    assert "no fewshot model yet; run `kedro run --pipeline fewshot` first" in text
    assert_nothing_ran(kedro_project, ran)
