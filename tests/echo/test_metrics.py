"""Metrics against numbers worked out by hand on tiny arrays."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cardiac_pipeline.echo.metrics import (
    bootstrap_ef_metrics,
    constant_baseline,
    coverage_by_ef_range,
    ef_metrics,
    limits_of_agreement,
    mae_by_range,
    mean_sd_text,
    reduced_ef_auroc,
    split_baselines,
    summarise_over_seeds,
)


def test_ef_metrics_hand_computed_unbiased() -> None:
    # errors 5, -5, 0; SS_res = 50, SS_tot = 400 + 0 + 400 = 800
    m = ef_metrics([30.0, 50.0, 70.0], [35.0, 45.0, 70.0])
    assert m["n"] == 3
    assert m["mae"] == pytest.approx(10.0 / 3.0)
    assert m["rmse"] == pytest.approx(math.sqrt(50.0 / 3.0))  # 4.0825
    assert m["r2"] == pytest.approx(0.9375)
    assert m["bias"] == pytest.approx(0.0)
    assert m["auroc_ef_lt_50"] == pytest.approx(1.0)
    assert m["auroc_ef_lt_40"] == pytest.approx(1.0)


def test_ef_metrics_hand_computed_overestimation_gives_positive_bias() -> None:
    # errors +10, +4; SS_res = 116, SS_tot = 200
    m = ef_metrics(np.array([40.0, 60.0]), pd.Series([50.0, 64.0]))
    assert m["mae"] == pytest.approx(7.0)
    assert m["rmse"] == pytest.approx(math.sqrt(58.0))
    assert m["bias"] == pytest.approx(7.0)
    assert m["r2"] == pytest.approx(1.0 - 116.0 / 200.0)


def test_auroc_partial_ranking() -> None:
    # positives (EF<50): 30, 45 with preds 50, 40; negatives 60, 70 with preds 45, 60.
    # pairs where the positive has the LOWER prediction: (40<45), (40<60), (50<60) -> 3 of 4.
    assert reduced_ef_auroc([30, 45, 60, 70], [50, 40, 45, 60], 50.0) == pytest.approx(0.75)


def test_auroc_perfect_and_inverted() -> None:
    true = np.array([20.0, 35.0, 45.0, 60.0, 65.0, 75.0])
    assert reduced_ef_auroc(true, true, 50.0) == pytest.approx(1.0)
    # predicting high EF exactly for the reduced ones: every pair mis-ordered
    assert reduced_ef_auroc(true, 100.0 - true, 50.0) == pytest.approx(0.0)


def test_auroc_nan_when_single_class_and_other_metrics_survive() -> None:
    m = ef_metrics([55.0, 60.0, 65.0], [50.0, 62.0, 70.0])
    assert math.isnan(m["auroc_ef_lt_50"])
    assert math.isnan(m["auroc_ef_lt_40"])
    assert m["mae"] == pytest.approx(4.0)
    all_reduced = ef_metrics([20.0, 30.0], [25.0, 35.0])
    assert math.isnan(all_reduced["auroc_ef_lt_50"])


def test_thresholds_are_arguments() -> None:
    m = ef_metrics([30, 45, 60, 70], [50, 40, 45, 60], reduced_ef_thresholds=(35.0, 62.5))
    assert set(m) == {"n", "mae", "rmse", "r2", "bias", "auroc_ef_lt_35", "auroc_ef_lt_62p5"}
    # EF<35: positive 30 (pred 50) vs preds 40, 45, 60 -> ranked above only 60 -> 1/3
    assert m["auroc_ef_lt_35"] == pytest.approx(1.0 / 3.0)


def test_r2_nan_when_true_ef_constant() -> None:
    assert math.isnan(ef_metrics([50.0, 50.0], [49.0, 51.0])["r2"])


@pytest.mark.parametrize(
    ("y_true", "y_pred", "message"),
    [
        ([50.0, 60.0], [50.0], "differ in length"),
        ([], [], "y_true: is empty"),
        ([50.0, np.nan], [50.0, 60.0], "y_true: 1 non-finite"),
        ([50.0, 60.0], [np.inf, 60.0], "y_pred: 1 non-finite value.*position 0"),
        ([[50.0, 60.0]], [[50.0, 60.0]], "1-D"),
        (["a", "b"], [1.0, 2.0], "y_true: cannot be read as numbers"),
    ],
)
def test_bad_inputs_raise_clear_value_error(y_true, y_pred, message) -> None:
    with pytest.raises(ValueError, match=message):
        ef_metrics(y_true, y_pred)


def test_limits_of_agreement() -> None:
    # differences 10, 4 -> bias 7, sample SD sqrt(18) = 4.2426
    stats = limits_of_agreement([40.0, 60.0], [50.0, 64.0])
    assert stats["bias"] == pytest.approx(7.0)
    assert stats["sd"] == pytest.approx(math.sqrt(18.0))
    assert stats["upper"] == pytest.approx(7.0 + 1.96 * math.sqrt(18.0))
    assert stats["lower"] == pytest.approx(7.0 - 1.96 * math.sqrt(18.0))
    single = limits_of_agreement([40.0], [45.0])
    assert single["bias"] == pytest.approx(5.0)
    assert math.isnan(single["sd"]) and math.isnan(single["upper"])


def test_mae_by_range_left_closed_and_keeps_empty_ranges() -> None:
    true = [20.0, 30.0, 44.9, 50.0, 70.0, 80.0]
    pred = [25.0, 28.0, 44.9, 60.0, 70.0, 70.0]  # errors +5, -2, 0, +10, 0, -10
    table = mae_by_range(true, pred)
    assert table["range"].tolist() == ["<30", "30–45", "45–55", "55–70", "≥70"]
    assert table["n"].tolist() == [1, 2, 1, 0, 2]
    np.testing.assert_allclose(table["mae"], [5.0, 1.0, 10.0, np.nan, 5.0])
    np.testing.assert_allclose(table["bias"], [5.0, -1.0, 10.0, np.nan, -5.0])
    assert table["n"].sum() == len(true)


def test_mae_by_range_custom_edges_and_bad_edges() -> None:
    table = mae_by_range([30.0, 60.0], [40.0, 58.0], edges=(50,))
    assert table["range"].tolist() == ["<50", "≥50"]
    np.testing.assert_allclose(table["mae"], [10.0, 2.0])
    with pytest.raises(ValueError, match="strictly increasing"):
        mae_by_range([30.0], [30.0], edges=(50, 40))


def test_constant_baseline_mean_and_median() -> None:
    # reference mean 50; test errors +20, 0, -20
    m = constant_baseline([40.0, 60.0], [30.0, 50.0, 70.0])
    assert m["constant"] == pytest.approx(50.0)
    assert m["mae"] == pytest.approx(40.0 / 3.0)
    assert m["rmse"] == pytest.approx(math.sqrt(800.0 / 3.0))
    assert m["bias"] == pytest.approx(0.0)
    assert m["r2"] == pytest.approx(0.0)
    assert m["auroc_ef_lt_50"] == pytest.approx(0.5)  # a constant score cannot rank
    skewed = [20.0, 60.0, 61.0, 62.0]  # mean 50.75, median 60.5
    assert constant_baseline(skewed, [60.0], statistic="median")["mae"] == pytest.approx(0.5)
    assert constant_baseline(skewed, [60.0])["mae"] == pytest.approx(9.25)
    with pytest.raises(ValueError, match="reference_ef: is empty"):
        constant_baseline([], [50.0])
    with pytest.raises(ValueError, match="statistic"):
        constant_baseline([50.0], [50.0], statistic="mode")


def test_split_baselines_use_train_mean_and_val_median() -> None:
    split = pd.DataFrame(
        {
            "role": ["train", "train", "val", "val", "val", "test"],
            "EF": [20.0, 80.0, 55.0, 60.0, 90.0, 58.0],
        }
    )
    out = split_baselines(split, [58.0, 62.0])
    assert out["mean_predictor"]["constant"] == pytest.approx(50.0)
    assert out["val_median_predictor"]["constant"] == pytest.approx(60.0)
    assert out["val_median_predictor"]["mae"] == pytest.approx(2.0)
    assert list(split_baselines(split[split["role"] != "val"], [58.0])) == ["mean_predictor"]
    with pytest.raises(ValueError, match="role"):
        split_baselines(split.drop(columns=["role"]), [58.0])


def _seed_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "method": ["cardiacclip"] * 3 + ["mean_pool"] * 2,
            "k": [1, 1, 2, 1, 1],
            "seed": [0, 1, 0, 0, 1],
            "mae": [6.0, 8.0, 5.0, 9.0, 9.5],
            "auroc_ef_lt_50": [0.8, np.nan, 0.9, 0.7, 0.75],
        }
    )


def test_summarise_over_seeds_mean_sd_n() -> None:
    summary = summarise_over_seeds(_seed_table(), ["method", "k"], ["mae", "auroc_ef_lt_50"])
    assert list(summary.columns) == [
        "method",
        "k",
        "n",
        "mae_mean",
        "mae_sd",
        "auroc_ef_lt_50_mean",
        "auroc_ef_lt_50_sd",
    ]
    row = summary.set_index(["method", "k"])
    assert row.loc[("cardiacclip", 1), "n"] == 2
    assert row.loc[("cardiacclip", 1), "mae_mean"] == pytest.approx(7.0)
    assert row.loc[("cardiacclip", 1), "mae_sd"] == pytest.approx(math.sqrt(2.0))  # ddof=1
    # a NaN AUROC seed is skipped: one value left -> mean of it, SD undefined
    assert row.loc[("cardiacclip", 1), "auroc_ef_lt_50_mean"] == pytest.approx(0.8)
    assert math.isnan(row.loc[("cardiacclip", 1), "auroc_ef_lt_50_sd"])
    # a single seed: no crash, SD NaN
    assert row.loc[("cardiacclip", 2), "n"] == 1
    assert math.isnan(row.loc[("cardiacclip", 2), "mae_sd"])
    assert row.loc[("mean_pool", 1), "mae_sd"] == pytest.approx(math.sqrt(0.125))


def test_summarise_over_seeds_errors() -> None:
    with pytest.raises(ValueError, match=r"\['mae_x'\] not in table"):
        summarise_over_seeds(_seed_table(), ["method"], ["mae_x"])
    with pytest.raises(ValueError, match="no rows"):
        summarise_over_seeds(_seed_table().iloc[:0], ["method"], ["mae"])
    with pytest.raises(ValueError, match="not numeric"):
        summarise_over_seeds(_seed_table(), ["k"], ["method"])


def test_mean_sd_text() -> None:
    assert mean_sd_text(6.6449, 0.2061) == "6.64 ± 0.21"
    assert mean_sd_text(6.6449, float("nan"), decimals=1) == "6.6"
    assert mean_sd_text(float("nan"), float("nan")) == "–"


def test_conformal_by_model_calibrates_on_held_out_val_videos_when_the_split_has_them():
    from cardiac_pipeline.echo.metrics import conformal_by_model

    rng = np.random.default_rng(0)

    def rows(role, n, error):
        true = rng.uniform(20, 75, n)
        return pd.DataFrame(
            {
                "method": "m",
                "k": 1,
                "seed": 0,
                "FileName": [f"{role}{i}" for i in range(n)],
                "role": role,
                "EF_true": true,
                "EF_pred": true + error * rng.choice([-1, 1], n),
            }
        )

    # the epoch-picking VAL videos look better (error 1) than new videos (error 4 or 5)
    val, calibration, test = (
        rows("val", 30, 1.0),
        rows("calibration", 30, 5.0),
        rows("test", 50, 4.0),
    )
    held_out = conformal_by_model(pd.concat([val, calibration, test]), 0.1)
    assert held_out["half_width"].iloc[0] == pytest.approx(5.0)
    assert held_out["covered"].mean() == 1.0
    on_val = conformal_by_model(pd.concat([val, test]), 0.1)
    assert on_val["half_width"].iloc[0] == pytest.approx(1.0) and on_val["covered"].mean() == 0.0


def test_coverage_by_ef_range_keeps_each_video_in_its_range_only():
    ef = np.array([20.0, 39.9, 40.0, 55.0, 55.1, 70.0])
    covered = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    ranges = coverage_by_ef_range(covered, ef, "coverage_90")
    assert list(ranges) == ["coverage_90_ef_lt_40", "coverage_90_ef_40_55", "coverage_90_ef_gt_55"]
    np.testing.assert_array_equal(np.isfinite(ranges["coverage_90_ef_40_55"]), [0, 0, 1, 1, 0, 0])
    assert np.nanmean(ranges["coverage_90_ef_lt_40"]) == pytest.approx(0.5)
    assert np.nanmean(ranges["coverage_90_ef_gt_55"]) == pytest.approx(0.5)


def test_bootstrap_of_a_per_video_mean_skips_videos_where_it_is_undefined():
    true = np.linspace(20, 80, 40)
    in_range = np.where(true < 40, 1.0, np.nan)  # defined for the low videos only, all 1
    intervals = bootstrap_ef_metrics(
        true, true + 1.0, n_resamples=200, seed=0, video_means={"low": in_range}
    )
    assert intervals["low"] == pytest.approx((1.0, 1.0))
