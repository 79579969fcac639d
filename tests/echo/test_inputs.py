"""User video input: dispatch by content/suffix, store-style frames, quality flags, listing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cardiac_pipeline.echo.inputs import (
    input_quality_flags,
    list_videos,
    load_any_video,
    read_input_video,
)
from cardiac_pipeline.echo.video import VideoReadError, write_video
from tests.echo.test_dicom import write_echo


def moving_video(n_frames: int = 24, height: int = 112, width: int = 112) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    frames = [
        (100 + 60 * np.sin(np.hypot(yy - height / 2, xx - width / 2) / 5.0 - 0.5 * t)).astype(
            np.uint8
        )
        for t in range(n_frames)
    ]
    return np.stack(frames)


def test_loads_avi_mp4_and_extensionless_dicom_as_store_frames(tmp_path: Path) -> None:
    write_video(tmp_path / "a.avi", moving_video(height=64, width=80), 50)
    write_video(tmp_path / "b.mp4", moving_video(), 25)
    write_echo(tmp_path / "IM0001", n_frames=24)  # clinic exports often have no extension

    frames, fps, name = load_any_video(tmp_path / "a.avi")
    assert frames.shape == (24, 1, 112, 112) and frames.dtype == np.uint8
    assert fps == pytest.approx(50) and name == "a.avi"
    frames, fps, _ = load_any_video(tmp_path / "b.mp4", size=64)
    assert frames.shape == (24, 1, 64, 64) and fps == pytest.approx(25)

    video = read_input_video(tmp_path / "IM0001")
    assert video.kind == "dicom" and video.display_name == "IM0001"
    assert video.frames.shape == (24, 1, 112, 112) and video.fps == 50.0
    assert (video.source_height, video.source_width) == (160, 200)
    assert video.anonymous_id.startswith("0X") and len(video.anonymous_id) == 18
    assert video.frames.max() <= 202  # burned-in text (255) and ECG (250) masked out


def test_unknown_suffix_and_corrupt_file_raise_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a video")
    with pytest.raises(VideoReadError, match="notes.txt"):
        read_input_video(tmp_path / "notes.txt")
    (tmp_path / "broken.avi").write_bytes(b"RIFF" + bytes(200))
    with pytest.raises(VideoReadError, match="broken.avi"):
        read_input_video(tmp_path / "broken.avi")


def test_list_videos_by_suffix_and_dicom_magic(tmp_path: Path) -> None:
    write_video(tmp_path / "a.avi", moving_video(4), 50)
    write_echo(tmp_path / "scan.bin", n_frames=4)  # DICOM behind a misleading suffix
    (tmp_path / "noext").write_bytes(b"junk")
    (tmp_path / "readme.txt").write_text("x")
    (tmp_path / ".hidden.avi").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    assert [p.name for p in list_videos(tmp_path)] == ["a.avi", "noext", "scan.bin"]
    with pytest.raises(FileNotFoundError, match="missing"):
        list_videos(tmp_path / "missing")


def test_quality_flags_each_condition() -> None:
    good = np.full((60, 1, 112, 112), 90, np.uint8)
    assert input_quality_flags(good, 50.0, source_size=(112, 112)) == []
    assert input_quality_flags(good, 50.0, source_size=(480, 640)) == ["non_standard_size 640x480"]
    assert input_quality_flags(good, 15.0) == ["unusual_fps 15"]
    assert input_quality_flags(good, 15.0, fps_range=(10.0, 20.0)) == []
    assert input_quality_flags(good[:10], 50.0) == ["too_few_frames 10"]
    assert input_quality_flags(good[:10], 50.0, min_frames=8) == []
    dark = good.copy()
    dark[:40] = 2  # two thirds of the frames black
    assert input_quality_flags(dark, 50.0) == ["mostly_black"]
    assert input_quality_flags(dark, 50.0, max_black_frame_share=0.8) == []
    assert input_quality_flags(np.full_like(good, 6), 50.0, black_level=5.0) == ["mostly_black"]
    assert input_quality_flags(good, 50.0, grey=False) == ["colour"]
    assert input_quality_flags(good, float("nan")) == ["unusual_fps nan"]
