"""A DICOM whose ultrasound region does not read: logged (file name, error type), not swallowed."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cardiac_pipeline.echo.dicom import read_dicom_video
from tests.echo.test_dicom import PHI, write_echo


def test_unreadable_region_is_logged_without_header_values(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    regions = [  # a 2D region without its last bound
        {
            "RegionSpatialFormat": 1,
            "RegionLocationMinX0": 20,
            "RegionLocationMinY0": 0,
            "RegionLocationMaxX1": 100,
        }
    ]
    path = write_echo(tmp_path / "broken_region.dcm", regions=regions)
    with caplog.at_level(logging.WARNING, logger="cardiac_pipeline.echo.dicom"):
        frames, _ = read_dicom_video(path, display_name="clip_7")
    assert frames.shape[1:3] == (112, 112)  # the video is still read, sector from the image
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("clip_7" in m and "region" in m and "KeyError" in m for m in warnings), warnings
    for secret in PHI:
        assert secret not in caplog.text
