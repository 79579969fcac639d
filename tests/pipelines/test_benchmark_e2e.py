"""The benchmark's quick path at toy size: pretrain -> every method kind on one split."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.pipelines.test_fewshot_e2e import TINY


@pytest.mark.slow
def test_benchmark_quick_variant_runs_every_method_kind(kedro_project, monkeypatch):
    from cardiac_pipeline.model import video_regressor

    initial_efs: list[float] = []

    class RecordingRegressor(video_regressor.EchoNetVideoRegressor):
        def __init__(self, **kwargs):
            initial_efs.append(kwargs.get("initial_ef", video_regressor.TYPICAL_EF))
            super().__init__(**kwargs)

    monkeypatch.setattr(video_regressor, "EchoNetVideoRegressor", RecordingRegressor)
    kedro_project.set_params(
        {
            **TINY,
            "benchmark": {
                "variant": "quick",
                "recipe": {"clips": {"frames": 4, "period": 4}, "training": {"epochs": 1}},
                "variants": {
                    "quick": {
                        "shots": [1],
                        "seeds": [0],
                        "val_size": 4,
                        "methods": [
                            "zero_shot",
                            "linear_probe",
                            "cardiac_clip",
                            "echonet_r2plus1d",
                        ],
                    }
                },
                "methods": {
                    "echonet_r2plus1d": {
                        "kind": "echonet_regressor",
                        "clips": {"frames": 4, "period": 4},
                    }
                },
            },
        }
    )
    kedro_project.run("benchmark")
    out = kedro_project.path / "data/08_reporting"
    metrics = pd.read_csv(next(out.glob("benchmark_metrics.csv/*/benchmark_metrics.csv")))
    assert set(metrics["method"]) == {
        "mean_predictor",
        "val_median_predictor",
        "zero_shot",
        "linear_probe",
        "cardiac_clip",
        "echonet_r2plus1d",
    }
    assert metrics["mae"].between(0, 100).all()
    assert list(out.glob("benchmark_summary.md/*/benchmark_summary.md"))
    # the from-scratch regressor starts at its k-shot training mean, not EchoNet's 55.6
    splits = out.parent / "05_model_input/benchmark_splits"
    split = pd.read_csv(next(splits.glob("*/benchmark_splits/k1_seed0.csv")))
    assert initial_efs == [
        pytest.approx(split.loc[split["role"] == "train", "EF"].mean(), abs=1e-3)
    ]
