"""Predict without predict.model: the newest fewshot run's model with the lowest VAL MAE."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cardiac_pipeline.model.predict import default_checkpoint
from tests.conftest import conf_base_parameters


def _save(path: Path, val_mae: float | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {} if val_mae is None else {"best_val_mae": val_mae}
    torch.save({"format": "x", "meta": meta}, path)


def test_lowest_val_mae_of_the_newest_run_wins_not_the_first_name(tmp_path: Path) -> None:
    models = tmp_path / "fewshot_models"
    old = models / "2025-01-01T00.00.00.000Z" / "fewshot_models"
    new = models / "2026-01-01T00.00.00.000Z" / "fewshot_models"
    _save(old / "k1_seed0.pt", 1.0)  # better, but an older run
    _save(new / "k16_seed0.pt", 9.5)  # first by name
    _save(new / "k1_seed0.pt", 8.0)
    _save(new / "k2_seed0.pt", 7.25)
    chosen, why = default_checkpoint(models)
    assert chosen == new / "k2_seed0.pt"
    assert "lowest VAL MAE (7.25)" in why and "3 models" in why
    assert "2026-01-01T00.00.00.000Z" in why


def test_ties_and_missing_scores_go_by_natural_name_order(tmp_path: Path) -> None:
    _save(tmp_path / "k16_seed0.pt", 5.0)
    _save(tmp_path / "k2_seed0.pt", 5.0)
    _save(tmp_path / "k1_seed0.pt", None)
    assert default_checkpoint(tmp_path)[0].name == "k2_seed0.pt"  # tie: k2 before k16
    (tmp_path / "k16_seed0.pt").unlink()
    (tmp_path / "k2_seed0.pt").unlink()
    _save(tmp_path / "k16_seed0.pt", None)
    chosen, why = default_checkpoint(tmp_path)
    assert chosen.name == "k1_seed0.pt" and "no VAL score" in why


def test_no_checkpoint_says_to_run_fewshot(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run the fewshot pipeline first"):
        default_checkpoint(tmp_path)


def _fewshot_run(models_dir: Path) -> None:
    from tests.pipelines.test_predict import tiny_checkpoint

    run = models_dir / "2026-01-01T00.00.00.000Z" / "fewshot_models"
    run.mkdir(parents=True)
    for name, mae in (("k1_seed0", 9.0), ("k16_seed0", 6.5)):
        checkpoint = tiny_checkpoint()
        checkpoint["meta"]["best_val_mae"] = mae
        torch.save(checkpoint, run / f"{name}.pt")


def _video_folder(path: Path) -> Path:
    from cardiac_pipeline.echo.video import write_video
    from tests.echo.test_inputs import moving_video

    path.mkdir()
    write_video(path / "a.avi", moving_video(16), 50)
    return path


def test_predict_node_logs_which_model_and_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from cardiac_pipeline.pipelines.predict.nodes import predict_input_folder

    _fewshot_run(tmp_path / "models")
    predict = {
        **conf_base_parameters()["predict"],
        "input_dir": str(_video_folder(tmp_path / "videos")),
        "models_dir": str(tmp_path / "models"),
        "device": "cpu",
    }
    with caplog.at_level(logging.INFO, logger="cardiac_pipeline"):
        predictions, _, details = predict_input_folder(predict)
    chosen = [r.getMessage() for r in caplog.records if r.getMessage().startswith("predict: model")]
    assert len(chosen) == 1 and "k16_seed0.pt" in chosen[0]
    assert "lowest VAL MAE (6.50) of the 2 models" in chosen[0]
    assert details["model_source"].endswith("k16_seed0.pt") and len(predictions) == 1


@pytest.mark.slow
def test_predict_through_kedro_tags_which_model_and_why(kedro_project, tmp_path: Path) -> None:
    import mlflow

    _fewshot_run(kedro_project.path / "data/06_models/fewshot_models")
    videos = _video_folder(tmp_path / "videos")
    kedro_project.run(
        "predict", runtime_params={"predict": {"input_dir": str(videos), "device": "cpu"}}
    )
    run = mlflow.search_runs(search_all_experiments=True).iloc[0]
    assert run["tags.predict.model"].endswith("k16_seed0.pt")
    assert run["tags.predict.model_rule"].startswith("lowest VAL MAE (6.50) of the 2 models")
