from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cardiac_pipeline.model import linear_probe
from cardiac_pipeline.model.linear_probe import (
    EmbeddingCache,
    embed_videos,
    fit_linear_probe,
    predict_linear_probe,
)

T, C, H, W = 2, 1, 4, 4


def _item(name: str, clip_values: list[float], ef: float = 50.0) -> dict:
    """An eval item whose clip k is filled with the value clip_values[k]."""
    clip = torch.stack([torch.full((T, C, H, W), int(v), dtype=torch.uint8) for v in clip_values])
    return {"clip": clip, "ef": torch.tensor(ef), "file_name": name}


def _mean_pixel_encoder(calls: list[int]):
    """Fake encoder: D = 2 features (mean pixel, 1) per clip; records batch sizes."""

    def encode(clips: torch.Tensor) -> torch.Tensor:
        assert clips.dtype == torch.uint8 and clips.ndim == 5
        assert torch.is_inference_mode_enabled()
        calls.append(int(clips.shape[0]))
        mean = clips.float().mean(dim=(1, 2, 3, 4))
        return torch.stack([mean, torch.ones_like(mean)], dim=1)

    return encode


def test_embed_videos_averages_each_videos_clips_across_batches() -> None:
    dataset = [_item("a", [10, 20, 60]), _item("b", [7]), _item("c", [1, 3])]
    calls: list[int] = []
    emb, names = embed_videos(_mean_pixel_encoder(calls), dataset, device="cpu", batch_size=2)
    assert names == ["a", "b", "c"]
    assert emb.dtype == np.float32 and emb.shape == (3, 2)
    np.testing.assert_allclose(emb[:, 0], [30.0, 7.0, 2.0])
    np.testing.assert_allclose(emb[:, 1], 1.0)
    assert max(calls) <= 2 and sum(calls) == 6  # every clip once, never over batch_size


def test_embed_videos_takes_single_train_clips_and_rejects_bad_shapes() -> None:
    single = {"clip": torch.full((T, C, H, W), 5, dtype=torch.uint8), "file_name": "s"}
    emb, names = embed_videos(_mean_pixel_encoder([]), [single], device="cpu", batch_size=4)
    assert names == ["s"] and emb[0, 0] == pytest.approx(5.0)
    bad = {"clip": torch.zeros((H, W), dtype=torch.uint8), "file_name": "bad"}
    with pytest.raises(ValueError, match="'bad'"):
        embed_videos(_mean_pixel_encoder([]), [bad], device="cpu", batch_size=4)


def _synthetic(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """EF = 55 + 10 x a unit-variance linear score of the features, + noise of SD 0.5;
    the features themselves on unequal scales (what standardisation is for)."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, d))
    weights = rng.normal(size=d)
    ef = 55.0 + 10.0 * latent @ weights / np.linalg.norm(weights)
    ef += rng.normal(scale=0.5, size=n)
    return latent * rng.uniform(0.1, 10.0, size=d), ef


def test_linear_probe_recovers_a_linear_relation() -> None:
    emb, ef = _synthetic(200, 16, seed=0)
    probe = fit_linear_probe(emb[:150], ef[:150])
    pred = predict_linear_probe(probe, emb[150:])
    truth = np.clip(ef[150:], 0, 100)
    assert np.mean(np.abs(pred - truth)) < 1.0
    assert np.mean(np.abs(ef[150:].mean() - truth)) > 5.0  # the mean alone would be far off


def test_linear_probe_output_is_clipped_to_ef_range() -> None:
    emb = np.array([[0.0], [1.0], [2.0], [3.0]])
    probe = fit_linear_probe(emb, np.array([0.0, 40.0, 80.0, 120.0]), alphas=(1e-6,))
    pred = predict_linear_probe(probe, np.array([[-10.0], [1.0], [10.0]]))
    assert pred[0] == 0.0 and pred[2] == 100.0
    assert pred[1] == pytest.approx(40.0, abs=0.1)


def test_linear_probe_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="EF values"):
        fit_linear_probe(np.zeros((3, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        fit_linear_probe(np.array([[np.nan], [1.0]]), np.zeros(2))


CLIP_PARAMS = {"frames": 16, "period": 2, "size": 112, "eval_clips": 3}


def test_cache_round_trip_and_keying(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    assert cache.load("echo-clip@abc", CLIP_PARAMS) is None
    emb = np.arange(6, dtype=np.float32).reshape(3, 2)
    path = cache.save("echo-clip@abc", CLIP_PARAMS, emb, ["a", "b", "c"])
    assert path.exists() and path.suffix == ".npz"
    loaded, names = cache.load("echo-clip@abc", dict(reversed(CLIP_PARAMS.items())))
    np.testing.assert_array_equal(loaded, emb)
    assert names == ["a", "b", "c"]
    assert cache.path("echo-clip@abc", {**CLIP_PARAMS, "frames": 32}) != path
    assert cache.path("echo-clip@def", CLIP_PARAMS) != path


def test_get_or_compute_computes_each_video_once(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    asked: list[list[str]] = []

    def compute(names: list[str]) -> tuple[np.ndarray, list[str]]:
        asked.append(list(names))
        return np.array([[float(ord(n))] for n in names], dtype=np.float32), names

    first = cache.get_or_compute("m", CLIP_PARAMS, ["b", "a"], compute)
    second = cache.get_or_compute("m", CLIP_PARAMS, ["c", "a", "b"], compute)
    third = cache.get_or_compute("m", CLIP_PARAMS, ["a", "c"], compute)
    assert asked == [["b", "a"], ["c"]]
    np.testing.assert_array_equal(first[:, 0], [ord("b"), ord("a")])
    np.testing.assert_array_equal(second[:, 0], [ord("c"), ord("a"), ord("b")])
    np.testing.assert_array_equal(third[:, 0], [ord("a"), ord("c")])


def test_cache_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = EmbeddingCache(tmp_path)
    good = np.ones((2, 3), dtype=np.float32)
    path = cache.save("m", CLIP_PARAMS, good, ["a", "b"])
    before = path.read_bytes()

    def crash_mid_write(handle, **arrays) -> None:
        handle.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(linear_probe.np, "savez", crash_mid_write)
    with pytest.raises(OSError, match="simulated"):
        cache.save("m", CLIP_PARAMS, np.zeros((3, 3)), ["a", "b", "c"])
    with pytest.raises(OSError, match="simulated"):
        cache.save("other", CLIP_PARAMS, np.zeros((1, 3)), ["a"])
    assert path.read_bytes() == before  # the old file survives untouched
    assert not cache.path("other", CLIP_PARAMS).exists()  # no partial new file
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp files left
    monkeypatch.undo()
    loaded, names = cache.load("m", CLIP_PARAMS)
    np.testing.assert_array_equal(loaded, good)


def test_cache_refuses_a_file_of_another_key(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    written = cache.save("m", CLIP_PARAMS, np.ones((1, 2)), ["a"])
    other = {**CLIP_PARAMS, "frames": 8}
    written.rename(cache.path("m", other))
    with pytest.raises(ValueError, match="another key"):
        cache.load("m", other)
    cache.path("m", CLIP_PARAMS).write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="unreadable"):
        cache.load("m", CLIP_PARAMS)
