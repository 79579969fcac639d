"""The benchmark's quick path at toy size: pretrain -> every method kind on one split."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.conftest import base_recipe, conf_base_parameters
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
            "synthetic": {"generate": {**TINY["synthetic"]["generate"], "n_val": 6}},
            "benchmark": {
                "variant": "quick",
                "recipe": {"clips": {"frames": 4, "period": 4}, "training": {"epochs": 1}},
                "variants": {
                    "quick": {
                        "shots": [1],
                        "seeds": [0],
                        "val_size": 4,
                        "calibration_size": 2,
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
    summary = pd.read_csv(next(out.glob("benchmark_summary.csv/*/benchmark_summary.csv")))
    assert {"mae_ci_low", "mae_ci_high", "coverage_90_mean"} <= set(summary.columns)
    assert (summary.loc[summary["method"] == "zero_shot", "n"] == 1).all()
    paired = pd.read_csv(
        next(out.glob("benchmark_paired_differences.csv/*/benchmark_paired_differences.csv"))
    )
    assert {"cardiac_clip - zero_shot", "cardiac_clip - linear_probe"} <= set(paired["comparison"])
    predicted = pd.read_csv(
        next(out.parent.glob("07_model_output/benchmark_predictions.csv/*/*.csv"))
    )
    # every method also predicts the 2 held-out VAL videos that calibrate its interval
    counts = predicted.groupby(["method", "role"]).size().unstack(fill_value=0)
    assert set(counts.columns) == {"val", "calibration", "test"}
    assert (counts[["val", "calibration", "test"]] == [4, 2, 6]).all(axis=None), counts
    # the from-scratch regressor starts at its k-shot training mean, not EchoNet's 55.6
    splits = out.parent / "05_model_input/benchmark_splits"
    split = pd.read_csv(next(splits.glob("*/benchmark_splits/k1_seed0.csv")))
    assert initial_efs == [
        pytest.approx(split.loc[split["role"] == "train", "EF"].mean(), abs=1e-3)
    ]


def _predictions(seed: int = 0) -> pd.DataFrame:
    """Long VAL + TEST predictions of a toy benchmark: 2 k, 2 seeds, label-free zero-shot."""
    import numpy as np

    rng = np.random.default_rng(seed)
    videos = {"val": 40, "test": 60}
    true = {role: rng.uniform(20, 75, n) for role, n in videos.items()}
    noise = {role: rng.normal(0, 6, n) for role, n in videos.items()}
    frames = []
    for k in (1, 16):
        for s in (0, 1):
            for method, offset in (
                ("zero_shot", 0.0),
                ("cardiac_clip", -1.0 * (k == 16) + 0.5 * s),
                ("cardiac_clip_mean_pool", 2.0),
            ):
                for role, n in videos.items():
                    scale = 0.5 if method == "cardiac_clip" and k == 16 else 1.0
                    frames.append(
                        pd.DataFrame(
                            {
                                "method": method,
                                "k": k,
                                "seed": s,
                                "FileName": [f"{role}{i}" for i in range(n)],
                                "role": role,
                                "EF_true": true[role],
                                "EF_pred": true[role] + scale * noise[role] + offset,
                            }
                        )
                    )
    return pd.concat(frames, ignore_index=True)


def test_summarise_benchmark_gives_cis_coverage_and_paired_differences() -> None:
    from cardiac_pipeline.pipelines.benchmark.nodes import summarise_benchmark

    predictions = _predictions()
    metrics = (
        predictions[predictions["role"] == "test"][["method", "k", "seed"]]
        .drop_duplicates()
        .assign(seconds=1.0)
    )
    comparisons = [
        ["cardiac_clip", "cardiac_clip_mean_pool"],
        ["cardiac_clip", "zero_shot"],
        ["cardiac_clip", "echonet_r2plus1d"],  # not in this run: left out
        ["cardiac_clip@16", "cardiac_clip@1"],
    ]
    summary, markdown, _, paired, paired_markdown = summarise_benchmark(
        metrics,
        predictions,
        {**conf_base_parameters()["benchmark"], "comparisons": comparisons},
        base_recipe(evaluation={"bootstrap_resamples": 200, "interval_alpha": 0.1}).evaluation,
    )
    zero = summary[summary["method"] == "zero_shot"]
    assert (zero["n"] == 1).all() and not zero["seed_dependent"].any()
    assert (summary[summary["method"] == "cardiac_clip"]["n"] == 2).all()
    assert summary["coverage_90_mean"].between(0.75, 1.0).all()
    assert (summary["mae_ci_low"] <= summary["mae_mean"]).all()
    assert (summary["mae_mean"] <= summary["mae_ci_high"]).all()
    assert markdown.count("| zero_shot |") == 1 and "coverage_90" in markdown
    assert "nan" not in markdown and "nan" not in paired_markdown
    assert set(paired["comparison"]) == {
        "cardiac_clip - cardiac_clip_mean_pool",
        "cardiac_clip - zero_shot",
        "cardiac_clip@16 - cardiac_clip@1",
    }
    # seeds 0, 1 and pooled at each k
    assert len(paired[paired["comparison"] == "cardiac_clip - zero_shot"]) == 6
    # at k = 16 cardiac_clip halves the noise: better MAE than mean pooling, CI below 0
    best = paired[
        (paired["comparison"] == "cardiac_clip - cardiac_clip_mean_pool")
        & (paired["k_a"] == 16)
        & (paired["seed"] == "pooled")
    ].iloc[0]
    assert best["mae_ci_high"] < 0
