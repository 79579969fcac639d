"""MFL pooling: weights are a distribution over frames; mean pooling is the constant-score case."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cardiac_pipeline.model.mfl import AttentionPool, MeanPool


def test_attention_weights_sum_to_one_and_pool_is_the_weighted_sum() -> None:
    torch.manual_seed(0)
    pool = AttentionPool(8, hidden=4)
    frames = torch.randn(3, 5, 8)
    video, weights = pool(frames)
    assert video.shape == (3, 8) and weights.shape == (3, 5)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(3))
    assert (weights > 0).all()
    assert not torch.allclose(weights, torch.full_like(weights, 0.2))  # scores differ per frame
    # output layer starts as the identity: the video embedding is the weighted mean itself
    expected = (weights.unsqueeze(-1) * frames).sum(dim=1)
    torch.testing.assert_close(video, expected)


def test_score_mlp_follows_the_method() -> None:
    pool = AttentionPool(512)
    layers = list(pool.score)
    assert [type(layer) for layer in layers] == [nn.Linear, nn.Tanh, nn.Linear, nn.Tanh, nn.Linear]
    assert (layers[0].in_features, layers[0].out_features) == (512, 64)
    assert (layers[2].in_features, layers[2].out_features) == (64, 64)
    assert (layers[4].in_features, layers[4].out_features) == (64, 1)
    assert (pool.out.in_features, pool.out.out_features) == (512, 512)


def test_constant_scores_equal_mean_pooling() -> None:
    torch.manual_seed(1)
    attention = AttentionPool(6, hidden=3, identity_init=False)
    with torch.no_grad():  # the last scoring layer gives every frame the same score
        attention.score[-1].weight.zero_()
        attention.score[-1].bias.fill_(2.5)
    mean = MeanPool(6, identity_init=False)
    mean.out.load_state_dict(attention.out.state_dict())
    frames = torch.randn(2, 4, 6)
    video_a, weights_a = attention(frames)
    video_m, weights_m = mean(frames)
    torch.testing.assert_close(weights_m, torch.full((2, 4), 0.25))
    torch.testing.assert_close(weights_a, weights_m)
    torch.testing.assert_close(video_a, video_m)
    torch.testing.assert_close(video_m, attention.out(frames.mean(dim=1)))


def test_mask_keeps_padded_frames_out() -> None:
    torch.manual_seed(2)
    frames = torch.randn(2, 4, 3)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    for pool in (AttentionPool(3, hidden=2), MeanPool(3)):
        video, weights = pool(frames, mask)
        assert torch.all(weights[0, 2:] == 0)
        torch.testing.assert_close(weights.sum(dim=1), torch.ones(2))
    _, weights = MeanPool(3)(frames, mask)
    torch.testing.assert_close(weights[0], torch.tensor([0.5, 0.5, 0.0, 0.0]))
    video, _ = MeanPool(3)(frames, mask)
    torch.testing.assert_close(video[0], frames[0, :2].mean(dim=0))


def test_gradients_reach_the_scoring_mlp() -> None:
    torch.manual_seed(3)
    pool = AttentionPool(4, hidden=2)
    video, _ = pool(torch.randn(2, 3, 4))
    (video * torch.randn_like(video)).sum().backward()
    *hidden, last_bias = pool.score.parameters()
    # every weight of the scoring MLP gets a gradient well above rounding noise ...
    assert all(p.grad is not None and p.grad.abs().max() > 1e-4 for p in hidden)
    # ... but the last bias cannot: softmax over frames ignores a score shared by every frame,
    # so its gradient is zero in exact arithmetic (only rounding may leave a trace)
    torch.testing.assert_close(last_bias.grad, torch.zeros_like(last_bias), atol=1e-6, rtol=0)


def test_random_output_init_when_asked_and_shape_errors() -> None:
    pool = MeanPool(4, identity_init=False)
    assert not torch.allclose(pool.out.weight, torch.eye(4))
    with pytest.raises(ValueError, match=r"\[B, T, D\]"):
        pool(torch.randn(4, 4))
    with pytest.raises(ValueError, match="mask"):
        pool(torch.randn(1, 3, 4), torch.ones(1, 2, dtype=torch.bool))
