"""Out-of-distribution scores on random data: shrinkage, distances, held-out threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cardiac_pipeline.echo import ood


def _gaussian(n: int, scales: list[float], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, len(scales))) * np.asarray(scales)


def test_ledoit_wolf_keeps_a_well_estimated_covariance_nearly_unshrunk():
    x = _gaussian(4000, [1.0, 3.0, 10.0], seed=0)
    mean, covariance, shrinkage = ood.ledoit_wolf(x)
    assert 0.0 <= shrinkage < 0.05
    np.testing.assert_allclose(np.diag(covariance), [1.0, 9.0, 100.0], rtol=0.1)
    np.testing.assert_allclose(mean, 0.0, atol=0.5)


def test_ledoit_wolf_shrinks_when_videos_are_fewer_than_dimensions():
    x = _gaussian(10, [1.0] * 40, seed=1)
    _, covariance, shrinkage = ood.ledoit_wolf(x)
    assert 0.3 < shrinkage <= 1.0
    assert np.linalg.eigvalsh(covariance).min() > 0  # the sample covariance has rank 9


def test_identical_embeddings_still_give_a_finite_description():
    fitted = ood.fit_gaussian(np.ones((5, 3)))
    assert np.isfinite(fitted["precision"]).all()


def test_mahalanobis_is_zero_at_the_mean_and_unchanged_by_rotation_and_scale():
    x = _gaussian(300, [1.0, 2.0, 5.0, 0.5], seed=2)
    queries = _gaussian(20, [3.0] * 4, seed=3)
    fitted = ood.fit_gaussian(x)
    assert ood.mahalanobis(fitted["mean"][None, :], fitted["mean"], fitted["precision"])[
        0
    ] == pytest.approx(0.0, abs=1e-9)
    rotation, _ = np.linalg.qr(np.random.default_rng(4).normal(size=(4, 4)))
    moved = ood.fit_gaussian(2.5 * x @ rotation)
    before = ood.mahalanobis(queries, fitted["mean"], fitted["precision"])
    after = ood.mahalanobis(2.5 * queries @ rotation, moved["mean"], moved["precision"])
    np.testing.assert_allclose(after, before, rtol=1e-6)


def test_mahalanobis_refuses_embeddings_of_another_size():
    fitted = ood.fit_gaussian(_gaussian(20, [1.0] * 3, seed=5))
    with pytest.raises(ValueError, match="dims"):
        ood.mahalanobis(np.zeros((2, 4)), fitted["mean"], fitted["precision"])


def test_held_out_scores_run_higher_than_in_sample_ones():
    x = _gaussian(60, [0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 1.0, 3.0], seed=6)
    fitted = ood.fit_gaussian(x)
    in_sample = ood.mahalanobis(x, fitted["mean"], fitted["precision"])
    held_out = ood.cross_fitted_scores(x)
    assert held_out.mean() > 1.02 * in_sample.mean()


def test_flag_rank_targets_the_rate_and_stays_in_range():
    assert ood.flag_rank(199, 0.99) == 198  # 2 of 200 above: 1%
    assert ood.flag_rank(4, 0.99) == 4  # too few scores: the largest
    assert ood.flag_rank(10, 0.01) == 1
    with pytest.raises(ValueError):
        ood.flag_rank(10, 1.0)


def test_describe_then_score_flags_about_the_quantile_of_new_in_distribution_videos():
    scales = [1.0, 2.0, 0.5, 4.0, 1.0, 1.5]
    description = ood.describe(_gaussian(400, scales, seed=7), quantile=0.9)
    fresh = ood.score_videos(_gaussian(4000, scales, seed=8), description)
    share = fresh["out_of_distribution"].mean()
    assert 0.05 < share < 0.16  # target 10%; sampling noise of 400 calibration videos
    assert description["expected_flag_rate"] == pytest.approx(0.1, abs=0.005)
    assert np.all(np.diff(description["calibration_scores"]) >= 0)
    assert fresh["percentile"].min() >= 0.0 and fresh["percentile"].max() <= 100.0


def test_a_shifted_site_is_flagged_and_scores_a_high_percentile():
    scales = [1.0, 2.0, 0.5, 4.0]
    description = ood.describe(_gaussian(200, scales, seed=9), quantile=0.99)
    shifted = _gaussian(50, scales, seed=10) + np.array([0.0, 0.0, 4.0, 0.0])
    result = ood.score_videos(shifted, description)
    assert result["out_of_distribution"].mean() > 0.9
    assert np.median(result["percentile"]) == pytest.approx(100.0)


def test_describe_needs_a_few_finite_videos():
    with pytest.raises(ValueError, match=">= 3"):
        ood.describe(np.zeros((2, 4)), 0.99)
    with pytest.raises(ValueError, match="finite"):
        ood.describe(np.full((5, 2), np.nan), 0.99)


def test_score_refuses_an_unknown_description():
    with pytest.raises(ValueError, match="unknown"):
        ood.score_videos(np.zeros((1, 2)), {"score": "knn"})


def test_flagged_share_leaves_out_videos_never_scored():
    assert ood.flagged_share([1.0, 0.0, np.nan, 0.0]) == pytest.approx(1 / 3)
    assert math.isnan(ood.flagged_share([np.nan]))
