"""Multi-frame ultrasound DICOM in, EchoNet-style 112x112 RGB frames out.

EchoNet-Dynamic's videos were converted from clinic DICOM with pydicom and OpenCV: read the
frames, keep only the ultrasound sector (burned-in text, labels and the ECG trace blanked),
crop, resize to 112x112 (their notebook ``scripts/ConvertDICOMToAVI.ipynb``; frame rate from
CineRate (0018,0040), 30 fps when absent). Their mask was a fixed triangle tuned to one
scanner's layout; here the sector is found from the data (see ``sector_mask``), so other
scanners' layouts work too.

PHI: DICOM headers carry patient identifiers. Nothing in this module reads them, and error
messages and logs name a file only by its file name (or a caller-given display name, e.g.
``anonymous_id(path)`` when file names themselves carry PHI). pydicom's own warnings and log
records, which can quote header values, are silenced while a file is read.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cardiac_pipeline.echo.video import VideoInfo, VideoReadError

logger = logging.getLogger(__name__)

DICOM_PREAMBLE_BYTES = 128
DICOM_MAGIC = b"DICM"
DEFAULT_FPS = 30.0  # what EchoNet-Dynamic's conversion assumed when CineRate was missing
SUPPORTED_PHOTOMETRIC = (
    "MONOCHROME1",
    "MONOCHROME2",
    "RGB",
    "YBR_FULL",
    "YBR_FULL_422",
    "PALETTE COLOR",
)
# RegionSpatialFormat (0018,6012) value of a 2D image region (B-mode or colour flow)
_REGION_FORMAT_2D = 1


class DicomReadError(VideoReadError):
    """A DICOM file that is not a readable multi-frame echo; the message names only the file."""


@dataclass(frozen=True)
class SectorMaskParams:
    """How ``sector_mask`` tells the ultrasound sector from overlays.

    min_temporal_std: grey-level standard deviation over frames above which a pixel counts
        as live ultrasound (speckle moves; burned-in text and the black background do not).
    max_overlay_chroma: a pixel whose colour channels differ by more than this in any frame
        is a coloured overlay (ECG trace, markers) and does not seed the sector; ``None``
        disables the test (B-mode is grey; colour Doppler inside the sector is restored by
        the convex hull).
    opening_px: side of the morphological opening that removes specks and cuts thin bridges
        (an ECG line touching the fan) before the largest component is taken; <= 1 disables.
    min_sector_fraction: the sector must cover at least this fraction of the frame, else
        no sector was found.
    """

    min_temporal_std: float = 2.0
    max_overlay_chroma: int | None = 30
    opening_px: int = 3
    min_sector_fraction: float = 0.02


def is_dicom(path: str | os.PathLike) -> bool:
    """True when the file has the DICOM Part 10 layout: 128-byte preamble then ``DICM``.

    The extension is not trusted (clinic exports often have none). Files without the
    preamble (old ACR-NEMA style) are not accepted.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(DICOM_PREAMBLE_BYTES + len(DICOM_MAGIC))
    except OSError:
        return False
    return len(head) == DICOM_PREAMBLE_BYTES + len(DICOM_MAGIC) and head[-4:] == DICOM_MAGIC


def anonymous_id(path: str | os.PathLike, *, salt: bytes = b"", chunk_bytes: int = 1 << 20) -> str:
    """A stable, EchoNet-style name (``0X`` + 16 hex digits) from the SHA-256 of the file's bytes.

    For when file names themselves carry PHI; otherwise prefer the file stem as the display
    name. The hash covers the file's content (not its path or name), so the id does not
    change when the file is moved or renamed, and two byte-identical copies share an id
    (a duplicate). A site-secret ``salt`` makes ids unlinkable across sites. 64 bits: a
    collision is unlikely below billions of files.
    """
    digest = hashlib.sha256(salt)
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            digest.update(block)
    return "0X" + digest.hexdigest()[:16].upper()


class _DropRecords(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        self.dropped += 1
        return False


@contextlib.contextmanager
def _quiet_pydicom(name: str) -> Iterator[None]:
    """Silence pydicom's warnings and log records: they can quote header values (PHI)."""
    pydicom_logger = logging.getLogger("pydicom")
    drop = _DropRecords()
    pydicom_logger.addFilter(drop)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        pydicom_logger.removeFilter(drop)
    silenced = len(caught) + drop.dropped
    if silenced:
        logger.debug("%s: %d pydicom warning(s) silenced (may quote header values)", name, silenced)


def _read_header(path: Path, name: str, *, with_pixels: bool):
    import pydicom

    if not path.is_file():
        raise DicomReadError(f"{name}: file not found")
    if not is_dicom(path):
        raise DicomReadError(
            f"{name}: not a DICOM file (no 'DICM' marker after the 128-byte preamble)"
        )
    with _quiet_pydicom(name):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=not with_pixels)
        except Exception as exc:  # the message may quote header bytes: keep only the type
            raise DicomReadError(
                f"{name}: DICOM header does not parse ({exc.__class__.__name__})"
            ) from None
    return ds


def _number_of_frames(ds, name: str) -> int:
    with _quiet_pydicom(name):
        try:
            n_frames = int(ds.get("NumberOfFrames", 1) or 1)
        except Exception:
            raise DicomReadError(f"{name}: NumberOfFrames is not a number") from None
    if n_frames < 2:
        raise DicomReadError(f"{name}: not a multi-frame echo ({n_frames} frame)")
    return n_frames


def _positive(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def dicom_frame_rate(ds) -> tuple[float, str] | None:
    """Frame rate from the header and the attribute it came from, or None.

    Precedence: CineRate (0018,0040) as EchoNet-Dynamic's conversion used,
    RecommendedDisplayFrameRate (0008,2144), FrameTime (0018,1063, ms between frames),
    FrameTimeVector (0018,1065, ms since the previous frame; the first entry is 0, so the
    mean of the others). Zero, negative or unparsable values are skipped.
    """
    for keyword in ("CineRate", "RecommendedDisplayFrameRate"):
        fps = _positive(ds.get(keyword))
        if fps is not None:
            return fps, keyword
    frame_time_ms = _positive(ds.get("FrameTime"))
    if frame_time_ms is not None:
        return 1000.0 / frame_time_ms, "FrameTime"
    vector = ds.get("FrameTimeVector")
    if vector is not None:
        iterable = hasattr(vector, "__iter__") and not isinstance(vector, (str, bytes))
        values = list(vector) if iterable else [vector]
        times = [t for t in (_positive(v) for v in values) if t is not None]
        if times:
            return 1000.0 / float(np.mean(times)), "FrameTimeVector"
    return None


def _frame_rate(ds, name: str, default_fps: float) -> float:
    with _quiet_pydicom(name):
        try:
            found = dicom_frame_rate(ds)
        except Exception:
            found = None
    if found is None:
        logger.warning(
            "%s: no frame rate in the DICOM header (CineRate, RecommendedDisplayFrameRate, "
            "FrameTime, FrameTimeVector); using the default %g fps",
            name,
            default_fps,
        )
        return float(default_fps)
    fps, source = found
    logger.debug("%s: %g fps from %s", name, fps, source)
    return float(fps)


def ultrasound_region(ds, name: str = "DICOM") -> tuple[int, int, int, int] | None:
    """Bounds ``(x0, y0, x1, y1)`` (inclusive pixels) of the largest 2D image region.

    From SequenceOfUltrasoundRegions (0018,6011): the scanner's own statement of where the
    B-mode image lies, as opposed to its ECG (waveform) or spectral regions. None when the
    sequence is absent or holds no 2D region. An item whose bounds do not read is skipped
    with a warning naming ``name`` (the file) and the error type, never header values.
    """
    best: tuple[int, int, int, int] | None = None
    best_area = 0
    for item in ds.get("SequenceOfUltrasoundRegions", None) or []:
        try:
            if int(item.get("RegionSpatialFormat", -1)) != _REGION_FORMAT_2D:
                continue
            box = tuple(
                int(item[k].value)
                for k in (
                    "RegionLocationMinX0",
                    "RegionLocationMinY0",
                    "RegionLocationMaxX1",
                    "RegionLocationMaxY1",
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            logger.warning(
                "%s: an ultrasound region's bounds do not read (%s); region ignored",
                name,
                exc.__class__.__name__,
            )
            continue
        area = (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
        if box[2] >= box[0] and box[3] >= box[1] and area > best_area:
            best, best_area = box, area
    return best


def probe_dicom(
    path: str | os.PathLike,
    *,
    default_fps: float = DEFAULT_FPS,
    display_name: str | None = None,
) -> VideoInfo:
    """Frame count, frame rate and stored size from the header alone (pixels not decoded).

    Height and width are the stored frame's, before sector cropping and resizing.
    """
    path = Path(path)
    name = display_name or path.name
    ds = _read_header(path, name, with_pixels=False)
    n_frames = _number_of_frames(ds, name)
    with _quiet_pydicom(name):
        try:
            height, width = int(ds.Rows), int(ds.Columns)
        except Exception:
            raise DicomReadError(f"{name}: Rows/Columns missing or not numbers") from None
    fps = _frame_rate(ds, name, default_fps)
    return VideoInfo(num_frames=n_frames, fps=fps, height=height, width=width)


def _to_uint8(arr: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if signed:
        low, high = -(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1
    else:
        low, high = 0, 2**bits_stored - 1
    scaled = (arr.astype(np.float32) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _decode_rgb(ds, name: str, n_frames: int) -> np.ndarray:
    """All frames as ``(F, H, W, 3)`` uint8 RGB, whatever the stored colour space."""
    from pydicom.pixels import apply_color_lut, convert_color_space, get_decoder

    if "PixelData" not in ds:
        raise DicomReadError(f"{name}: no pixel data")
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None:
        raise DicomReadError(f"{name}: no TransferSyntaxUID in the file meta header")
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise DicomReadError(
            f"{name}: pydicom has no decoder for transfer syntax {syntax.name} ({syntax})"
        ) from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no plugin"
        raise DicomReadError(
            f"{name}: pixel data is compressed as {syntax.name} ({syntax}) and no installed "
            f"decoder handles it (pydicom plugins: {missing})"
        )
    with _quiet_pydicom(name):
        try:
            # raw=True: keep the stored colour space, converted explicitly below
            arr, meta = decoder.as_array(ds, raw=True)
            photometric = str(
                getattr(meta.get("photometric_interpretation"), "value", None)
                or meta.get("photometric_interpretation")
                or ds.PhotometricInterpretation
            ).strip()
            bits_stored = int(ds.get("BitsStored", arr.dtype.itemsize * 8))
            signed = int(ds.get("PixelRepresentation", 0)) == 1
            if photometric == "PALETTE COLOR":
                arr = apply_color_lut(arr, ds)
        except DicomReadError:
            raise
        except Exception as exc:  # the message may quote header values: keep only the type
            raise DicomReadError(
                f"{name}: pixel data ({syntax.name}) does not decode "
                f"({exc.__class__.__name__}); file truncated or corrupt?"
            ) from None
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise DicomReadError(
            f"{name}: photometric interpretation {photometric!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_PHOTOMETRIC)})"
        )
    if arr.shape[0] != n_frames or arr.ndim not in (3, 4):
        raise DicomReadError(f"{name}: decoded {arr.shape}, expected {n_frames} frames")
    if photometric == "PALETTE COLOR":
        # the LUT's own depth (8 or 16 bit), not BitsStored, sets the output range
        arr = arr if arr.dtype == np.uint8 else (arr >> 8).astype(np.uint8)
    else:
        arr = _to_uint8(arr, bits_stored, signed)
    if photometric == "MONOCHROME1":  # 0 is white there
        arr = 255 - arr
    if photometric in ("YBR_FULL", "YBR_FULL_422"):
        arr = convert_color_space(np.ascontiguousarray(arr), photometric, "RGB", per_frame=True)
    if arr.ndim == 3:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.shape[-1] != 3:
        raise DicomReadError(f"{name}: {arr.shape[-1]} samples per pixel, expected 1 or 3")
    return np.ascontiguousarray(arr)


def _frame_statistics(frames: np.ndarray, chunk: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel grey standard deviation over time and max channel spread (chroma), chunked."""
    n_frames, height, width = frames.shape[:3]
    total = np.zeros((height, width), np.float64)
    total_sq = np.zeros((height, width), np.float64)
    chroma = np.zeros((height, width), np.int16)
    for start in range(0, n_frames, chunk):
        block = frames[start : start + chunk]
        if block.ndim == 4:  # per-channel slices: reducing over a size-3 last axis is slow
            red, green, blue = (block[..., c].astype(np.int16) for c in range(3))
            grey = (red + green + blue).astype(np.float32) / 3.0
            spread = np.maximum(np.abs(red - green), np.abs(green - blue))
            np.maximum(spread, np.abs(red - blue), out=spread)
            np.maximum(chroma, spread.max(axis=0), out=chroma)
        else:
            grey = block.astype(np.float32)
        total += grey.sum(axis=0)
        total_sq += np.square(grey, dtype=np.float64).sum(axis=0)
    mean = total / n_frames
    std = np.sqrt(np.maximum(total_sq / n_frames - mean**2, 0.0))
    return std, chroma


def _largest_component_hull(seed: np.ndarray, opening_px: int) -> np.ndarray:
    import cv2

    seed = seed.astype(np.uint8)
    if opening_px > 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (opening_px, opening_px))
        seed = cv2.morphologyEx(seed, cv2.MORPH_OPEN, kernel)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(seed, connectivity=8)
    mask = np.zeros(seed.shape, np.uint8)
    if count < 2:
        return mask.astype(bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    points = cv2.findNonZero((labels == largest).astype(np.uint8))
    cv2.fillConvexPoly(mask, cv2.convexHull(points), 1)
    return mask.astype(bool)


def sector_mask(
    frames: np.ndarray,
    *,
    region: tuple[int, int, int, int] | None = None,
    params: SectorMaskParams = SectorMaskParams(),
) -> np.ndarray:
    """Boolean ``(H, W)`` mask of the ultrasound sector in ``(F, H, W[, 3])`` uint8 frames.

    Method: (1) a pixel is live ultrasound when its grey level varies over time (standard
    deviation over frames > ``min_temporal_std``): speckle and moving tissue do, the black
    background and burned-in text, labels and scales do not; (2) pixels that are coloured
    in any frame (channel spread > ``max_overlay_chroma``: a green ECG sweep, coloured
    markers) are dropped from that seed, unless that would leave nothing (a tinted
    B-mode map); (3) a small morphological opening removes specks and thin bridges;
    (4) the largest 8-connected component is the sector: a moving ECG trace, a frame
    counter or heart-rate readout are smaller and apart from it; (5) its convex hull fills
    the dark blood pool and dropouts inside the fan (a sector under 180 degrees is convex).
    ``region`` ``(x0, y0, x1, y1)``, inclusive, from SequenceOfUltrasoundRegions, confines
    the search; if nothing inside it moves, the region itself is the mask.

    Raises ``ValueError`` when fewer than two frames are given or no sector is found.
    """
    frames = np.asarray(frames)
    if frames.ndim not in (3, 4) or frames.shape[0] < 2:
        raise ValueError(f"need (F, H, W[, 3]) frames with F >= 2, got {frames.shape}")
    height, width = frames.shape[1:3]
    std, chroma = _frame_statistics(frames)
    moving = std > params.min_temporal_std
    inside = np.ones((height, width), bool)
    if region is not None:
        x0, y0, x1, y1 = region
        inside[:] = False
        inside[max(y0, 0) : min(y1, height - 1) + 1, max(x0, 0) : min(x1, width - 1) + 1] = True
        moving &= inside
    min_pixels = params.min_sector_fraction * height * width
    seed = moving
    if params.max_overlay_chroma is not None and frames.ndim == 4:
        grey_seed = moving & (chroma <= params.max_overlay_chroma)
        if grey_seed.sum() >= min_pixels:
            seed = grey_seed
    mask = _largest_component_hull(seed, params.opening_px) & inside
    if mask.sum() < min_pixels:
        if region is not None and inside.any():
            return inside
        raise ValueError(
            f"no moving ultrasound sector found: {int(mask.sum())} pixels, need "
            f">= {params.min_sector_fraction:.0%} of the {height}x{width} frame"
        )
    return mask


def crop_to_sector(frames: np.ndarray, mask: np.ndarray, size: int = 112) -> np.ndarray:
    """Zero outside ``mask``, crop to its bounding box made square, resize to ``size``.

    The square is centred on the box; where it reaches past the frame edge the missing
    part is black, so the sector is never stretched. Resizing uses ``cv2.INTER_AREA``
    (averages when shrinking, so speckle does not alias). Keeps the channel layout:
    ``(F, H, W, 3)`` -> ``(F, size, size, 3)``, ``(F, H, W)`` -> ``(F, size, size)``.
    """
    import cv2

    frames = np.asarray(frames)
    mask = np.asarray(mask, bool)
    if frames.ndim not in (3, 4) or frames.shape[1:3] != mask.shape:
        raise ValueError(f"frames {frames.shape} and mask {mask.shape} do not match")
    if not mask.any():
        raise ValueError("mask is empty: nothing to crop")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    side = max(bottom - top, right - left)
    top -= (side - (bottom - top)) // 2
    left -= (side - (right - left)) // 2
    height, width = mask.shape
    src_y0, src_y1 = max(top, 0), min(top + side, height)
    src_x0, src_x1 = max(left, 0), min(left + side, width)
    square = np.zeros((frames.shape[0], side, side, *frames.shape[3:]), np.uint8)
    window = mask[src_y0:src_y1, src_x0:src_x1]
    if frames.ndim == 4:
        window = window[..., None]
    square[:, src_y0 - top : src_y1 - top, src_x0 - left : src_x1 - left] = (
        frames[:, src_y0:src_y1, src_x0:src_x1] * window
    )
    out = np.empty((frames.shape[0], size, size, *frames.shape[3:]), np.uint8)
    for index, frame in enumerate(square):
        out[index] = cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)
    return out


def read_dicom_video(
    path: str | os.PathLike,
    *,
    size: int = 112,
    default_fps: float = DEFAULT_FPS,
    display_name: str | None = None,
    use_ultrasound_regions: bool = True,
    sector: SectorMaskParams = SectorMaskParams(),
) -> tuple[np.ndarray, float]:
    """Read a multi-frame echo DICOM as EchoNet-Dynamic did: ``(F, size, size, 3)`` uint8 RGB, fps.

    The sector is found (``sector_mask``, confined to the scanner's 2D region from
    SequenceOfUltrasoundRegions when present and ``use_ultrasound_regions``), everything
    outside it zeroed, then cropped square and resized (``crop_to_sector``). fps comes from
    the header (``dicom_frame_rate``); without one, ``default_fps`` with a logged warning.
    Compressed pixel data decodes when an installed pydicom plugin handles it (RLE always;
    JPEG baseline and JPEG 2000 through Pillow); otherwise ``DicomReadError`` names the
    missing decoder. Messages and logs name the file by ``display_name`` or its file name,
    never by header content. Raises ``DicomReadError`` (a ``VideoReadError``).
    """
    path = Path(path)
    name = display_name or path.name
    ds = _read_header(path, name, with_pixels=True)
    n_frames = _number_of_frames(ds, name)
    fps = _frame_rate(ds, name, default_fps)
    region = None
    if use_ultrasound_regions:
        with _quiet_pydicom(name):
            try:
                region = ultrasound_region(ds, name)
            except Exception as exc:  # a malformed sequence: the sector is found without it
                logger.warning(
                    "%s: SequenceOfUltrasoundRegions does not read (%s); finding the sector "
                    "in the whole image",
                    name,
                    exc.__class__.__name__,
                )
                region = None
    frames = _decode_rgb(ds, name, n_frames)
    try:
        mask = sector_mask(frames, region=region, params=sector)
    except ValueError as exc:
        raise DicomReadError(f"{name}: {exc}") from None
    return crop_to_sector(frames, mask, size), fps
