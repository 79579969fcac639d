"""The benchmark's quick path at toy size: pretrain -> every method kind on one split."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.pipelines.test_fewshot_e2e import TINY


@pytest.mark.slow
def test_benchmark_quick_variant_runs_every_method_kind(kedro_project):
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
        "zero_shot",
        "linear_probe",
        "cardiac_clip",
        "echonet_r2plus1d",
    }
    assert metrics["mae"].between(0, 100).all()
    assert list(out.glob("benchmark_summary.md/*/benchmark_summary.md"))
