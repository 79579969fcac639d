"""Ingestion of EchoNet-format folders: one fixture per fault, each with exactly that fault."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cardiac_pipeline.echo.echonet import (
    INDEX_COLUMNS,
    REJECT_COLUMNS,
    EchoNetFormatError,
    build_video_index,
    end_diastole_end_systole_frames,
    read_file_list,
    read_volume_tracings,
    summarise_ingestion,
)
from cardiac_pipeline.echo.video import write_video
from tests.conftest import INGESTION

HEADER = "FileName,EF,ESV,EDV,FrameHeight,FrameWidth,FPS,NumberOfFrames,Split"
GOOD = ["0XAAA", "0XBBB"]  # present in every folder, always usable


def _frames(n: int, height: int = 112, width: int = 112, seed: int = 0) -> np.ndarray:
    """A bright disc that grows and shrinks over grey noise: compresses like echo."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    radius = min(height, width) / 4 * (1 + 0.3 * np.sin(np.arange(n) * 2 * np.pi / 20))
    disc = np.hypot(yy - height / 2, xx - width / 2)[None] < radius[:, None, None]
    return (disc * 180 + rng.integers(0, 50, (n, height, width))).astype(np.uint8)


@pytest.fixture(scope="module")
def video_bytes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Encoded once per module, copied into each folder (keeps the tests fast)."""
    out = tmp_path_factory.mktemp("videos")
    write_video(out / "v.avi", _frames(30), fps=50)
    write_video(out / "v.mp4", _frames(30, seed=1), fps=30)
    write_video(out / "short.avi", _frames(5), fps=50)
    write_video(out / "big.avi", _frames(10, 768, 1024), fps=25)
    return {p.name: p.read_bytes() for p in out.iterdir()}


def _row(
    name: str, ef: object = 60.0, esv: object = 20.0, edv: object = 50.0, split="TRAIN"
) -> str:
    # FrameHeight/Width/FPS/NumberOfFrames deliberately wrong: they must come from the file.
    return f"{name},{ef},{esv},{edv},1,1,1.0,999,{split}"


def _folder(
    root: Path,
    video_bytes: dict[str, bytes],
    extra_rows: list[str] = (),
    extra_files: dict[str, bytes] | None = None,
    header: str = HEADER,
    good_rows: list[str] | None = None,
    encoding_bom: bool = False,
) -> Path:
    videos = root / "Videos"
    videos.mkdir(parents=True)
    for name in GOOD:
        (videos / f"{name}.avi").write_bytes(video_bytes["v.avi"])
    for name, data in (extra_files or {}).items():
        (videos / name).write_bytes(data)
    rows = [_row(n) for n in GOOD] if good_rows is None else good_rows
    text = "\n".join([header, *rows, *extra_rows]) + "\n"
    (root / "FileList.csv").write_bytes(("\ufeff" if encoding_bom else "").encode() + text.encode())
    return root


def _reasons(rejects: pd.DataFrame) -> list[tuple[str, str]]:
    return list(zip(rejects["FileName"], rejects["reason"], strict=True))


# (extra rows, extra files, expected rejects); each case adds exactly one fault.
FAULTS: dict[str, tuple[Callable[[dict], list[str]], Callable[[dict], dict], list]] = {
    "truncated_avi": (
        lambda b: [_row("0XCUT")],
        lambda b: {"0XCUT.avi": b["v.avi"][: len(b["v.avi"]) // 2]},
        [("0XCUT", "truncated")],
    ),
    "truncated_avi_last_bytes": (  # a few bytes short: every frame still decodes
        lambda b: [_row("0XCUT")],
        lambda b: {"0XCUT.avi": b["v.avi"][:-100]},
        [("0XCUT", "truncated")],
    ),
    "truncated_mp4": (
        lambda b: [_row("0XCUT")],
        lambda b: {"0XCUT.mp4": b["v.mp4"][: len(b["v.mp4"]) // 2]},
        [("0XCUT", "truncated")],
    ),
    "missing_file": (lambda b: [_row("0XGONE")], lambda b: {}, [("0XGONE", "missing_file")]),
    "ef_120": (
        lambda b: [_row("0XHIGH", ef=120, esv="", edv="")],
        lambda b: {"0XHIGH.avi": b["v.avi"]},
        [("0XHIGH", "ef_out_of_range")],
    ),
    "duplicate": (
        lambda b: [_row("0XAAA.avi", ef=30.0, esv=35.0, edv=50.0)],
        lambda b: {},
        [("0XAAA", "duplicate")],
    ),
    "ef_inconsistent": (  # (50-20)/50*100 = 60, listed 45
        lambda b: [_row("0XODD", ef=45.0)],
        lambda b: {"0XODD.avi": b["v.avi"]},
        [("0XODD", "ef_inconsistent")],
    ),
    "garbage_file": (
        lambda b: [_row("0XJUNK")],
        lambda b: {"0XJUNK.avi": np.random.default_rng(3).bytes(5000)},
        [("0XJUNK", "undecodable")],
    ),
    "empty_ef": (
        lambda b: [_row("0XNOEF", ef="", esv="", edv="")],
        lambda b: {"0XNOEF.avi": b["v.avi"]},
        [("0XNOEF", "missing_ef")],
    ),
    "non_numeric_ef": (
        lambda b: [_row("0XTEXT", ef="sixty", esv="", edv="")],
        lambda b: {"0XTEXT.avi": b["v.avi"]},
        [("0XTEXT", "missing_ef")],
    ),
    "too_few_frames": (
        lambda b: [_row("0XSHORT")],
        lambda b: {"0XSHORT.avi": b["short.avi"]},
        [("0XSHORT", "too_few_frames")],
    ),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_fault_rejects_exactly_its_row(tmp_path, video_bytes, fault):
    rows, files, expected = FAULTS[fault]
    root = _folder(tmp_path / "raw", video_bytes, rows(video_bytes), files(video_bytes))
    index, rejects = build_video_index(root, **{**INGESTION, "min_frames": 8}, progress=False)
    assert list(index["FileName"]) == GOOD
    assert _reasons(rejects) == expected
    assert list(rejects.columns) == REJECT_COLUMNS
    assert rejects["detail"].str.len().min() > 0
    if fault == "duplicate":  # the first row is kept, not the later one
        assert index.set_index("FileName").loc["0XAAA", "EF"] == 60.0


def test_clean_folder_index_matches_contract(tmp_path, video_bytes):
    extra = [_row("0XBIG", split="test"), _row("0XMP4", split="Val")]
    files = {"0XBIG.avi": video_bytes["big.avi"], "0XMP4.mp4": video_bytes["v.mp4"]}
    root = _folder(tmp_path / "raw", video_bytes, extra, files)
    index, rejects = build_video_index(root, **{**INGESTION, "min_frames": 8}, progress=False)

    assert rejects.empty and list(rejects.columns) == REJECT_COLUMNS
    assert list(index.columns) == INDEX_COLUMNS
    assert list(index["FileName"]) == sorted(["0XAAA", "0XBBB", "0XBIG", "0XMP4"])
    row = index.set_index("FileName")
    # read from the files, not the CSV's 999 frames / 1x1 size / 1 fps
    assert row.loc["0XAAA", "NumberOfFrames"] == 30 and row.loc["0XAAA", "FPS"] == 50.0
    assert (row.loc["0XAAA", "FrameHeight"], row.loc["0XAAA", "FrameWidth"]) == (112, 112)
    assert (row.loc["0XBIG", "FrameHeight"], row.loc["0XBIG", "FrameWidth"]) == (768, 1024)
    assert row["non_standard_size"].to_dict() == {
        "0XAAA": False,
        "0XBBB": False,
        "0XBIG": True,
        "0XMP4": False,
    }
    assert row.loc["0XMP4", "path"].endswith("0XMP4.mp4") and row.loc["0XMP4", "FPS"] == 30.0
    assert row["Split"].to_dict() == {
        "0XAAA": "TRAIN",
        "0XBBB": "TRAIN",
        "0XBIG": "TEST",
        "0XMP4": "VAL",
    }
    assert index["ED_frame"].dtype == "Int64" and index["ED_frame"].isna().all()  # no tracings
    assert (
        summarise_ingestion(index, rejects)
        == "4 usable, 0 rejected; 1 not standard size (accepted)"
    )


def test_bom_header_and_avi_suffix_in_filename(tmp_path, video_bytes):
    rows = [_row("0XAAA.avi"), _row("0XBBB.AVI", split="val")]
    root = _folder(tmp_path / "raw", video_bytes, good_rows=rows, encoding_bom=True)
    listed = read_file_list(root / "FileList.csv")
    assert list(listed["FileName"]) == GOOD
    assert list(listed["suffix"]) == [".avi", ".AVI"]
    assert list(listed["Split"]) == ["TRAIN", "VAL"]
    index, rejects = build_video_index(root, **{**INGESTION, "min_frames": 8}, progress=False)
    assert rejects.empty and list(index["FileName"]) == GOOD
    assert all(p.endswith(".avi") for p in index["path"])


def test_users_csv_with_only_filename_and_ef(tmp_path, video_bytes):
    root = _folder(
        tmp_path / "raw", video_bytes, header="filename, ef", good_rows=["0XAAA,55.5", "0XBBB,31"]
    )
    index, rejects = build_video_index(root, **{**INGESTION, "min_frames": 8}, progress=False)
    assert rejects.empty
    assert list(index["Split"]) == ["UNSPECIFIED", "UNSPECIFIED"]
    assert list(index["EF"]) == [55.5, 31.0]
    assert index[["ESV", "EDV"]].isna().all().all()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Name,EF\n0XAAA,50\n", "missing column(s) FileName"),
        ("FileName,ESV\n0XAAA,50\n", "missing column(s) EF"),
        ("FileName,EF\n0XAAA,50\n0XBBB,50%\n", "column EF line 3: '50%' is not a number"),
        ("FileName,EF,Split\n0XAAA,50,holdout\n", "column Split line 2: 'holdout'"),
        ("FileName,EF\n,50\n", "column FileName line 2: empty file name"),
    ],
)
def test_malformed_file_list_names_file_and_column(tmp_path, text, message):
    path = tmp_path / "FileList.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match="FileList.csv") as err:
        read_file_list(path)
    assert message in str(err.value)


def test_summary_counts_reasons_most_frequent_first(tmp_path, video_bytes):
    extra = [
        _row("0XG1"),
        _row("0XG2"),
        _row("0XG3"),
        _row("0XHIGH", ef=120, esv="", edv=""),
        _row("0XJUNK"),
    ]
    files = {"0XJUNK.avi": b"not a video at all" * 100, "0XHIGH.avi": video_bytes["v.avi"]}
    root = _folder(tmp_path / "raw", video_bytes, extra, files)
    index, rejects = build_video_index(root, **{**INGESTION, "workers": 2}, progress=False)
    assert summarise_ingestion(index, rejects) == (
        "2 usable, 5 rejected: 3 missing file, 1 EF out of range, 1 undecodable"
    )


def test_no_usable_video_raises_with_reasons(tmp_path, video_bytes):
    root = _folder(tmp_path / "raw", video_bytes, good_rows=[_row("0XAAA", ef=150), _row("0XZZZ")])
    with pytest.raises(ValueError, match=r"no usable video .*1 EF out of range, 1 missing file"):
        build_video_index(root, **{**INGESTION, "min_frames": 8}, progress=False)


def test_missing_file_list_or_videos_folder(tmp_path, video_bytes):
    root = _folder(tmp_path / "raw", video_bytes)
    shutil.rmtree(root / "Videos")
    with pytest.raises(EchoNetFormatError, match="no Videos/ folder"):
        build_video_index(root, **{**INGESTION, "min_frames": 8}, progress=False)
    (root / "FileList.csv").unlink()
    with pytest.raises(ValueError, match="no FileList.csv"):
        build_video_index(root, **{**INGESTION, "min_frames": 8}, progress=False)


def _tracing_rows(name: str, frame: int, long_axis: float, chord: float, n: int = 20) -> list[str]:
    rows = [f"{name}.avi,50,20,50,{20 + long_axis},{frame}"]
    rows += [
        f"{name}.avi,{50 - chord / 2},{25 + k},{50 + chord / 2},{25 + k},{frame}" for k in range(n)
    ]
    return rows


def test_volume_tracings_give_ed_es_by_volume_not_row_order(tmp_path, video_bytes):
    # 0XAAA lists the small (ES) frame first, 0XBBB the large (ED) frame first.
    lines = ["FileName,X1,Y1,X2,Y2,Frame"]
    lines += _tracing_rows("0XAAA", 3, 60, 20) + _tracing_rows("0XAAA", 17, 80, 30)
    lines += _tracing_rows("0XBBB", 12, 80, 30) + _tracing_rows("0XBBB", 4, 60, 20)
    lines += _tracing_rows("0XLATE", 5, 80, 30) + _tracing_rows("0XLATE", 90, 60, 20)
    root = _folder(
        tmp_path / "raw",
        video_bytes,
        [_row("0XLATE")],
        {"0XLATE.avi": video_bytes["v.avi"]},
    )
    (root / "VolumeTracings.csv").write_text("\n".join(lines) + "\n")
    tracings = read_volume_tracings(root / "VolumeTracings.csv")
    frames = end_diastole_end_systole_frames(tracings).set_index("FileName")
    assert frames.loc["0XAAA"].tolist() == [17, 3]
    assert frames.loc["0XBBB"].tolist() == [12, 4]
    index, _ = build_video_index(root, **{**INGESTION, "min_frames": 8}, progress=False)
    row = index.set_index("FileName")
    assert (row.loc["0XAAA", "ED_frame"], row.loc["0XAAA", "ES_frame"]) == (17, 3)
    assert pd.isna(row.loc["0XLATE", "ES_frame"])  # frame 90 of a 30-frame video: dropped
    assert read_volume_tracings(tmp_path / "absent.csv") is None


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    } | {str(p.relative_to(root)) + "/": "dir" for p in root.rglob("*") if p.is_dir()}


def test_raw_folder_is_not_modified(tmp_path, video_bytes):
    extra = [_row("0XCUT"), _row("0XGONE"), _row("0XAAA"), _row("0XJUNK")]
    files = {"0XCUT.avi": video_bytes["v.avi"][:5000], "0XJUNK.mp4": b"\x00" * 300}
    root = _folder(tmp_path / "raw", video_bytes, extra, files, encoding_bom=True)
    before = _snapshot(root)
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    index, rejects = build_video_index(root, **{**INGESTION, "workers": 2}, progress=False)
    assert len(index) == 2 and len(rejects) == 4
    assert _snapshot(root) == before
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == mtimes
