"""The one video reader and writer of the project.

Reading goes through decord (AVI and MP4, the formats EchoNet-Dynamic and clinics' exports
use); writing goes through OpenCV's MJPG AVI encoder, which is what EchoNet-Dynamic's own
conversion used, so synthetic videos are read by every EchoNet loader. Frame counts, size
and frame rate are always read from the file, never trusted from a CSV.
"""

from __future__ import annotations

import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VIDEO_SUFFIXES = (".avi", ".mp4")


class VideoReadError(RuntimeError):
    """A video file that cannot be opened or decoded; the message names the file."""


class VideoTruncatedError(VideoReadError):
    """A video that opens but holds fewer frames than its container declares (a cut copy)."""


@dataclass(frozen=True)
class VideoInfo:
    """What a video file says about itself."""

    num_frames: int
    fps: float
    height: int
    width: int


def _open(path: str | os.PathLike):
    import decord  # local import: decord spins up native threads at import

    path = Path(path)
    if not path.is_file():
        raise VideoReadError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise VideoReadError(f"{path}: file is empty")
    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    except Exception as exc:  # decord raises its own DECORDError and RuntimeError
        raise VideoReadError(
            f"{path}: cannot open video ({exc.__class__.__name__}: {exc})"
        ) from exc


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Read frame count, frame rate and size from the file header and first frame."""
    reader = _open(path)
    num_frames = len(reader)
    if num_frames == 0:
        raise VideoReadError(f"{path}: video has no frames")
    try:
        height, width = reader[0].shape[:2]
    except Exception as exc:
        raise VideoReadError(f"{path}: first frame does not decode ({exc})") from exc
    return VideoInfo(
        num_frames=int(num_frames),
        fps=float(reader.get_avg_fps()),
        height=int(height),
        width=int(width),
    )


@dataclass(frozen=True)
class VideoCheck:
    """What a video file says about itself, plus what its container header declares."""

    info: VideoInfo
    declared_frames: int | None  # from the AVI header; None when the container gives none


def avi_declared_frames(path: str | os.PathLike, max_header_bytes: int = 1 << 20) -> int | None:
    """Frame count an AVI's RIFF header declares, or None (not an AVI, or header gives 0).

    Writers fill the header when they close the file, and the index (``idx1``) sits at the
    end, so a copy cut short keeps the full declared count while decoders (which then scan
    the ``movi`` list) find fewer frames. Precedence: OpenDML ``dmlh`` total (files over
    1 GB), then the video stream's ``strh`` dwLength, then ``avih`` dwTotalFrames.
    """
    with open(path, "rb") as fh:
        head = fh.read(max_header_bytes)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"AVI ":
        return None
    found: dict[str, int] = {}

    def walk(start: int, end: int) -> None:
        pos = start
        while pos + 8 <= min(end, len(head)):
            fourcc = head[pos : pos + 4]
            (size,) = struct.unpack_from("<I", head, pos + 4)
            body = pos + 8
            if fourcc == b"LIST":
                kind = head[body : body + 4]
                if kind in (b"hdrl", b"strl", b"odml"):
                    walk(body + 4, body + size)
                elif kind == b"movi":
                    return  # frame data follows: the header is over
            elif fourcc == b"avih" and body + 20 <= len(head):
                found.setdefault("avih", struct.unpack_from("<I", head, body + 16)[0])
            elif fourcc == b"strh" and body + 36 <= len(head):
                if head[body : body + 4] == b"vids":
                    found.setdefault("strh", struct.unpack_from("<I", head, body + 32)[0])
            elif fourcc == b"dmlh" and body + 4 <= len(head):
                found.setdefault("dmlh", struct.unpack_from("<I", head, body)[0])
            pos = body + size + (size & 1)  # RIFF chunks are word-aligned

    walk(12, len(head))
    for key in ("dmlh", "strh", "avih"):
        if found.get(key):
            return int(found[key])
    return None


def container_shortfall(path: str | os.PathLike) -> str | None:
    """Say how a file is cut short by its own container sizes, or None when it is whole.

    An AVI's RIFF header and an MP4's top-level boxes state their sizes; a copy that
    stopped early is smaller than they say. This catches any cut, even a few bytes into
    the last frame that a tolerant MJPEG decoder still shows, for the price of a few
    small reads. Unknown containers and unset (streaming) sizes give None.
    """
    path = Path(path)
    file_size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) == 12 and head[:4] == b"RIFF" and head[8:12] == b"AVI ":
            (riff_size,) = struct.unpack_from("<I", head, 4)
            if riff_size in (0, 0xFFFFFFFF):
                return None
            if file_size < riff_size + 8:
                return f"RIFF header says {riff_size + 8} bytes, file has {file_size}"
            return None
        if len(head) < 8 or head[4:8] != b"ftyp":
            return None
        pos = 0
        while pos + 8 <= file_size:  # walk the MP4/QuickTime top-level boxes
            fh.seek(pos)
            box = fh.read(16)
            (size,) = struct.unpack_from(">I", box, 0)
            kind = box[4:8].decode("latin-1")
            if size == 1 and len(box) == 16:
                (size,) = struct.unpack_from(">Q", box, 8)
            elif size == 0:
                return None  # box runs to the end of the file, whatever its length
            if size < 8:
                return f"MP4 box {kind!r} at byte {pos} has invalid size {size}"
            if pos + size > file_size:
                return (
                    f"MP4 box {kind!r} at byte {pos} needs {pos + size} bytes, file has {file_size}"
                )
            pos += size
    return None


def check_video(path: str | os.PathLike, frame_count_tolerance: int = 0) -> VideoCheck:
    """Probe a video cheaply but enough to trust it: container sizes, header, first and
    last frame.

    Raises ``VideoTruncatedError`` when the container is smaller than its headers say
    (``container_shortfall``), when the decoder finds more than ``frame_count_tolerance``
    frames fewer than the AVI header declares (a cut AVI still opens, shorter), or when the
    last frame does not decode; raises ``VideoReadError`` when the file does not open or
    its first frame does not decode. Frames in between are not decoded: a corrupt frame in
    the middle of an otherwise whole file passes here and fails later in ``read_video``.
    """
    path = Path(path)
    if not path.is_file():
        raise VideoReadError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise VideoReadError(f"{path}: file is empty")
    shortfall = container_shortfall(path)
    if shortfall is not None:
        raise VideoTruncatedError(f"{path}: {shortfall}; file truncated?")
    reader = _open(path)
    num_frames = len(reader)
    if num_frames == 0:
        raise VideoReadError(f"{path}: video has no frames")
    declared = avi_declared_frames(path)
    if declared is not None and num_frames + frame_count_tolerance < declared:
        raise VideoTruncatedError(
            f"{path}: {num_frames} frames decodable but the AVI header declares {declared}; "
            "file truncated?"
        )
    try:
        height, width = reader[0].shape[:2]
    except Exception as exc:
        raise VideoReadError(f"{path}: first frame does not decode ({exc})") from exc
    if num_frames > 1:
        try:
            _ = reader[num_frames - 1]  # decoding it is the check
        except Exception as exc:
            raise VideoTruncatedError(
                f"{path}: last frame ({num_frames - 1}) does not decode ({exc}); file truncated?"
            ) from exc
    info = VideoInfo(
        num_frames=int(num_frames),
        fps=float(reader.get_avg_fps()),
        height=int(height),
        width=int(width),
    )
    return VideoCheck(info=info, declared_frames=declared)


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Decode every frame: ``(F, H, W, 3)`` uint8 RGB.

    Raises ``VideoReadError`` naming the file when any frame fails to decode (a truncated
    file is an error, not a shorter video).
    """
    reader = _open(path)
    num_frames = len(reader)
    if num_frames == 0:
        raise VideoReadError(f"{path}: video has no frames")
    try:
        frames = reader.get_batch(list(range(num_frames))).asnumpy()
    except Exception as exc:
        raise VideoReadError(
            f"{path}: decoding failed ({exc.__class__.__name__}: {exc}); file truncated or corrupt?"
        ) from exc
    if frames.ndim != 4 or frames.shape[0] != num_frames:
        raise VideoReadError(f"{path}: decoded {frames.shape}, expected {num_frames} frames")
    return frames


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float) -> None:
    """Write ``(F, H, W)`` grey or ``(F, H, W, 3)`` RGB uint8 frames as AVI (MJPG) or MP4.

    The file appears atomically (written beside, then renamed): a crash leaves no
    half-written video under the final name.
    """
    import cv2

    path = Path(path)
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"{path}: frames must be uint8, got {frames.dtype}")
    if frames.ndim == 3:
        frames = np.repeat(frames[..., None], 3, axis=-1)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"{path}: frames must be (F, H, W) or (F, H, W, 3), got {frames.shape}")
    suffix = path.suffix.lower()
    fourcc = {".avi": "MJPG", ".mp4": "mp4v"}.get(suffix)
    if fourcc is None:
        raise ValueError(f"{path}: unsupported video suffix {suffix!r} (use .avi or .mp4)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=suffix, prefix=f".{path.stem}.", dir=path.parent)
    os.close(fd)
    try:
        height, width = frames.shape[1:3]
        writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*fourcc), float(fps), (width, height))
        if not writer.isOpened():
            raise OSError(f"{path}: OpenCV cannot open a {fourcc} writer")
        for frame in frames:
            writer.write(np.ascontiguousarray(frame[..., ::-1]))  # OpenCV wants BGR
        writer.release()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
