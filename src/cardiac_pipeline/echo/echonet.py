"""Validated ingestion of an EchoNet-format folder: FileList.csv, Videos/, VolumeTracings.csv.

Every row of FileList.csv either becomes one row of the video index or one row of the
rejects table with a reason (see docs/contracts.md), so a user sees exactly what was
dropped and why. Frame count, frame rate and size come from the video files, never from
the CSV. Nothing under the raw folder is ever written.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from cardiac_pipeline.echo.discs import tracing_volumes
from cardiac_pipeline.echo.video import (
    VideoReadError,
    VideoTruncatedError,
    check_video,
)
from cardiac_pipeline.errors import UserError

logger = logging.getLogger(__name__)

FILE_LIST = "FileList.csv"
VOLUME_TRACINGS = "VolumeTracings.csv"
VIDEOS_DIR = "Videos"
SPLITS = ("TRAIN", "VAL", "TEST")
UNSPECIFIED = "UNSPECIFIED"
SUFFIXES = (".avi", ".mp4")

INDEX_COLUMNS = [
    "FileName",
    "path",
    "EF",
    "ESV",
    "EDV",
    "Split",
    "NumberOfFrames",
    "FPS",
    "FrameHeight",
    "FrameWidth",
    "non_standard_size",
    "ED_frame",
    "ES_frame",
]
REJECT_COLUMNS = ["FileName", "path", "reason", "detail"]
# Order = order of the checks; also the order ties are listed in the summary.
REJECT_REASONS = (
    "duplicate",
    "missing_ef",
    "ef_out_of_range",
    "ef_inconsistent",
    "missing_file",
    "undecodable",
    "truncated",
    "too_few_frames",
)
_REASON_LABELS = {
    "duplicate": "duplicate",
    "missing_ef": "missing EF",
    "ef_out_of_range": "EF out of range",
    "ef_inconsistent": "EF inconsistent with ESV/EDV",
    "missing_file": "missing file",
    "undecodable": "undecodable",
    "truncated": "truncated",
    "too_few_frames": "too few frames",
}


class EchoNetFormatError(UserError):
    """A folder or CSV that does not follow the EchoNet format; the message names the file."""


# --------------------------------------------------------------------------- CSV readers


def _read_csv_text(path: Path) -> pd.DataFrame:
    """Every cell as stripped text (no NaN guessing), column names stripped; BOM or not."""
    try:
        frame = pd.read_csv(
            path,
            encoding="utf-8-sig",
            dtype=str,
            keep_default_na=False,
            skipinitialspace=True,
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise EchoNetFormatError(f"{path}: not a readable CSV ({exc})") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame.apply(lambda col: col.str.strip())


def _canonical_columns(frame: pd.DataFrame, wanted: Iterable[str]) -> pd.DataFrame:
    """Rename columns matching ``wanted`` case-insensitively (``filename`` -> ``FileName``)."""
    by_lower = {name.lower(): name for name in wanted}
    return frame.rename(
        columns={c: by_lower[c.lower()] for c in frame.columns if c.lower() in by_lower}
    )


def _require_columns(frame: pd.DataFrame, path: Path, required: Iterable[str]) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise EchoNetFormatError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(frame.columns) or 'none'}"
        )


def _split_suffix(name: str) -> tuple[str, str]:
    """``'X.avi'`` -> ``('X', '.avi')``; names without a video suffix are kept whole."""
    for suffix in SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], name[-len(suffix) :]
    return name, ""


def _numeric(
    frame: pd.DataFrame, column: str, path: Path, strict: bool
) -> tuple[pd.Series, pd.Series]:
    """Parse a text column as float; empty cells become NaN.

    Returns the values and a mask of non-empty cells that are not numbers. With ``strict``
    the first such cell raises, naming file, column, CSV line and value.
    """
    text = frame[column]
    values = pd.to_numeric(text, errors="coerce").astype(float)
    bad = values.isna() & (text != "") & (text.str.lower() != "nan")
    if strict and bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise EchoNetFormatError(
            f"{path}: column {column} line {row + 2}: {text.iloc[row]!r} is not a number"
        )
    return values, bad


def _parse_file_list(path: Path, strict_ef: bool) -> pd.DataFrame:
    frame = _read_csv_text(path)
    frame = _canonical_columns(frame, ("FileName", "EF", "ESV", "EDV", "Split"))
    _require_columns(frame, path, ("FileName", "EF"))
    if frame.empty:
        raise EchoNetFormatError(f"{path}: no rows")
    empty_name = frame["FileName"] == ""
    if empty_name.any():
        line = int(np.flatnonzero(empty_name.to_numpy())[0]) + 2
        raise EchoNetFormatError(f"{path}: column FileName line {line}: empty file name")

    names = frame["FileName"].map(_split_suffix)
    out = pd.DataFrame(
        {
            "FileName": [n for n, _ in names],
            "suffix": [s for _, s in names],
        }
    )
    out["EF"], bad_ef = _numeric(frame, "EF", path, strict_ef)
    out["EF_text"] = frame["EF"]
    out["EF_unparsable"] = bad_ef.to_numpy()
    for column in ("ESV", "EDV"):
        if column in frame.columns:
            out[column], bad = _numeric(frame, column, path, strict_ef)
            if bad.any():
                logger.warning(
                    "%s: %d non-numeric %s value(s) treated as missing",
                    path,
                    int(bad.sum()),
                    column,
                )
        else:
            out[column] = np.nan
    if "Split" in frame.columns:
        split = frame["Split"].str.upper().replace("", UNSPECIFIED)
        unknown = ~split.isin((*SPLITS, UNSPECIFIED))
        if unknown.any():
            row = int(np.flatnonzero(unknown.to_numpy())[0])
            raise EchoNetFormatError(
                f"{path}: column Split line {row + 2}: {frame['Split'].iloc[row]!r} is not one of "
                f"{', '.join(SPLITS)} (or empty)"
            )
        out["Split"] = split.to_numpy()
    else:
        out["Split"] = UNSPECIFIED
    out["csv_line"] = np.arange(2, len(out) + 2)
    return out


def read_file_list(path: str | os.PathLike, *, strict_ef: bool = True) -> pd.DataFrame:
    """Read an EchoNet ``FileList.csv`` or a user's own CSV of at least FileName and EF.

    Returns one row per CSV row with columns ``FileName`` (video suffix removed),
    ``suffix`` (``'.avi'``, ``'.mp4'`` as written, or ``''``), ``EF``, ``ESV``, ``EDV``
    (float, NaN when empty or absent), ``Split`` (upper-case; ``UNSPECIFIED`` when the
    column is absent or the cell empty), ``EF_text`` (the EF cell as written),
    ``EF_unparsable`` (bool) and ``csv_line`` (1-based line in the file). Header names
    match case-insensitively; a UTF-8 byte-order mark is ignored. Other columns (the CSV's
    own frame counts and sizes) are dropped: they are read from the videos instead.

    Raises ``EchoNetFormatError`` (a ``ValueError``) naming the file and column/line when
    FileName or EF is missing, a file name is empty, a Split is unknown, or - with
    ``strict_ef`` - an EF/ESV/EDV cell is not a number. ``strict_ef=False`` turns such
    cells into NaN so that ingestion rejects the row instead of the whole file.
    """
    path = Path(path)
    if not path.is_file():
        raise EchoNetFormatError(f"{path}: file list not found")
    return _parse_file_list(path, strict_ef)


def read_volume_tracings(path: str | os.PathLike) -> pd.DataFrame | None:
    """Read ``VolumeTracings.csv``: ``FileName`` (suffix removed), X1, Y1, X2, Y2, Frame.

    Row order is kept: within one (FileName, Frame) the first row is the long axis and
    the rest are the disc chords. Returns None when the file does not exist (tracings are
    optional). Raises ``EchoNetFormatError`` naming file, column and line on bad content.
    """
    path = Path(path)
    if not path.is_file():
        return None
    frame = _read_csv_text(path)
    columns = ("FileName", "X1", "Y1", "X2", "Y2", "Frame")
    frame = _canonical_columns(frame, columns)
    _require_columns(frame, path, columns)
    out = pd.DataFrame({"FileName": frame["FileName"].map(lambda n: _split_suffix(n)[0])})
    for column in ("X1", "Y1", "X2", "Y2", "Frame"):
        values, bad = _numeric(frame, column, path, strict=True)
        empty = values.isna() & ~bad
        if empty.any():
            line = int(np.flatnonzero(empty.to_numpy())[0]) + 2
            raise EchoNetFormatError(f"{path}: column {column} line {line}: empty value")
        out[column] = values
    if (out["Frame"] % 1 != 0).any() or (out["Frame"] < 0).any():
        line = int(np.flatnonzero(((out["Frame"] % 1 != 0) | (out["Frame"] < 0)).to_numpy())[0]) + 2
        raise EchoNetFormatError(f"{path}: column Frame line {line}: not a frame number")
    out["Frame"] = out["Frame"].astype(np.int64)
    return out


def end_diastole_end_systole_frames(tracings: pd.DataFrame | None) -> pd.DataFrame:
    """ED and ES frame of each traced video: the largest and the smallest traced volume.

    Videos with fewer than two traced frames with chords, or whose volumes tie, get no row
    (ED/ES unknown). Columns: FileName, ED_frame, ES_frame (Int64).
    """
    empty = pd.DataFrame(
        {
            "FileName": pd.Series(dtype=str),
            "ED_frame": pd.Series(dtype="Int64"),
            "ES_frame": pd.Series(dtype="Int64"),
        }
    )
    if tracings is None or tracings.empty:
        return empty
    volumes = tracing_volumes(tracings).dropna(subset=["volume"])
    rows = []
    for name, group in volumes.groupby("FileName", sort=True):
        if len(group) < 2:
            continue
        largest = group.loc[group["volume"].idxmax()]
        smallest = group.loc[group["volume"].idxmin()]
        if largest["volume"] == smallest["volume"]:
            continue
        rows.append((name, int(largest["Frame"]), int(smallest["Frame"])))
    if not rows:
        return empty
    out = pd.DataFrame(rows, columns=["FileName", "ED_frame", "ES_frame"])
    return out.astype({"ED_frame": "Int64", "ES_frame": "Int64"})


# --------------------------------------------------------------------------- ingestion


def _find_video(videos: Path, present: set[str], name: str, suffix: str) -> tuple[Path, bool]:
    """Path of the video for ``name``: listed suffix first, then .avi, then .mp4."""
    candidates = [name + suffix] if suffix else []
    candidates += [name + s for s in SUFFIXES] + [name + s.upper() for s in SUFFIXES]
    for candidate in candidates:
        if candidate in present:
            return videos / candidate, True
    return videos / candidates[0], False


def _probe(args: tuple[str, int]) -> tuple[str, object]:
    """Worker: ('ok', VideoInfo) | ('truncated', msg) | ('undecodable', msg)."""
    path, tolerance = args
    try:
        return "ok", check_video(path, frame_count_tolerance=tolerance).info
    except VideoTruncatedError as exc:
        return "truncated", str(exc)
    except VideoReadError as exc:
        return "undecodable", str(exc)
    except OSError as exc:
        return "undecodable", f"{path}: {exc}"


def _run_probes(
    paths: list[str], tolerance: int, workers: int, progress: bool
) -> list[tuple[str, object]]:
    from tqdm.auto import tqdm

    jobs = [(p, tolerance) for p in paths]
    bar = tqdm(total=len(jobs), desc="Probing videos", unit="video", disable=not progress)
    results: list[tuple[str, object]] = []
    try:
        if workers <= 1:
            for job in jobs:
                results.append(_probe(job))
                bar.update()
        else:
            # decord is called through ctypes, which releases the GIL: threads scale.
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for result in pool.map(_probe, jobs):
                    results.append(result)
                    bar.update()
    finally:
        bar.close()
    return results


def build_video_index(
    root: str | os.PathLike,
    videos_dir: str = VIDEOS_DIR,
    *,
    file_list: str = FILE_LIST,
    volume_tracings: str = VOLUME_TRACINGS,
    min_frames: int,
    ef_range: tuple[float, float],
    ef_tolerance: float,
    standard_size: tuple[int, int] = (112, 112),
    frame_count_tolerance: int,
    workers: int,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate an EchoNet-format folder: ``(video_index, video_rejects)`` per docs/contracts.md.

    Each FileList row is checked in this order and rejected with the first failing reason:
    ``duplicate`` (FileName seen on an earlier row, suffix ignored; the first is kept),
    ``missing_ef`` (empty or not a number), ``ef_out_of_range`` (outside ``ef_range``,
    inclusive), ``ef_inconsistent`` (ESV and EDV given and ``|EF - (EDV-ESV)/EDV*100|`` over
    ``ef_tolerance`` points, or EDV <= 0), ``missing_file`` (listed suffix, else .avi, else
    .mp4 in ``videos_dir``), ``undecodable`` (does not open, or the first frame does not
    decode), ``truncated``, ``too_few_frames`` (under ``min_frames``).

    Videos are probed, not decoded in full (10k full decodes take long): container sizes,
    header, first and last frame (``video.check_video``). ``truncated`` means the file is
    smaller than its own AVI RIFF / MP4 box sizes say (catches any cut, a few reads), or
    decord finds fewer frames than the AVI header declares, or the last frame fails to
    decode. Reliable for cut copies, the common fault; a corrupt frame in the middle of a
    whole-size file is not caught here (``read_video`` raises on it later).

    Videos not ``standard_size`` (height, width) are kept with ``non_standard_size`` True.
    ED/ES frames come from VolumeTracings.csv when present (larger disc volume = ED); a
    traced frame beyond the video's end is dropped with a warning. ``workers`` > 1 probes
    in threads. Raises ``EchoNetFormatError`` (a ``ValueError``) when the folder, the file
    list or the videos folder is missing, or when no video is usable (with reject counts).
    The raw folder is only read.
    """
    root = Path(root)
    list_path, videos = _folder_parts(root, videos_dir, file_list)
    rows = _listed_videos(list_path, videos, file_list)
    verdicts = _Verdicts(rows)
    _check_labels(verdicts, ef_range, ef_tolerance)
    verdicts.reject(
        ~rows["exists"],
        "missing_file",
        lambda r: f"no {r.FileName}{r.suffix or '.avi'} (nor .avi/.mp4) in {videos}",
    )
    infos = _probe_videos(verdicts, min_frames, frame_count_tolerance, workers, progress)
    index = _index_table(rows, infos, verdicts, standard_size)
    index = _with_traced_frames(index, root, volume_tracings)
    rejects = verdicts.rejects()
    if index.empty:
        raise EchoNetFormatError(
            f"{root}: no usable video in {file_list} ({summarise_ingestion(index, rejects)})"
        )
    return index, rejects


def _folder_parts(root: Path, videos_dir: str, file_list: str) -> tuple[Path, Path]:
    """The file list and the videos folder of an EchoNet-format folder, both checked."""
    if not root.is_dir():
        raise EchoNetFormatError(f"{root}: EchoNet folder not found")
    list_path = root / file_list
    if not list_path.is_file():
        raise EchoNetFormatError(f"{root}: no {file_list}; not an EchoNet-format folder")
    videos = root / videos_dir
    if not videos.is_dir():
        raise EchoNetFormatError(f"{root}: no {videos_dir}/ folder of videos")
    return list_path, videos


def _listed_videos(list_path: Path, videos: Path, file_list: str) -> pd.DataFrame:
    """The file list's rows with each video's ``path`` and whether it ``exists``."""
    rows = _parse_file_list(list_path, strict_ef=False)
    present = {entry.name for entry in os.scandir(videos) if entry.is_file()}
    found = [
        _find_video(videos, present, n, s)
        for n, s in zip(rows["FileName"], rows["suffix"], strict=True)
    ]
    rows["path"] = [str(p) for p, _ in found]
    rows["exists"] = [ok for _, ok in found]
    listed = {Path(p).name for p, ok in found if ok}
    unlisted = len(present - listed)
    if unlisted:
        logger.info("%s: %d file(s) not listed in %s are ignored", videos, unlisted, file_list)
    return rows


class _Verdicts:
    """Each file-list row's first failing check (``reason``, ``detail``); NA while usable."""

    def __init__(self, rows: pd.DataFrame) -> None:
        self.rows = rows
        self.reason = pd.Series(pd.NA, index=rows.index, dtype="object")
        self.detail = pd.Series("", index=rows.index, dtype="object")

    def reject(self, mask: pd.Series, why: str, explain: Callable[[pd.Series], str]) -> None:
        """Reject the rows of ``mask`` not rejected yet, each explained by ``explain(row)``."""
        mask = mask & self.reason.isna()
        for i in self.rows.index[mask]:
            self.set(i, why, explain(self.rows.loc[i]))

    def set(self, i: int, why: str, detail: str) -> None:
        self.reason[i] = why
        self.detail[i] = detail

    def usable(self) -> pd.Index:
        return self.rows.index[self.reason.isna()]

    def rejects(self) -> pd.DataFrame:
        """The rejected rows (contract "Rejects"), sorted by FileName."""
        rejected = self.reason.notna()
        rejects = pd.DataFrame(
            {
                "FileName": self.rows.loc[rejected, "FileName"],
                "path": self.rows.loc[rejected, "path"],
                "reason": self.reason[rejected].astype(str),
                "detail": self.detail[rejected].astype(str),
            },
            columns=REJECT_COLUMNS,
        )
        return rejects.sort_values("FileName", kind="stable").reset_index(drop=True)


def _check_labels(verdicts: _Verdicts, ef_range: tuple[float, float], ef_tolerance: float) -> None:
    """The file list's own checks, in order: duplicate, missing EF, EF range, ESV/EDV."""
    rows = verdicts.rows
    first_line = rows.groupby("FileName")["csv_line"].transform("min")
    verdicts.reject(
        rows["FileName"].duplicated(keep="first"),
        "duplicate",
        lambda r: f"line {r.csv_line} repeats FileName of line {first_line[r.name]}",
    )
    verdicts.reject(
        rows["EF"].isna(),
        "missing_ef",
        lambda r: (
            f"line {r.csv_line}: EF {r.EF_text!r} is not a number"
            if r.EF_unparsable
            else f"line {r.csv_line}: EF is empty"
        ),
    )
    low, high = ef_range
    verdicts.reject(
        (rows["EF"] < low) | (rows["EF"] > high),
        "ef_out_of_range",
        lambda r: f"line {r.csv_line}: EF {r.EF:g} outside [{low:g}, {high:g}]",
    )
    _check_volumes(verdicts, ef_tolerance)


def _check_volumes(verdicts: _Verdicts, ef_tolerance: float) -> None:
    """``ef_inconsistent``: EDV <= 0, or EF off the EF that ESV and EDV imply."""
    rows = verdicts.rows
    both = rows["ESV"].notna() & rows["EDV"].notna()
    with np.errstate(divide="ignore", invalid="ignore"):
        implied = (rows["EDV"] - rows["ESV"]) / rows["EDV"] * 100
    verdicts.reject(
        both & (rows["EDV"] <= 0),
        "ef_inconsistent",
        lambda r: f"line {r.csv_line}: EDV {r.EDV:g} mL cannot give an EF",
    )
    verdicts.reject(
        both & ((rows["EF"] - implied).abs() > ef_tolerance),
        "ef_inconsistent",
        lambda r: (
            f"line {r.csv_line}: EF {r.EF:g} but (EDV-ESV)/EDV*100 = "
            f"{implied[r.name]:.2f} (ESV {r.ESV:g}, EDV {r.EDV:g}; tolerance {ef_tolerance:g})"
        ),
    )


def _probe_videos(
    verdicts: _Verdicts, min_frames: int, frame_count_tolerance: int, workers: int, progress: bool
) -> dict[int, object]:
    """Each row still usable probed (``video.check_video``): its info where it decodes."""
    to_probe = verdicts.usable()
    paths = [verdicts.rows.at[i, "path"] for i in to_probe]
    results = _run_probes(paths, frame_count_tolerance, workers, progress)
    infos: dict[int, object] = {}
    for i, (status, payload) in zip(to_probe, results, strict=True):
        if status == "ok":
            infos[i] = payload
        else:
            verdicts.set(i, status, str(payload))
    for i, info in infos.items():
        if info.num_frames < min_frames:
            verdicts.set(
                i, "too_few_frames", f"{info.num_frames} frames, fewer than min_frames={min_frames}"
            )
    return infos


def _index_table(
    rows: pd.DataFrame,
    infos: dict[int, object],
    verdicts: _Verdicts,
    standard_size: tuple[int, int],
) -> pd.DataFrame:
    """The usable rows with what the probe read from each file."""
    usable = [i for i in infos if pd.isna(verdicts.reason[i])]
    index = rows.loc[usable, ["FileName", "path", "EF", "ESV", "EDV", "Split"]].copy()
    index["NumberOfFrames"] = [infos[i].num_frames for i in usable]
    index["FPS"] = [infos[i].fps for i in usable]
    index["FrameHeight"] = [infos[i].height for i in usable]
    index["FrameWidth"] = [infos[i].width for i in usable]
    index = index.astype(
        {"NumberOfFrames": "int64", "FPS": "float64", "FrameHeight": "int64", "FrameWidth": "int64"}
    )
    index["non_standard_size"] = (index["FrameHeight"] != standard_size[0]) | (
        index["FrameWidth"] != standard_size[1]
    )
    return index


def _with_traced_frames(index: pd.DataFrame, root: Path, volume_tracings: str) -> pd.DataFrame:
    """``index`` with ED/ES frames from VolumeTracings; frames beyond a video's end dropped."""
    frames = end_diastole_end_systole_frames(read_volume_tracings(root / volume_tracings))
    index = index.merge(frames, on="FileName", how="left")
    index[["ED_frame", "ES_frame"]] = index[["ED_frame", "ES_frame"]].astype("Int64")
    beyond = (index["ED_frame"] >= index["NumberOfFrames"]) | (
        index["ES_frame"] >= index["NumberOfFrames"]
    )
    beyond = beyond.fillna(False).astype(bool)
    if beyond.any():
        logger.warning(
            "%s: %d video(s) have traced frames beyond their last frame; their ED/ES frames "
            "are dropped (e.g. %s)",
            volume_tracings,
            int(beyond.sum()),
            ", ".join(index.loc[beyond, "FileName"].head(3)),
        )
        index.loc[beyond, ["ED_frame", "ES_frame"]] = pd.NA
    return index.sort_values("FileName", kind="stable").reset_index(drop=True)[INDEX_COLUMNS]


def summarise_ingestion(index: pd.DataFrame, rejects: pd.DataFrame) -> str:
    """One line for the log: ``'9,980 usable, 50 rejected: 34 missing file, 16 truncated'``.

    Reasons are listed most frequent first; non-112x112 videos (accepted) are counted last.
    """
    text = f"{len(index):,} usable, {len(rejects):,} rejected"
    if len(rejects):
        counts = rejects["reason"].value_counts()
        order = {r: k for k, r in enumerate(REJECT_REASONS)}
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], order.get(kv[0], len(order))))
        text += ": " + ", ".join(f"{n:,} {_REASON_LABELS.get(r, r)}" for r, n in ranked)
    if "non_standard_size" in index.columns and index["non_standard_size"].any():
        text += f"; {int(index['non_standard_size'].sum()):,} not standard size (accepted)"
    return text
