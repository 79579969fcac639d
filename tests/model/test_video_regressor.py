from __future__ import annotations

import pytest
import torch

from cardiac_pipeline.model.cardiac_clip import CardiacCLIPOutput
from cardiac_pipeline.model.video_regressor import (
    EchoNetVideoRegressor,
    l1_loss,
    regressor_param_groups,
)

B, T, H, W = 2, 4, 32, 32


@pytest.fixture(scope="module")
def model() -> EchoNetVideoRegressor:
    torch.manual_seed(0)
    return EchoNetVideoRegressor(initial_ef=55.0).eval()


@pytest.fixture(scope="module")
def grey_output(model: EchoNetVideoRegressor) -> CardiacCLIPOutput:
    with torch.no_grad():
        return model(_clips(1))


def _clips(channels: int, batch: int = B, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, T, channels, H, W), generator=g, dtype=torch.uint8)


def test_grey_uint8_forward_gives_output_fields(grey_output: CardiacCLIPOutput) -> None:
    out = grey_output
    assert isinstance(out, CardiacCLIPOutput)
    assert out.ef.shape == (B,) and out.ef.dtype == torch.float32
    assert out.logits is None
    assert out.video_embedding.shape == (B, 512)
    assert out.attention.shape == (B, T)
    torch.testing.assert_close(out.attention, torch.full((B, T), 1.0 / T))
    assert torch.isfinite(out.ef).all()
    assert not torch.equal(out.video_embedding[0], out.video_embedding[1])


def test_bias_starts_at_typical_ef(
    model: EchoNetVideoRegressor, grey_output: CardiacCLIPOutput
) -> None:
    assert model.video_net.fc.out_features == 1
    assert float(model.video_net.fc.bias.detach()) == pytest.approx(55.0)
    # random features times small random weights: predictions start near the bias
    assert (grey_output.ef - 55.0).abs().max() < 10.0


def test_grey_rgb_and_float_inputs_agree(model: EchoNetVideoRegressor) -> None:
    grey = _clips(1, batch=1)
    rgb = grey.expand(-1, -1, 3, -1, -1)
    with torch.no_grad():
        a = model(grey).ef
        b = model(rgb.float() / 255.0).ef  # float input is taken to be in [0, 1]
        c = model(rgb.contiguous()).ef
    torch.testing.assert_close(c, a)
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_normalisation_uses_mean_and_std() -> None:
    model = EchoNetVideoRegressor(mean=(0.5,), std=(0.25,))
    clips = torch.full((1, 2, 1, 4, 4), 255, dtype=torch.uint8)
    x = model.normalize(clips)
    assert x.shape == (1, 3, 2, 4, 4)  # permuted to [B, C, T, H, W], grey -> 3 channels
    torch.testing.assert_close(x, torch.full_like(x, 2.0))


def test_gradients_flow_and_a_step_moves_ef_towards_the_target() -> None:
    """What one step of the generic loop does: loss with its weights, RAdam on the groups."""
    torch.manual_seed(0)
    model = EchoNetVideoRegressor().train()
    clips, target = _clips(1), torch.tensor([30.0, 40.0])
    out = model(clips)
    loss, parts = l1_loss(out, target, w_ce=1.0, w_kl=1.0, w_l1=1.0)
    assert set(parts) == {"l1", "total"}
    torch.testing.assert_close(loss.detach(), (out.ef.detach() - target).abs().mean())
    loss.backward()
    stem_grad = model.video_net.stem[0].weight.grad
    assert stem_grad is not None and stem_grad.abs().sum() > 0
    assert float(model.video_net.fc.bias.grad) > 0  # both predictions (~55.6) are too high
    optimizer = torch.optim.Adam(regressor_param_groups(model, {"image_tower": 1e-2}))
    bias_before = float(model.video_net.fc.bias.detach())
    optimizer.step()
    assert float(model.video_net.fc.bias.detach()) < bias_before


def test_param_groups_cover_every_parameter_once(model: EchoNetVideoRegressor) -> None:
    groups = regressor_param_groups(model, {"image_tower": 1e-4, "head": 1e-3})
    assert [g["name"] for g in groups] == ["image_tower"]
    assert groups[0]["lr"] == 1e-4
    ids = [id(p) for p in groups[0]["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="image_tower"):
        regressor_param_groups(model, {"head": 1e-3})


def test_pretrained_is_refused() -> None:
    with pytest.raises(ValueError, match="network"):
        EchoNetVideoRegressor(pretrained=True)


def test_bad_inputs_are_named() -> None:
    model = EchoNetVideoRegressor()
    with pytest.raises(ValueError, match=r"\[B, T, C, H, W\]"):
        model(torch.zeros(T, 1, H, W, dtype=torch.uint8))
    with pytest.raises(ValueError, match="channels"):
        model(torch.zeros(1, T, 2, H, W, dtype=torch.uint8))
    with pytest.raises(ValueError, match="1 or 3"):
        EchoNetVideoRegressor(mean=(0.1, 0.2), std=(0.2, 0.2))


class _FakeVideos(torch.utils.data.Dataset):
    """Items as EchoClipDataset gives them: train (T,C,H,W), eval (N,T,C,H,W)."""

    def __init__(self, n: int, train: bool) -> None:
        self.n, self.train = n, train

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        shape = (T, 1, H, W) if self.train else (2, T, 1, H, W)
        clip = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
        return {"clip": clip, "ef": torch.tensor(40.0 + 10 * i), "file_name": f"v{i}"}


def test_predict_videos_averages_clips(model: EchoNetVideoRegressor) -> None:
    from cardiac_pipeline.model.train import predict_videos

    videos = _FakeVideos(1, train=False)
    table, attention = predict_videos(model, videos, device="cpu", progress=False)
    with torch.no_grad():
        per_clip = model(videos[0]["clip"]).ef
    assert table["n_clips"].tolist() == [2]
    assert table["EF_pred"].iloc[0] == pytest.approx(float(per_clip.mean()), abs=1e-4)
    assert not any(c.startswith("p_bin_") for c in table.columns)
    assert attention["v0"]["attention"].shape == (2, T)
