"""`kedro run` on wrong input: one line on stderr, exit 2, no traceback; program errors keep theirs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cardiac_pipeline import cli
from cardiac_pipeline.errors import USER_ERROR_EXIT_CODE, UserError, one_line


def kedro_run(project: Path, *args: str) -> subprocess.CompletedProcess:
    """The real CLI in a project copy, as a user types it."""
    kedro = Path(sys.executable).with_name("kedro")
    command = [str(kedro)] if kedro.exists() else [sys.executable, "-m", "kedro"]
    return subprocess.run(
        [*command, "run", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            "KEDRO_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "1",
            "COLUMNS": "100",
        },
    )


FIRST_SCREEN = 15  # lines a user error may take, the Error line last


def assert_first_screen_error(result: subprocess.CompletedProcess, start: str) -> None:
    """Exit 2 and at most FIRST_SCREEN lines (stdout, then stderr), the Error line last."""
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == USER_ERROR_EXIT_CODE, result.stdout + result.stderr
    assert len(lines) <= FIRST_SCREEN, "\n".join(lines)
    assert lines[-1].startswith(start), lines[-1]
    assert "Warning" not in result.stdout and "Traceback" not in result.stdout + result.stderr


@pytest.mark.slow
def test_misspelt_section_through_kedro_run_is_one_line_and_exit_2(kedro_project) -> None:
    result = kedro_run(kedro_project.path, "--pipeline", "fewshot", "--params=trainig.epochs=1")
    assert result.returncode == USER_ERROR_EXIT_CODE
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], (
        result.stderr
    )  # exactly one line
    assert result.stderr.startswith("Error: parameters: unknown section(s) 'trainig'")
    assert "(did you mean 'training'?)" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "Running node" not in result.stdout
    assert not (kedro_project.path / "data").exists()


@pytest.mark.slow
def test_misspelt_parameter_fits_the_first_screen(kedro_project) -> None:
    # --pipeline: the README's spelling (Kedro deprecates it; its warning goes to info.log)
    result = kedro_run(kedro_project.path, "--pipeline", "fewshot", "--params=trainig.epochs=1")
    assert_first_screen_error(result, "Error: parameters: unknown section(s) 'trainig'")
    assert "register_new_resolver" in (kedro_project.path / "info.log").read_text()


@pytest.mark.slow
def test_every_wrong_predict_model_is_one_error_line_before_any_video(
    kedro_project, tmp_path
) -> None:
    import mlflow
    import torch

    from cardiac_pipeline.echo.video import write_video
    from tests.echo.test_inputs import moving_video

    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "a.avi", moving_video(8), 25)
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    torch.save({"arch": "echo-vit-tiny", "state_dict": {}, "meta": {}}, tmp_path / "backbone.pt")
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    experiment = mlflow.set_experiment("predict-model-errors")  # not another test's default
    with mlflow.start_run(
        experiment_id=experiment.experiment_id
    ) as run:  # a run that logged no model
        mlflow.log_param("k", 1)
    cases = {
        str(tmp_path / "missing.pt"): "file not found",
        str(tmp_path / "notes.pt"): "not a checkpoint",
        str(tmp_path / "backbone.pt"): "a backbone checkpoint",
        run.info.run_id: "the MLflow run has no model",
    }
    for model, problem in cases.items():
        result = kedro_run(
            kedro_project.path,
            "--pipelines",
            "predict",
            f"--params=predict.input_dir={videos},predict.model={model}",
        )
        assert_first_screen_error(result, f"Error: predict.model '{model}': {problem}")
        assert "give a fewshot model" in result.stderr
        assert "predict_lvef_for_folder" not in result.stdout  # no node ran
    assert not (kedro_project.path / "data").exists()


@pytest.mark.slow
def test_the_paper_gpu_run_file_parses_and_names_the_dataset_to_set(kedro_project) -> None:
    run_file = Path(__file__).resolve().parents[1] / "conf" / "runs" / "paper_gpu.yml"
    result = kedro_run(kedro_project.path, "--config", str(run_file))
    assert result.returncode == USER_ERROR_EXIT_CODE, result.stderr
    assert result.stderr.strip().startswith(
        "Error: echonet_root '/path/to/EchoNet-Dynamic': folder not found"
    )
    assert "Traceback" not in result.stdout + result.stderr
    assert not (kedro_project.path / "data").exists()


@pytest.mark.slow
def test_missing_echonet_root_through_kedro_run_creates_nothing(kedro_project, tmp_path) -> None:
    missing = tmp_path / "EchoNet"
    result = kedro_run(
        kedro_project.path, "--pipelines=fewshot", f"--params=echonet_root={missing}"
    )
    assert result.returncode == USER_ERROR_EXIT_CODE
    assert result.stderr.strip() == (
        f"Error: echonet_root '{missing}': folder not found; give the folder holding "
        "FileList.csv and Videos/ with --params=echonet_root=/path/to/folder "
        "(conf/local/globals.yml to keep it)"
    )
    assert "Traceback" not in result.stdout + result.stderr
    assert not missing.exists() and not (kedro_project.path / "data").exists()


def _run_cli(monkeypatch: pytest.MonkeyPatch, error: BaseException):
    def fail(**kwargs):
        raise error

    monkeypatch.setattr(cli.kedro_run, "callback", fail)
    return CliRunner().invoke(cli.cli, ["run", "--pipelines", "fewshot"])


def test_user_error_is_one_line_without_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    result = _run_cli(monkeypatch, UserError("training.epochs must be >= 1, got 0;\n fix it"))
    assert result.exit_code == USER_ERROR_EXIT_CODE
    assert result.output == "Error: training.epochs must be >= 1, got 0; fix it\n"
    assert "Traceback" not in result.output


def test_program_error_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    result = _run_cli(monkeypatch, ZeroDivisionError("a bug"))
    assert isinstance(result.exception, ZeroDivisionError)  # raised on, not turned into a line
    assert result.exit_code == 1


def test_known_data_errors_are_user_errors() -> None:
    from cardiac_pipeline.echo.echonet import EchoNetFormatError

    assert issubclass(EchoNetFormatError, UserError) and issubclass(UserError, ValueError)
    assert one_line(UserError("a\n  b")) == "a b"


def test_project_cli_keeps_every_option_of_kedro_run() -> None:
    from kedro.framework.cli.project import run

    ours = cli.cli.commands["run"]
    assert [p.name for p in ours.params] == [p.name for p in run.params]
    from kedro.framework.cli.utils import find_run_command

    assert find_run_command("cardiac_pipeline") is ours  # python -m cardiac_pipeline
