"""The embedded synthetic EchoNet-format dataset: phantom videos, tracings, labels, reports.

``generate_dataset`` writes a folder that every EchoNet reader opens (see
docs ``echonet-format.md``): ``FileList.csv``, ``VolumeTracings.csv``, ``Videos/*.avi`` and,
beyond EchoNet, ``Reports.csv`` (one echo-report-style text per video, for CLIP-style
pretraining). Labels are measured, not drawn: the LV cavity rendered in the ED and ES
frames is traced with the method of discs (``echo.discs``), and EDV, ESV and EF come
from those tracings, exactly as VolumeTracings.csv lets anyone recompute them.

Reproducibility: each video's randomness comes from ``(seed, site, split, index)`` alone,
so one seed gives the same bytes whatever the number of workers, and changing ``n_train``
leaves the VAL and TEST videos as they were.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import tempfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cardiac_pipeline.echo.discs import (
    DEFAULT_N_DISCS,
    DEFAULT_PIXEL_SPACING_CM,
    DiscTracing,
    ejection_fraction,
    trace_lv_cavity,
    volume_from_tracing,
)
from cardiac_pipeline.echo.phantom import PhantomParams, draw_phantom, render_phantom
from cardiac_pipeline.echo.sites import Site, get_site

SPLITS = ("TRAIN", "VAL", "TEST")
FILELIST_COLUMNS = [
    "FileName",
    "EF",
    "ESV",
    "EDV",
    "FrameHeight",
    "FrameWidth",
    "FPS",
    "NumberOfFrames",
    "Split",
]
TRACINGS_COLUMNS = ["FileName", "X1", "Y1", "X2", "Y2", "Frame"]
REPORTS_COLUMNS = ["FileName", "Report"]


@dataclass(frozen=True)
class SyntheticConfig:
    """Dataset-level settings that are not part of a site's acquisition style."""

    pixel_spacing_cm: float = DEFAULT_PIXEL_SPACING_CM  # turns pixel^3 into mL
    n_discs: int = DEFAULT_N_DISCS
    coordinate_decimals: int = 4  # tracing coordinates as written (labels use these)
    value_decimals: int = 6  # EF, ESV, EDV as written
    # search this far (s) around each beat's geometric ED / ES for the extreme traced frame
    frame_search_s: float = 0.04
    frames_traced: int = 3  # of those, trace the ones with the largest / smallest cavity area
    # LV size wording in reports: upper EDV limits (mL, at the true heart size) per class
    lv_size_limits_ml: tuple[float, float, float] = (120.0, 150.0, 190.0)
    sentence_keep_probability: float = 0.75  # each optional report sentence


@dataclass(frozen=True)
class SyntheticVideo:
    """One generated video with its measured labels (nothing written yet)."""

    name: str
    split: str
    frames: np.ndarray  # (F, H, W) uint8
    fps: int
    ed_frame: int
    es_frame: int
    ed_tracing: DiscTracing
    es_tracing: DiscTracing
    edv: float
    esv: float
    ef: float
    report: str
    params: PhantomParams = field(repr=False)


def _site_code(site: Site) -> int:
    return zlib.crc32(site.name.encode("utf-8"))


def _video_seeds(seed: int, site: Site, split: str, index: int) -> list[np.random.SeedSequence]:
    """Independent streams for the name and the content of one video."""
    entropy = [int(seed), _site_code(site), SPLITS.index(split), int(index)]
    return np.random.SeedSequence(entropy).spawn(2)


def video_name(rng: np.random.Generator) -> str:
    """An EchoNet-style name: ``0X`` and the hex digits of a random 64-bit number."""
    return f"0X{int(rng.integers(0, 2**63 - 1)) | (1 << 60):X}"


def coverage_targets(seed: int, site: Site, n_train: int) -> dict[int, float]:
    """Target EF of the TRAIN videos that cover the site's integer EF levels.

    Returns {train index: target EF}. With ``site.train_coverage_levels = (lo, hi)``, up to
    a quarter of TRAIN gets one video per level (spread evenly over the levels when TRAIN
    is small), on randomly chosen indices so the coverage videos are not told apart by
    their position.
    """
    if site.train_coverage_levels is None or n_train < 4:
        return {}
    low, high = site.train_coverage_levels
    levels = np.arange(int(low), int(high) + 1)
    count = min(len(levels), n_train // 4)
    chosen = levels[np.round(np.linspace(0, len(levels) - 1, count)).astype(int)]
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _site_code(site), 99]))
    indices = rng.permutation(n_train)[:count]
    offsets = rng.uniform(0.25, 0.75, count)
    return {int(i): float(lv + off) for i, lv, off in zip(indices, chosen, offsets, strict=True)}


def _window(times: np.ndarray, start: float, stop: float) -> np.ndarray:
    return np.flatnonzero((times >= start - 1e-9) & (times <= stop + 1e-9))


def _traced_volume(mask: np.ndarray, config: SyntheticConfig) -> tuple[DiscTracing, float]:
    tracing = trace_lv_cavity(mask, n_discs=config.n_discs).rounded(config.coordinate_decimals)
    volume = volume_from_tracing(tracing.long_axis, tracing.chords, config.pixel_spacing_cm)
    return tracing, volume


def measure_labels(
    lv_cavity: np.ndarray,
    landmarks: np.ndarray,
    fps: float,
    rng: np.random.Generator,
    config: SyntheticConfig,
) -> tuple[int, DiscTracing, float, int, DiscTracing, float]:
    """Pick one whole beat, trace the frames around its ED and ES, keep the extremes.

    ED is the traced frame of largest disc volume near the beat's start, ES the smallest
    near its end-systole, as a sonographer picks them. Returns (ED frame, ED tracing, EDV,
    ES frame, ES tracing, ESV).
    """
    n = lv_cavity.shape[0]
    times = np.arange(n) / fps
    pad = config.frame_search_s
    last = (n - 1) / fps
    beats = [
        k
        for k, (ed, es, es_end) in enumerate(landmarks)
        if ed - pad >= 0 and es_end + pad <= last and len(_window(times, ed - pad, ed + pad))
    ]
    if beats:
        ed_t, es_t, es_end = landmarks[beats[int(rng.integers(len(beats)))]]
        ed_frames = _window(times, ed_t - pad, ed_t + pad)
        es_frames = _window(times, es_t - pad, es_end + pad)
    else:  # too short for a whole beat: search the whole video
        ed_frames = es_frames = np.arange(n)
    # trace only the few frames of largest (ED) / smallest (ES) cavity area
    area = lv_cavity.reshape(n, -1).sum(axis=1)
    keep = config.frames_traced
    ed_frames = ed_frames[np.argsort(-area[ed_frames], kind="stable")[:keep]]
    es_frames = es_frames[np.argsort(area[es_frames], kind="stable")[:keep]]
    ed_best = max(
        ((f, *_traced_volume(lv_cavity[f], config)) for f in ed_frames), key=lambda r: r[2]
    )
    es_best = min(
        ((f, *_traced_volume(lv_cavity[f], config)) for f in es_frames), key=lambda r: r[2]
    )
    return int(ed_best[0]), ed_best[1], ed_best[2], int(es_best[0]), es_best[1], es_best[2]


def _systolic_function(ef: float) -> str:
    if ef >= 70:
        return "HYPERDYNAMIC"
    if ef >= 52:
        return "NORMAL"
    if ef >= 41:
        return "MILDLY REDUCED"
    if ef >= 30:
        return "MODERATELY REDUCED"
    return "SEVERELY REDUCED"


def echo_report(
    ef: float,
    edv: float,
    params: PhantomParams,
    rng: np.random.Generator,
    config: SyntheticConfig,
) -> str:
    """An echo-report-style text for one video, every statement derived from its geometry.

    The EF sentence (exact or a 5-point range) is always there; LV size (from EDV at the
    true heart size, i.e. undoing the imaging zoom), systolic function, wall thickness, LA
    size and RV function follow, each kept with ``config.sentence_keep_probability``.
    """
    if rng.random() < 0.5:
        ef_text = f"{round(ef)}%"
    else:
        low = 5 * math.floor(ef / 5)
        ef_text = f"{low}-{low + 5}%"
    lead = rng.choice(
        [
            "THE LEFT VENTRICULAR EJECTION FRACTION IS ESTIMATED TO BE",
            "LEFT VENTRICULAR EJECTION FRACTION IS",
            "THE ESTIMATED LEFT VENTRICULAR EJECTION FRACTION IS",
        ]
    )
    ef_sentence = f"{lead} {ef_text}."
    true_edv = edv / params.zoom**3
    limits = config.lv_size_limits_ml
    size_words = ["NORMAL", "MILDLY DILATED", "MODERATELY DILATED", "SEVERELY DILATED"]
    lv_size = size_words[int(np.searchsorted(limits, true_edv))]
    lv_sentence = (
        "THE LEFT VENTRICLE IS NORMAL IN SIZE."
        if lv_size == "NORMAL"
        else f"THE LEFT VENTRICLE IS {lv_size}."
    )
    function_sentence = f"LEFT VENTRICULAR SYSTOLIC FUNCTION IS {_systolic_function(ef)}."
    wall_cm = (
        params.wall_thickness * params.lv_sphericity * params.lv_length / 2.0 / params.zoom
    ) * config.pixel_spacing_cm
    wall_sentence = (
        "THERE IS MILD CONCENTRIC LEFT VENTRICULAR HYPERTROPHY."
        if wall_cm > 1.2
        else "LEFT VENTRICULAR WALL THICKNESS IS NORMAL."
    )
    if params.la_size > 1.22:
        la_sentence = "THE LEFT ATRIUM IS MODERATELY DILATED."
    elif params.la_size > 1.1:
        la_sentence = "THE LEFT ATRIUM IS MILDLY DILATED."
    else:
        la_sentence = "THE LEFT ATRIUM IS NORMAL IN SIZE."
    rv_sentence = (
        "RIGHT VENTRICULAR SYSTOLIC FUNCTION IS MILDLY REDUCED."
        if params.rv_area_change < 0.3
        else "RIGHT VENTRICULAR SYSTOLIC FUNCTION IS NORMAL."
    )
    keep = config.sentence_keep_probability
    sentences = [lv_sentence if rng.random() < keep else None, ef_sentence]
    for optional in (function_sentence, wall_sentence, la_sentence, rv_sentence):
        sentences.append(optional if rng.random() < keep else None)
    return " ".join(s for s in sentences if s)


def synthesize_video(
    seed: int,
    split: str,
    index: int,
    site: str | Site = "target",
    target_ef: float | None = None,
    config: SyntheticConfig | None = None,
) -> SyntheticVideo:
    """Draw, render and measure one video; deterministic in ``(seed, site, split, index)``."""
    site = get_site(site)
    config = config or SyntheticConfig()
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    name_seed, content_seed = _video_seeds(seed, site, split, index)
    name = video_name(np.random.default_rng(name_seed))
    rng = np.random.default_rng(content_seed)
    params = draw_phantom(rng, site, target_ef=target_ef)
    rendered = render_phantom(params)
    ed_frame, ed_tracing, edv, es_frame, es_tracing, esv = measure_labels(
        rendered.lv_cavity, rendered.landmarks, params.fps, rng, config
    )
    ef = float(ejection_fraction(edv, esv))
    report = echo_report(ef, edv, params, rng, config)
    return SyntheticVideo(
        name=name,
        split=split,
        frames=rendered.frames,
        fps=params.fps,
        ed_frame=ed_frame,
        es_frame=es_frame,
        ed_tracing=ed_tracing,
        es_tracing=es_tracing,
        edv=edv,
        esv=esv,
        ef=ef,
        report=report,
        params=params,
    )


@dataclass(frozen=True)
class _Task:
    seed: int
    split: str
    index: int
    site: Site
    target_ef: float | None
    videos_dir: str
    config: SyntheticConfig


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core already


def _make_video(task: _Task) -> dict[str, Any]:
    """Generate and write one video; return its FileList, tracing and report rows."""
    from cardiac_pipeline.echo.video import write_video

    video = synthesize_video(
        task.seed, task.split, task.index, task.site, task.target_ef, task.config
    )
    write_video(Path(task.videos_dir) / f"{video.name}.avi", video.frames, video.fps)
    decimals = task.config.value_decimals
    height, width = video.frames.shape[1:3]
    filelist_row = {
        "FileName": video.name,
        "EF": round(video.ef, decimals),
        "ESV": round(video.esv, decimals),
        "EDV": round(video.edv, decimals),
        "FrameHeight": int(height),
        "FrameWidth": int(width),
        "FPS": int(video.fps),
        "NumberOfFrames": int(video.frames.shape[0]),
        "Split": video.split,
    }
    tracing_rows = []
    # EchoNet's loader takes the first traced frame as ES and the last as ED: keep that order
    for frame, tracing in ((video.es_frame, video.es_tracing), (video.ed_frame, video.ed_tracing)):
        for x1, y1, x2, y2 in tracing.rows():
            tracing_rows.append((f"{video.name}.avi", x1, y1, x2, y2, frame))
    return {
        "filelist": filelist_row,
        "tracings": tracing_rows,
        "report": {"FileName": video.name, "Report": video.report},
    }


def _write_csv_atomic(table: pd.DataFrame, path: Path, **to_csv: Any) -> None:
    """Write beside the target and rename: a crash never leaves a half-written CSV."""
    fd, tmp = tempfile.mkstemp(suffix=".csv", prefix=f".{path.stem}.", dir=path.parent)
    os.close(fd)
    try:
        table.to_csv(tmp, index=False, **to_csv)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _run(tasks: list[_Task], workers: int, progress: bool) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(tasks), desc="synthetic echo videos", unit="video", disable=not progress)
    results = []
    try:
        if workers <= 1 or len(tasks) <= 1:
            _init_worker()
            for task in tasks:
                results.append(_make_video(task))
                bar.update()
        else:
            context = multiprocessing.get_context("spawn")
            with context.Pool(min(workers, len(tasks)), initializer=_init_worker) as pool:
                for result in pool.imap(_make_video, tasks, chunksize=1):
                    results.append(result)
                    bar.update()
    finally:
        bar.close()
    return results


def generate_dataset(
    root: str | os.PathLike,
    *,
    n_train: int,
    n_val: int,
    n_test: int,
    seed: int,
    site: str | Site = "target",
    workers: int = 2,
    progress: bool = True,
    site_overrides: Mapping[str, Any] | None = None,
    config: SyntheticConfig | None = None,
) -> pd.DataFrame:
    """Write a synthetic EchoNet-format dataset under ``root``; return its FileList.

    Videos go to ``root/Videos/<FileName>.avi`` as they are made; ``FileList.csv``,
    ``VolumeTracings.csv`` and ``Reports.csv`` are written last, each atomically, so an
    interrupted run leaves no CSV that lists videos it did not finish. ``site`` names an
    acquisition style (``"target"``, the EchoNet-like default, or ``"source"``), and
    ``site_overrides`` changes single fields of it (e.g. ``{"frames_range": (40, 60)}``).
    """
    counts = {"TRAIN": n_train, "VAL": n_val, "TEST": n_test}
    for split, count in counts.items():
        if int(count) < 0:
            raise ValueError(f"n_{split.lower()} must be >= 0, got {count}")
    resolved = get_site(site, site_overrides)
    config = config or SyntheticConfig()
    root = Path(root)
    videos_dir = root / "Videos"
    videos_dir.mkdir(parents=True, exist_ok=True)
    coverage = coverage_targets(seed, resolved, int(n_train))
    tasks = [
        _Task(
            seed=int(seed),
            split=split,
            index=i,
            site=resolved,
            target_ef=coverage.get(i) if split == "TRAIN" else None,
            videos_dir=str(videos_dir),
            config=config,
        )
        for split in SPLITS
        for i in range(int(counts[split]))
    ]
    results = _run(tasks, int(workers), progress)

    filelist = pd.DataFrame([r["filelist"] for r in results], columns=FILELIST_COLUMNS)
    duplicated = filelist["FileName"][filelist["FileName"].duplicated()]
    if not duplicated.empty:
        raise RuntimeError(f"{root}: generated duplicate video names {sorted(duplicated)[:3]}")
    filelist = filelist.sort_values("FileName").reset_index(drop=True)
    order = {name: i for i, name in enumerate(filelist["FileName"])}
    by_name = sorted(results, key=lambda r: order[r["filelist"]["FileName"]])
    tracings = pd.DataFrame(
        [row for r in by_name for row in r["tracings"]], columns=TRACINGS_COLUMNS
    )
    reports = pd.DataFrame([r["report"] for r in by_name], columns=REPORTS_COLUMNS)
    decimals = config.coordinate_decimals
    _write_csv_atomic(tracings, root / "VolumeTracings.csv", float_format=f"%.{decimals}f")
    _write_csv_atomic(reports, root / "Reports.csv")
    _write_csv_atomic(filelist, root / "FileList.csv")
    return filelist
