"""User videos in: AVI, MP4 or multi-frame DICOM, whatever the file is called, as store-style frames.

Prediction on new patients' videos must see frames exactly as the model saw them in
training: ``(F, C, size, size)`` uint8 channels-first, grey kept as one channel
(``clipstore.preprocess_frames``). DICOM is recognised by its content (clinic exports often
have no extension) and converted as EchoNet-Dynamic did (``dicom.read_dicom_video``).

PHI: a DICOM file is named only by its file name (never by header content) and gets an
anonymised id from its bytes (``dicom.anonymous_id``).

``input_quality_flags`` says when a video looks unlike the training data (EchoNet-style
112x112 grey apical-4-chamber videos at ~50 fps); it cannot tell a wrong view.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cardiac_pipeline.echo.clipstore import PreprocessParams, preprocess_frames
from cardiac_pipeline.echo.dicom import anonymous_id, is_dicom, probe_dicom, read_dicom_video
from cardiac_pipeline.echo.video import VIDEO_SUFFIXES, VideoReadError, probe_video, read_video

DICOM_SUFFIXES = (".dcm", ".dicom")


@dataclass(frozen=True)
class InputVideo:
    """One user video ready for the model, plus what the quality flags need to know.

    frames: ``(F, C, size, size)`` uint8. source_height/width: the decoded frame size before
    resizing (for DICOM: the stored frame, before sector cropping). kind: ``"avi"``,
    ``"mp4"`` or ``"dicom"``. anonymous_id: for DICOM only (else None).
    """

    frames: np.ndarray
    fps: float
    display_name: str
    kind: str
    source_height: int
    source_width: int
    grey: bool
    anonymous_id: str | None = None


def read_input_video(
    path: str | os.PathLike,
    size: int = 112,
    *,
    fit: str = "stretch",
    grey_tolerance: int = 8,
    default_fps: float = 30.0,
) -> InputVideo:
    """Read any supported video as the clip store would hold it.

    Dispatch: DICOM by content (``DICM`` magic, any or no extension), else ``.avi``/``.mp4``
    by suffix. Raises ``VideoReadError`` (DICOM: ``DicomReadError``) naming the file only.
    ``default_fps`` is the DICOM frame rate when the header has none (EchoNet assumed 30).
    """
    path = Path(path)
    if not path.is_file():
        raise VideoReadError(f"{path.name}: file not found")
    params = PreprocessParams(size=size, fit=fit, grey_tolerance=grey_tolerance)
    if is_dicom(path):
        rgb, fps = read_dicom_video(
            path, size=size, default_fps=default_fps, display_name=path.name
        )
        header = probe_dicom(path, default_fps=default_fps, display_name=path.name)
        height, width = header.height, header.width
        frames, grey = preprocess_frames(rgb, params)
        return InputVideo(
            frames, float(fps), path.name, "dicom", height, width, grey, anonymous_id(path)
        )
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise VideoReadError(
            f"{path.name}: not a DICOM file and suffix {suffix or '(none)'!r} is not one of "
            f"{', '.join(VIDEO_SUFFIXES)}"
        )
    info = probe_video(path)
    rgb = read_video(path)
    frames, grey = preprocess_frames(rgb, params)
    return InputVideo(frames, info.fps, path.name, suffix[1:], info.height, info.width, grey)


def load_any_video(path: str | os.PathLike, size: int = 112) -> tuple[np.ndarray, float, str]:
    """``(frames (F, C, size, size) uint8, fps, display_name)`` of an AVI, MP4 or DICOM file."""
    video = read_input_video(path, size)
    return video.frames, video.fps, video.display_name


def input_quality_flags(
    frames: np.ndarray,
    fps: float,
    *,
    source_size: tuple[int, int] | None = None,
    grey: bool = True,
    expected_size: int = 112,
    fps_range: tuple[float, float] = (30.0, 80.0),
    min_frames: int = 32,
    black_level: float = 10.0,
    max_black_frame_share: float = 0.5,
    min_mean_intensity: float = 8.0,
) -> list[str]:
    """Reasons a video looks unlike the training data (EchoNet-Dynamic); empty when none.

    frames: the model-ready ``(F, C, H, W)`` uint8 frames. source_size: ``(height, width)``
    as decoded; ``None`` skips the size test (DICOM, whose sector is cropped and resized as
    EchoNet's conversion did). Flags:
    ``non_standard_size WxH`` (source not ``expected_size`` square, it was resized),
    ``unusual_fps X`` (outside ``fps_range``: EchoNet is mostly 50 fps, and clips then span
    a different share of the heart cycle), ``too_few_frames N`` (under ``min_frames``,
    e.g. one clip's span: clips get padded), ``mostly_black`` (mean grey level under
    ``min_mean_intensity``, or more than ``max_black_frame_share`` of frames with mean
    under ``black_level``), ``colour`` (EchoNet is grey B-mode; Doppler colour is not).
    """
    flags: list[str] = []
    if source_size is not None:
        height, width = source_size
        if (height, width) != (expected_size, expected_size):
            flags.append(f"non_standard_size {width}x{height}")
    if not (np.isfinite(fps) and fps_range[0] <= fps <= fps_range[1]):
        flags.append(f"unusual_fps {fps:g}")
    n_frames = int(frames.shape[0])
    if n_frames < min_frames:
        flags.append(f"too_few_frames {n_frames}")
    if n_frames:
        frame_means = frames.reshape(n_frames, -1).mean(axis=1, dtype=np.float64)
        black_share = float((frame_means < black_level).mean())
        if float(frame_means.mean()) < min_mean_intensity or black_share > max_black_frame_share:
            flags.append("mostly_black")
    if not grey:
        flags.append("colour")
    return flags


def list_videos(folder: str | os.PathLike) -> list[Path]:
    """Candidate video files in ``folder`` (not recursive), sorted by name.

    AVI/MP4 by suffix, DICOM by content or ``.dcm``/``.dicom`` suffix; files with no
    extension are listed too (a corrupt extension-less file then fails with its reason).
    Hidden files are skipped.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: input folder not found")
    found = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        suffix = path.suffix.lower()
        if suffix in VIDEO_SUFFIXES or suffix in DICOM_SUFFIXES or not suffix or is_dicom(path):
            found.append(path)
    return found
