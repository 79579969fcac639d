"""Bootstrap CIs and split-conformal intervals: properties that hold in exact arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cardiac_pipeline.echo.metrics import (
    bootstrap_ef_metrics,
    ef_metrics,
    format_ci_table,
    format_paired_differences,
    paired_bootstrap_difference,
    paired_differences,
    resampled_ef_metrics,
    summarise_with_ci,
)
from cardiac_pipeline.echo.uncertainty import (
    bootstrap_weights,
    conformal_calibration,
    conformal_half_width,
    conformal_rank,
    coverage_key,
    interval_covers,
    interval_text,
    percentile_interval,
    prediction_interval,
)


def _cohort(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    true = rng.uniform(15.0, 80.0, n)
    return true, np.round(true + rng.normal(0.0, 7.0, n))  # rounding makes ties


def test_weights_are_resamples_of_n_videos_and_reproducible() -> None:
    weights = bootstrap_weights(7, 50, seed=3)
    assert weights.shape == (50, 7)
    assert (weights.sum(axis=1) == 7).all() and (weights >= 0).all()
    assert np.array_equal(weights, bootstrap_weights(7, 50, seed=3))
    assert not np.array_equal(weights, bootstrap_weights(7, 50, seed=4))


def test_unit_weights_give_ef_metrics() -> None:
    true, pred = _cohort(40)
    resampled = resampled_ef_metrics(true, pred, np.ones((1, 40)))
    expected = ef_metrics(true, pred)
    for name, values in resampled.items():
        assert values[0] == pytest.approx(expected[name], rel=1e-9, abs=1e-12)


def test_weighted_auroc_matches_sklearn_with_sample_weights() -> None:
    true, pred = _cohort(60, seed=1)
    weights = bootstrap_weights(60, 5, seed=0)
    got = resampled_ef_metrics(true, pred, weights)["auroc_ef_lt_50"]
    for row, value in zip(weights, got, strict=True):
        assert value == pytest.approx(roc_auc_score(true < 50, -pred, sample_weight=row))


def test_bootstrap_ci_contains_the_point_estimate_and_narrows_with_n() -> None:
    widths = []
    for n in (30, 480):
        true, pred = _cohort(n, seed=2)
        point = ef_metrics(true, pred)
        ci = bootstrap_ef_metrics(true, pred, n_resamples=1000, seed=0)
        for name in ("mae", "rmse", "r2", "bias", "auroc_ef_lt_50"):
            low, high = ci[name]
            assert low <= point[name] <= high, name
        widths.append(ci["mae"][1] - ci["mae"][0])
    assert widths[1] < widths[0] / 2  # 16x the videos: about a quarter of the width


def test_percentile_interval_skips_undefined_resamples() -> None:
    assert percentile_interval([1.0, math.nan, 3.0], 0.5) == pytest.approx((1.5, 2.5))
    assert all(math.isnan(v) for v in percentile_interval([math.nan], 0.95))


def test_paired_ci_of_identical_predictions_is_exactly_zero() -> None:
    true, pred = _cohort(50, seed=3)
    for name, (diff, low, high) in paired_bootstrap_difference(true, pred, pred.copy()).items():
        assert (diff, low, high) == (0.0, 0.0, 0.0), name


def test_paired_ci_of_a_constant_offset_covers_the_offset() -> None:
    true, pred = _cohort(50, seed=4)
    diffs = paired_bootstrap_difference(true, pred + 3.0, pred)
    diff, low, high = diffs["bias"]
    assert diff == pytest.approx(3.0)
    assert low - 1e-9 <= 3.0 <= high + 1e-9
    # a perfect model against one off by 3 everywhere: MAE differs by exactly 3
    diff, low, high = paired_bootstrap_difference(true, true + 3.0, true)["mae"]
    assert (diff, low, high) == pytest.approx((3.0, 3.0, 3.0))


def test_paired_ci_excludes_zero_for_a_clearly_better_model() -> None:
    true, good = _cohort(200, seed=5)
    worse = good + np.random.default_rng(0).normal(0.0, 6.0, 200)
    diff, low, high = paired_bootstrap_difference(true, worse, good)["mae"]
    assert low > 0 and diff > 0


def test_pooled_seeds_pair_a_single_comparator_with_every_seed() -> None:
    true, pred = _cohort(40, seed=6)
    seeds = np.stack([pred, pred + 1.0, pred - 1.0])
    diff, low, high = paired_bootstrap_difference(true, seeds, pred)["bias"]
    assert diff == pytest.approx(0.0, abs=1e-9)  # +1, -1 and 0 average to 0
    assert low == pytest.approx(0.0, abs=1e-9) and high == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="seeds"):
        paired_bootstrap_difference(true, seeds, seeds[:2])


def test_conformal_rank_uses_the_finite_sample_correction() -> None:
    assert conformal_rank(9, 0.1) == 9  # ceil(10 * 0.9)
    assert conformal_rank(99, 0.1) == 90
    assert conformal_rank(100, 0.1) == 91  # ceil(90.9)
    assert conformal_rank(5, 0.1) == 6  # more than n: no finite interval
    assert conformal_half_width(np.arange(1.0, 6.0), 0.1) == math.inf
    assert conformal_half_width(np.arange(1.0, 10.0), 0.1) == 9.0
    with pytest.raises(ValueError, match="alpha"):
        conformal_rank(10, 1.5)
    with pytest.raises(ValueError, match="VAL"):
        conformal_half_width([], 0.1)


@pytest.mark.parametrize(("n_val", "alpha"), [(9, 0.1), (60, 0.1), (60, 0.2), (200, 0.05)])
def test_conformal_coverage_on_synthetic_residuals_lands_near_target(
    n_val: int, alpha: float
) -> None:
    # exchangeable VAL and TEST errors (heavy-tailed): the marginal coverage of the
    # interval is between 1 - alpha and 1 - alpha + 1 / (n_val + 1) in exact arithmetic
    rng = np.random.default_rng(11)
    trials, n_test = 4000, 50
    errors = rng.standard_t(df=3, size=(trials, n_val + n_test)) * 6.0
    covered = []
    for row in errors:
        half_width = conformal_half_width(np.abs(row[:n_val]), alpha)
        covered.append(np.mean(np.abs(row[n_val:]) <= half_width))
    coverage = float(np.mean(covered))
    # Monte Carlo SE over 4000 x 50 draws is < 0.005; 0.015 leaves three SEs
    assert 1 - alpha - 0.015 <= coverage <= 1 - alpha + 1 / (n_val + 1) + 0.015


def test_interval_is_clipped_to_the_ef_range_and_covers() -> None:
    lower, upper = prediction_interval([5.0, 50.0, 97.0], 8.0)
    assert lower.tolist() == [0.0, 42.0, 89.0] and upper.tolist() == [13.0, 58.0, 100.0]
    assert interval_covers([0.0, 59.0, 100.0], [5.0, 50.0, 97.0], 8.0).tolist() == [
        True,
        False,
        True,
    ]
    assert interval_text(41.2, 33.4, 49.0, 0.9) == "EF 41, 90% interval 33-49"
    assert coverage_key(0.1) == "coverage_90"
    calibration = conformal_calibration([50.0] * 19, [52.0] * 18 + [60.0], 0.1)
    assert calibration == {"alpha": 0.1, "half_width": 2.0, "n_val": 19}


def _long(true: np.ndarray, preds: dict[tuple[str, int, int], np.ndarray]) -> pd.DataFrame:
    frames = []
    for (method, k, seed), pred in preds.items():
        frames.append(
            pd.DataFrame(
                {
                    "method": method,
                    "k": k,
                    "seed": seed,
                    "FileName": [f"v{i:03d}" for i in range(true.size)],
                    "EF_true": true,
                    "EF_pred": pred,
                    "covered": (np.abs(pred - true) <= 8.0).astype(float),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def test_summary_counts_a_seed_independent_model_once() -> None:
    true, pred = _cohort(80, seed=7)
    table = _long(
        true,
        {
            **{("zero_shot", k, s): pred for k in (1, 2) for s in (0, 1, 2)},
            **{("model", k, s): pred + s - k for k in (1, 2) for s in (0, 1, 2)},
        },
    )
    summary = summarise_with_ci(
        table, video_means={"coverage_90": "covered"}, n_resamples=200, bootstrap_seed=0
    )
    zero = summary[summary["method"] == "zero_shot"]
    assert (zero["n"] == 1).all() and not zero["seed_dependent"].any()
    assert zero["mae_sd"].isna().all()
    model = summary[summary["method"] == "model"]
    assert (model["n"] == 3).all() and model["seed_dependent"].all()
    for row in summary.itertuples():
        assert row.mae_ci_low <= row.mae_mean <= row.mae_ci_high
        assert 0.0 <= row.coverage_90_ci_low <= row.coverage_90_ci_high <= 1.0
    text = format_ci_table(summary, ["method", "k"], ["mae", "coverage_90"])
    assert text.count("| zero_shot |") == 1 and "| zero_shot | any | 1 |" in text
    assert text.count("| model |") == 2 and " ± " in text and " to " in text
    assert "nan" not in text


def test_paired_differences_per_seed_pooled_and_across_k() -> None:
    true, pred = _cohort(60, seed=8)
    table = _long(
        true,
        {
            **{("reference", k, s): pred for k in (1, 4) for s in (0, 1)},
            **{("model", k, s): pred + 2.0 + s for k in (1, 4) for s in (0, 1)},
        },
    )
    diffs = paired_differences(
        table,
        [["model", "reference"], ["model@4", "model@1"]],
        n_resamples=200,
    )
    same_k = diffs[diffs["comparison"] == "model - reference"]
    assert sorted(same_k["k_a"].unique()) == [1, 4]
    # per seed 0, 1 and pooled at each k; the reference has no seed dependence
    assert same_k.groupby("k_a")["seed"].apply(list).tolist() == [[0, 1, "pooled"]] * 2
    assert same_k["bias_diff"].to_numpy() == pytest.approx([2.0, 3.0, 2.5] * 2)
    across = diffs[diffs["comparison"] == "model@4 - model@1"]
    assert len(across) == 3 and (across["k_a"] == 4).all() and (across["k_b"] == 1).all()
    assert (across["mae_diff"] == 0.0).all() and (across["mae_ci_high"] == 0.0).all()
    text = format_paired_differences(diffs)
    assert "4 vs 1" in text and "pooled" in text and "nan" not in text
