import numpy as np
import pytest

from cardiac_pipeline.echo.clips import (
    ClipSpec,
    clip_at,
    clip_span,
    effective_period,
    eval_clip_starts,
    pad_and_random_crop,
    sample_clip,
)


def ramp_video(num_frames: int, channels: int = 1, size: int = 4) -> np.ndarray:
    """Frame i has value i (mod 256): frame spacing is readable from the pixels."""
    values = (np.arange(num_frames) % 256).astype(np.uint8)
    return np.broadcast_to(values[:, None, None, None], (num_frames, channels, size, size)).copy()


def test_training_clip_shape_dtype_and_spacing():
    video = ramp_video(200, channels=3)
    spec = ClipSpec(frames=8, period=2)
    rng = np.random.default_rng(0)
    for _ in range(20):
        clip = sample_clip(video, spec, rng)
        assert clip.shape == (8, 3, 4, 4)
        assert clip.dtype == np.uint8
        values = clip[:, 0, 0, 0].astype(int)
        assert np.all(np.diff(values) == 2)
        assert 0 <= values[0] <= 200 - clip_span(spec)


def test_random_start_covers_every_valid_start():
    video = ramp_video(20)
    spec = ClipSpec(frames=4, period=3)  # span 10 -> starts 0..10
    rng = np.random.default_rng(1)
    starts = {int(sample_clip(video, spec, rng)[0, 0, 0, 0]) for _ in range(400)}
    assert starts == set(range(11))


def test_short_video_is_zero_padded_by_default_and_edge_padded_on_request():
    video = ramp_video(5) + 1  # values 1..5, so padding zeros are distinguishable
    rng = np.random.default_rng(0)
    clip = sample_clip(video, ClipSpec(frames=6, period=2), rng)
    assert clip[:, 0, 0, 0].tolist() == [1, 3, 5, 0, 0, 0]
    clip = sample_clip(video, ClipSpec(frames=6, period=2, pad_mode="edge"), rng)
    assert clip[:, 0, 0, 0].tolist() == [1, 3, 5, 5, 5, 5]


def test_target_fps_rescales_the_period():
    spec = ClipSpec(frames=4, period=2, target_fps=50.0)
    assert effective_period(spec, 100.0) == 4
    assert effective_period(spec, 117.0) == 5
    assert effective_period(spec, 22.0) == 1  # round(0.88) = 1
    assert effective_period(spec, 10.0) == 1  # never below 1
    assert effective_period(spec, None) == 2
    assert effective_period(spec, float("nan")) == 2
    assert effective_period(ClipSpec(frames=4, period=2), 100.0) == 2  # no target: as is
    clip = clip_at(ramp_video(100), 3, spec, fps=100.0)
    assert clip[:, 0, 0, 0].tolist() == [3, 7, 11, 15]


def test_eval_starts_evenly_spaced_or_all_non_overlapping():
    spec = ClipSpec(frames=8, period=2)  # span 15
    starts = eval_clip_starts(100, spec, 3)
    assert starts.tolist() == [0, 42, 85]  # last start 85: the last clip ends at frame 99
    assert eval_clip_starts(100, spec, "all").tolist() == [0, 15, 30, 45, 60, 75]
    assert eval_clip_starts(10, spec, 3).tolist() == [0, 0, 0]  # short: stackable
    assert eval_clip_starts(10, spec, "all").tolist() == [0]
    with pytest.raises(ValueError, match="n_clips"):
        eval_clip_starts(100, spec, 0)
    video = ramp_video(100)
    for start in eval_clip_starts(100, spec, "all"):
        assert clip_at(video, int(start), spec)[-1, 0, 0, 0] <= 99


def test_pad_and_random_crop_matches_pad_then_crop_reference():
    rng_data = np.random.default_rng(3)
    clip = rng_data.integers(1, 255, size=(5, 1, 16, 20), dtype=np.uint8)
    pad = 4
    for seed in range(30):
        out = pad_and_random_crop(clip, pad, rng=np.random.default_rng(seed))
        i, j = np.random.default_rng(seed).integers(0, 2 * pad + 1, size=2)
        padded = np.pad(clip, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        np.testing.assert_array_equal(out, padded[..., i : i + 16, j : j + 20])
    np.testing.assert_array_equal(pad_and_random_crop(clip, 0, rng=np.random.default_rng(0)), clip)


def test_clip_spec_rejects_bad_values():
    with pytest.raises(ValueError, match="frames"):
        ClipSpec(frames=0)
    with pytest.raises(ValueError, match="pad_mode"):
        ClipSpec(pad_mode="wrap")
    with pytest.raises(ValueError, match="start"):
        clip_at(ramp_video(5), 5, ClipSpec(frames=2))
