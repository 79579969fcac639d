"""Multi-frame ultrasound DICOM reading: sector masking, colour spaces, frame rate, PHI safety.

Every fixture is built here with pydicom: a moving fan (the ultrasound sector), static white
burned-in text in the corners, and an ECG trace sweeping along the bottom, with patient
identifiers in the header that must never surface.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space
from pydicom.tag import Tag
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from cardiac_pipeline.echo.dicom import (
    DEFAULT_FPS,
    DicomReadError,
    SectorMaskParams,
    anonymous_id,
    crop_to_sector,
    dicom_frame_rate,
    is_dicom,
    probe_dicom,
    read_dicom_video,
    sector_mask,
    ultrasound_region,
)
from cardiac_pipeline.echo.video import VideoReadError

US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
PHI = ("DOE", "JANE", "PHI-12345", "19800101", "ST-JUDE")
N_FRAMES, ROWS, COLS = 20, 160, 200
APEX_ROW, APEX_COL, RADIUS, HALF_ANGLE = 8, 100, 130, np.deg2rad(35)
TEXT_BOXES = ((slice(4, 23), slice(4, 45)), (slice(4, 15), slice(160, 197)))
ECG_ROWS = slice(143, 158)
SECTOR_MAX = 200  # fan content stays at or below this; text is 255, the ECG 250 or green


def true_fan() -> np.ndarray:
    yy, xx = np.mgrid[:ROWS, :COLS]
    dy, dx = yy - APEX_ROW, xx - APEX_COL
    return (np.hypot(dy, dx) <= RADIUS) & (np.abs(np.arctan2(dx, dy)) <= HALF_ANGLE) & (dy >= 0)


def scene(seed: int = 0, n_frames: int = N_FRAMES) -> tuple[np.ndarray, np.ndarray]:
    """Grey ``(F, H, W)`` frames and a boolean ``(F, H, W)`` map of the ECG trace."""
    rng = np.random.default_rng(seed)
    fan = true_fan()
    yy, xx = np.mgrid[:ROWS, :COLS]
    r = np.hypot(yy - APEX_ROW, xx - APEX_COL)
    grey = np.zeros((n_frames, ROWS, COLS), np.uint8)
    ecg = np.zeros((n_frames, ROWS, COLS), bool)
    for t in range(n_frames):
        tissue = 110 + 45 * np.sin(r / 7.0 - 0.7 * t) + rng.normal(0, 15, (ROWS, COLS))
        grey[t][fan] = np.clip(tissue, 30, SECTOR_MAX)[fan]
        for rows, cols in TEXT_BOXES:
            grey[t, rows, cols] = 255
        sweep = min(10 + 9 * (t + 1), COLS - 10)  # the trace is drawn up to a moving cursor
        for x in range(10, sweep):
            y = int(150 + 5 * np.sin(x / 6.0))
            ecg[t, y - 1 : y + 2, x] = True
        grey[t][ecg[t]] = 250
    return grey, ecg


def write_echo(
    path: Path,
    *,
    photometric: str = "MONOCHROME2",
    timing: dict | None = None,
    n_frames: int = N_FRAMES,
    regions: list[dict] | None = None,
    compress: str | None = None,
) -> Path:
    grey, ecg = scene(n_frames=n_frames)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = US_MULTIFRAME
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = US_MULTIFRAME
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.PatientName = "DOE^JANE"
    ds.PatientID = "PHI-12345"
    ds.PatientBirthDate = "19800101"
    ds.InstitutionName = "ST-JUDE"
    ds.Rows, ds.Columns = ROWS, COLS
    ds.NumberOfFrames = n_frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    for key, value in ({"CineRate": 50} if timing is None else timing).items():
        setattr(ds, key, value)
    if regions:
        items = []
        for spec in regions:
            item = Dataset()
            for key, value in spec.items():
                setattr(item, key, value)
            items.append(item)
        ds.SequenceOfUltrasoundRegions = items
    if photometric == "MONOCHROME2":
        ds.SamplesPerPixel = 1
        pixels = grey
    else:
        rgb = np.repeat(grey[..., None], 3, axis=-1)
        rgb[ecg] = (0, 255, 0)  # a green ECG trace, as scanners draw it
        ds.SamplesPerPixel = 3
        ds.PlanarConfiguration = 0
        pixels = rgb if photometric == "RGB" else convert_color_space(rgb, "RGB", photometric)
    ds.PhotometricInterpretation = photometric
    if compress == "jpeg":
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PhotometricInterpretation = "YBR_FULL_422"  # what a JPEG of RGB frames holds
        encoded = [
            cv2.imencode(".jpg", f[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])[1] for f in rgb
        ]
        ds.PixelData = encapsulate([e.tobytes() for e in encoded])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        if compress == "rle":
            ds.compress(RLELossless)
    ds.save_as(path, enforce_file_format=True)
    return path


def raw_frames(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    return np.repeat(arr[..., None], 3, axis=-1) if arr.ndim == 3 else arr


def assert_no_phi(*texts: str) -> None:
    for text in texts:
        for secret in PHI:
            assert secret not in text, f"PHI {secret!r} leaked into: {text[:200]}"


@pytest.fixture
def mono(tmp_path: Path) -> Path:
    return write_echo(tmp_path / "echo_001.dcm")


def test_reads_frames_fps_layout(mono: Path) -> None:
    frames, fps = read_dicom_video(mono)
    assert frames.shape == (N_FRAMES, 112, 112, 3) and frames.dtype == np.uint8
    assert fps == 50.0
    assert (frames[..., 0] == frames[..., 1]).all() and (frames[..., 1] == frames[..., 2]).all()
    small, _ = read_dicom_video(mono, size=64)
    assert small.shape == (N_FRAMES, 64, 64, 3)


def test_sector_mask_drops_text_and_ecg_keeps_fan(mono: Path) -> None:
    mask = sector_mask(raw_frames(mono))
    for rows, cols in TEXT_BOXES:
        assert not mask[rows, cols].any()
    assert not mask[ECG_ROWS].any()
    fan = true_fan()
    iou = (mask & fan).sum() / (mask | fan).sum()
    assert iou > 0.9


def test_output_has_no_overlay_and_matches_true_sector_crop(mono: Path) -> None:
    frames, _ = read_dicom_video(mono)
    assert frames.max() <= SECTOR_MAX  # text (255) and ECG (250) are gone
    assert 0.35 < (frames[0, ..., 0] > 0).mean() < 0.6  # fan area in its square box
    assert frames[..., 0].astype(float).std(axis=0).mean() > 5  # motion survives
    expected = crop_to_sector(raw_frames(mono), true_fan(), 112)
    got_fan, true_fan_out = frames[..., 0] > 0, expected[..., 0] > 0
    assert (got_fan & true_fan_out).sum() / (got_fan | true_fan_out).sum() > 0.95
    assert abs(frames[got_fan].mean() - expected[true_fan_out].mean()) < 3


@pytest.mark.parametrize("photometric", ["RGB", "YBR_FULL"])
def test_colour_variants_drop_green_ecg(tmp_path: Path, photometric: str) -> None:
    path = write_echo(tmp_path / "echo_rgb.dcm", photometric=photometric)
    frames, fps = read_dicom_video(path)
    assert frames.shape == (N_FRAMES, 112, 112, 3) and fps == 50.0
    channels = frames.astype(int)
    assert np.abs(channels[..., 1] - channels[..., 0]).max() <= 2  # no green left
    assert frames.max() <= SECTOR_MAX + 2
    grey_frames, _ = read_dicom_video(write_echo(tmp_path / "echo_grey.dcm"))
    assert np.abs(channels - grey_frames).mean() < 1.5


def test_rle_compressed_reads_like_uncompressed(tmp_path: Path, mono: Path) -> None:
    rle = write_echo(tmp_path / "echo_rle.dcm", compress="rle")
    assert pydicom.dcmread(rle).file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(read_dicom_video(rle)[0], read_dicom_video(mono)[0])


def test_jpeg_baseline_ybr422_decodes(tmp_path: Path) -> None:
    path = write_echo(tmp_path / "echo_jpeg.dcm", photometric="RGB", compress="jpeg")
    frames, _ = read_dicom_video(path)
    assert frames.shape == (N_FRAMES, 112, 112, 3)
    assert frames.max() <= SECTOR_MAX + 15  # lossy, but no text or ECG
    assert (frames[0, ..., 0] > 0).mean() > 0.35


def test_undecodable_compression_names_file_and_decoder(tmp_path: Path) -> None:
    path = write_echo(tmp_path / "echo_jls.dcm")
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8not-a-real-codestream\xff\xd9"] * N_FRAMES)
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DicomReadError) as err:
        read_dicom_video(path)
    message = str(err.value)
    assert "echo_jls.dcm" in message and "JPEG-LS" in message and "requires" in message
    assert_no_phi(message)


def test_frame_rate_from_frame_time_and_vector(tmp_path: Path) -> None:
    ft = write_echo(tmp_path / "ft.dcm", timing={"FrameTime": 25})
    assert read_dicom_video(ft)[1] == pytest.approx(40.0)
    vector = [0] + [20] * (N_FRAMES - 1)
    ftv = write_echo(tmp_path / "ftv.dcm", timing={"FrameTimeVector": vector})
    assert probe_dicom(ftv).fps == pytest.approx(50.0)
    rdfr = write_echo(
        tmp_path / "rdfr.dcm", timing={"RecommendedDisplayFrameRate": 30, "FrameTime": 10}
    )
    assert dicom_frame_rate(pydicom.dcmread(rdfr)) == (30.0, "RecommendedDisplayFrameRate")


def test_missing_frame_rate_falls_back_with_warning(tmp_path: Path, caplog) -> None:
    path = write_echo(tmp_path / "echo_nofps.dcm", timing={})
    with caplog.at_level(logging.WARNING, logger="cardiac_pipeline.echo.dicom"):
        _, fps = read_dicom_video(path, default_fps=24.0)
    assert fps == 24.0
    assert "echo_nofps.dcm" in caplog.text and "default 24" in caplog.text
    assert read_dicom_video(path)[1] == DEFAULT_FPS


def test_single_frame_is_rejected(tmp_path: Path) -> None:
    path = write_echo(tmp_path / "still.dcm", n_frames=1)
    with pytest.raises(DicomReadError, match=r"still\.dcm: not a multi-frame echo"):
        read_dicom_video(path)
    with pytest.raises(DicomReadError, match="not a multi-frame echo"):
        probe_dicom(path)


def test_non_dicom_rejected_without_trusting_extension(tmp_path: Path, mono: Path) -> None:
    fake = tmp_path / "fake.dcm"
    fake.write_bytes(b"RIFF" + bytes(300))
    assert not is_dicom(fake)
    assert not is_dicom(tmp_path / "absent.dcm")
    with pytest.raises(VideoReadError, match=r"fake\.dcm: not a DICOM file"):
        read_dicom_video(fake)
    bare = mono.rename(tmp_path / "IM0001")  # clinic exports often have no extension
    assert is_dicom(bare)
    assert read_dicom_video(bare)[0].shape[0] == N_FRAMES


def test_ultrasound_region_confines_sector(tmp_path: Path) -> None:
    regions = [
        # the ECG waveform region is larger but not a 2D image region: ignored
        {"RegionSpatialFormat": 4, "RegionDataType": 9, "RegionLocationMinX0": 0,
         "RegionLocationMinY0": 0, "RegionLocationMaxX1": COLS - 1, "RegionLocationMaxY1": ROWS - 1},
        {"RegionSpatialFormat": 1, "RegionDataType": 1, "RegionLocationMinX0": APEX_COL,
         "RegionLocationMinY0": 0, "RegionLocationMaxX1": COLS - 1, "RegionLocationMaxY1": 140},
    ]  # fmt: skip
    path = write_echo(tmp_path / "regions.dcm", regions=regions)
    box = ultrasound_region(pydicom.dcmread(path))
    assert box == (APEX_COL, 0, COLS - 1, 140)
    mask = sector_mask(raw_frames(path), region=box)
    assert not mask[:, :APEX_COL].any()
    right_fan = true_fan() & (np.arange(COLS) >= APEX_COL)
    assert (mask & right_fan).sum() / right_fan.sum() > 0.9
    with_region, _ = read_dicom_video(path)
    without, _ = read_dicom_video(path, use_ultrasound_regions=False)
    # the right half-fan is centred in its square: its left fifth is padding
    assert (with_region[:, :, :20] == 0).all() and (without[:, :, :20] > 0).any()


def test_colour_ecg_touching_the_fan_is_not_part_of_it() -> None:
    grey, _ = scene()
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for t in range(N_FRAMES):  # a green trace sweeping across the fan's lower edge
        rgb[t, 136:140, 10 : 20 + 8 * t] = (0, 255, 0)
    mask = sector_mask(rgb)
    assert not mask[:, :24].any() and not mask[:, 177:].any()
    assert (mask & true_fan()).sum() / true_fan().sum() > 0.95
    by_grey_only = sector_mask(rgb, params=SectorMaskParams(max_overlay_chroma=None))
    assert by_grey_only[136:140, 21:24].all()  # without the colour test the trace joins in


def test_static_video_has_no_sector() -> None:
    still = np.repeat(scene()[0][:1], 5, axis=0)
    with pytest.raises(ValueError, match="no moving ultrasound sector"):
        sector_mask(still)
    colour = np.repeat(still[..., None], 3, axis=-1)
    with pytest.raises(ValueError, match="no moving"):
        sector_mask(colour, params=SectorMaskParams(min_temporal_std=0.5))


def test_crop_to_sector_pads_square_and_keeps_layout() -> None:
    frames = np.full((2, 40, 100), 200, np.uint8)
    mask = np.zeros((40, 100), bool)
    mask[:, 10:90] = True  # 40x80 box -> 80x80 square reaching past the frame edges
    out = crop_to_sector(frames, mask, 40)
    assert out.shape == (2, 40, 40)
    assert (out[:, :8] == 0).all() and (out[:, -8:] == 0).all()  # padding, not stretching
    assert (out[:, 15:25] == 200).all()
    rgb = crop_to_sector(np.repeat(frames[..., None], 3, axis=-1), mask, 40)
    assert rgb.shape == (2, 40, 40, 3) and (rgb[..., 0] == out).all()


def test_anonymous_id_is_content_hash(tmp_path: Path, mono: Path) -> None:
    ident = anonymous_id(mono)
    assert len(ident) == 18 and ident.startswith("0X") and int(ident[2:], 16) >= 0
    copy = tmp_path / "renamed_copy"
    copy.write_bytes(mono.read_bytes())
    assert anonymous_id(copy) == ident  # content, not name or place
    assert anonymous_id(mono, salt=b"site-secret") != ident
    other = write_echo(tmp_path / "other.dcm", timing={"CineRate": 49})
    assert anonymous_id(other) != ident
    assert_no_phi(ident)


def test_no_phi_in_outputs_errors_or_logs(tmp_path: Path, caplog, recwarn) -> None:
    # a malformed CineRate forces pydicom to complain about a header value that holds PHI
    bad = write_echo(tmp_path / "bad_rate.dcm", timing={"FrameTime": 20})
    ds = pydicom.dcmread(bad)
    ds[Tag(0x00180040)] = RawDataElement(Tag(0x00180040), "IS", 10, b"PHI-12345 ", 0, False, True)
    ds.save_as(bad, enforce_file_format=True)
    messages = []
    with caplog.at_level(logging.DEBUG):
        frames, fps = read_dicom_video(bad)
        assert fps == pytest.approx(50.0)  # CineRate unusable, FrameTime used
        read_dicom_video(write_echo(tmp_path / "nofps.dcm", timing={}))
        messages.append(repr(probe_dicom(bad)))
        for path in (
            write_echo(tmp_path / "single.dcm", n_frames=1),
            tmp_path / "missing.dcm",
        ):
            with pytest.raises(DicomReadError) as err:
                read_dicom_video(path)
            messages.append(str(err.value))
    assert frames.dtype == np.uint8 and isinstance(fps, float)
    assert caplog.records  # something was logged (the fps fallback at least)
    assert_no_phi(caplog.text, *messages, *(str(w.message) for w in recwarn))
    with pytest.raises(DicomReadError) as err:
        read_dicom_video(tmp_path / "single.dcm", display_name="0XABC")
    assert str(err.value).startswith("0XABC:") and "single.dcm" not in str(err.value)
