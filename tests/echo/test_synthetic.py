"""The synthetic EchoNet-format generator: format, labels measured from pixels, reproducibility."""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from cardiac_pipeline.echo import synthetic
from cardiac_pipeline.echo.discs import ejection_fraction_from_tracings
from cardiac_pipeline.echo.echonet import read_volume_tracings
from cardiac_pipeline.echo.phantom import cardiac_cycle, draw_phantom, render_phantom
from cardiac_pipeline.echo.sites import SITES, get_site
from cardiac_pipeline.echo.synthetic import (
    FILELIST_COLUMNS,
    coverage_targets,
    generate_dataset,
    synthesize_video,
)

# short, fast videos: ~1.6 beats at ~100 bpm
SHORT = {
    "frames_range": (30, 70),
    "frames_extra_mean": 6.0,
    "min_beats": 1.6,
    "heart_rate_bpm": (100.0, 5.0),
    "heart_rate_range": (90.0, 110.0),
}
COUNTS = {"n_train": 4, "n_val": 1, "n_test": 1}


def _digest(root: Path) -> dict[str, str]:
    files = [root / "FileList.csv", root / "VolumeTracings.csv", root / "Reports.csv"]
    files += sorted((root / "Videos").glob("*.avi"))
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The same seed generated twice: in-process and with two spawned workers."""
    first = tmp_path_factory.mktemp("run_a")
    second = tmp_path_factory.mktemp("run_b")
    filelist = generate_dataset(
        first, **COUNTS, seed=7, workers=1, progress=False, site_overrides=SHORT
    )
    generate_dataset(second, **COUNTS, seed=7, workers=2, progress=False, site_overrides=SHORT)
    return first, second, filelist


def test_same_seed_same_bytes_whatever_the_worker_count(two_runs):
    first, second, _ = two_runs
    a, b = _digest(first), _digest(second)
    assert len(a) == 3 + 6
    assert a == b


def test_different_seed_gives_different_videos():
    a = synthesize_video(1, "TRAIN", 0, get_site("target", SHORT))
    b = synthesize_video(2, "TRAIN", 0, get_site("target", SHORT))
    again = synthesize_video(1, "TRAIN", 0, get_site("target", SHORT))
    assert a.name != b.name
    assert a.frames.shape != b.frames.shape or not np.array_equal(a.frames, b.frames)
    assert a.name == again.name and np.array_equal(a.frames, again.frames)


def test_filelist_format_and_splits(two_runs):
    root, _, returned = two_runs
    raw = (root / "FileList.csv").read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf")  # EchoNet's loader opens it without utf-8-sig
    filelist = pd.read_csv(root / "FileList.csv")
    assert list(filelist.columns) == FILELIST_COLUMNS
    pd.testing.assert_frame_equal(filelist, returned, check_dtype=False)
    assert filelist["Split"].value_counts().to_dict() == {"TRAIN": 4, "VAL": 1, "TEST": 1}
    assert all(re.fullmatch(r"0X[0-9A-F]{16}", name) for name in filelist["FileName"])
    assert filelist["FileName"].is_unique
    assert ((filelist["EF"] > 0) & (filelist["EF"] < 100)).all()
    recomputed = (filelist["EDV"] - filelist["ESV"]) / filelist["EDV"] * 100
    assert np.allclose(recomputed, filelist["EF"], atol=1e-4)
    assert (filelist[["FrameHeight", "FrameWidth"]] == 112).all().all()


def test_ef_recomputed_from_tracings_matches_filelist(two_runs):
    root, _, _ = two_runs
    filelist = pd.read_csv(root / "FileList.csv")
    tracings = read_volume_tracings(root / "VolumeTracings.csv")
    assert not tracings["FileName"].str.endswith(".avi").any()  # read like FileList names
    per_frame = tracings.groupby(["FileName", "Frame"], sort=False).size()
    assert (per_frame == 21).all()  # long axis + 20 chords
    assert (tracings.groupby("FileName")["Frame"].nunique() == 2).all()
    recomputed = ejection_fraction_from_tracings(tracings)
    merged = filelist.merge(recomputed, on="FileName", suffixes=("", "_traced"))
    assert len(merged) == len(filelist)
    assert np.abs(merged["EF"] - merged["EF_traced"]).max() < 0.5
    assert np.allclose(merged["EDV"], merged["EDV_traced"], rtol=1e-4)
    assert np.allclose(merged["ESV"], merged["ESV_traced"], rtol=1e-4)
    assert (merged["ED_frame"] < merged["NumberOfFrames"]).all()
    assert (merged["ES_frame"] < merged["NumberOfFrames"]).all()


def test_tracings_parse_like_the_echonet_loader(two_runs):
    """EchoNet's loader splits lines on commas and takes the last listed frame as ED."""
    root, _, _ = two_runs
    frames: dict[str, list[int]] = {}
    lines = (root / "VolumeTracings.csv").read_text().splitlines()
    assert lines[0].split(",") == ["FileName", "X1", "Y1", "X2", "Y2", "Frame"]
    for line in lines[1:]:
        name, *coords, frame = line.strip().split(",")
        [float(c) for c in coords]
        if int(frame) not in frames.setdefault(name, []):
            frames[name].append(int(frame))
    recomputed = ejection_fraction_from_tracings(read_volume_tracings(root / "VolumeTracings.csv"))
    for row in recomputed.itertuples():
        listed = frames[f"{row.FileName}.avi"]
        assert listed == [row.ES_frame, row.ED_frame]


def test_every_video_opens_with_decord_and_matches_filelist(two_runs):
    import decord

    root, _, _ = two_runs
    filelist = pd.read_csv(root / "FileList.csv")
    for row in filelist.itertuples():
        reader = decord.VideoReader(str(root / "Videos" / f"{row.FileName}.avi"))
        assert len(reader) == row.NumberOfFrames
        assert reader.get_avg_fps() == pytest.approx(row.FPS, abs=0.01)
        frame = reader[0].asnumpy()
        assert frame.shape == (112, 112, 3)
        cap = cv2.VideoCapture(str(root / "Videos" / f"{row.FileName}.avi"))  # EchoNet's reader
        assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == row.NumberOfFrames
        cap.release()


def test_reports_state_the_filelist_ef(two_runs):
    root, _, _ = two_runs
    filelist = pd.read_csv(root / "FileList.csv").set_index("FileName")
    reports = pd.read_csv(root / "Reports.csv").set_index("FileName")
    assert set(reports.index) == set(filelist.index)
    for name, report in reports["Report"].items():
        ef = filelist.loc[name, "EF"]
        match = re.search(r"EJECTION FRACTION IS (?:ESTIMATED TO BE )?(\d+)(?:-(\d+))?%", report)
        assert match, report
        low, high = int(match.group(1)), match.group(2)
        if high is None:
            assert abs(low - ef) <= 0.5
        else:
            assert low <= ef < int(high)


def test_tracing_outlines_the_rendered_lv_cavity():
    """The label comes from the pixels: the traced polygon covers the rendered LV blood pool."""
    video = synthesize_video(3, "VAL", 0, get_site("target", SHORT))
    rendered = render_phantom(video.params)
    assert np.array_equal(rendered.frames, video.frames)
    for frame, tracing in ((video.ed_frame, video.ed_tracing), (video.es_frame, video.es_tracing)):
        rows = tracing.rows()
        polygon = np.concatenate([rows[1:, :2], rows[1:, 2:][::-1]])
        drawn = np.zeros((112, 112), np.uint8)
        cv2.fillPoly(drawn, [np.rint(polygon).astype(np.int32)], 1)
        cavity = rendered.lv_cavity[frame] >= 0.5
        iou = (cavity & (drawn > 0)).sum() / (cavity | (drawn > 0)).sum()
        assert iou > 0.85
        # the blood pool is dark in the video where the mask says LV
        inside = video.frames[frame][cavity].mean()
        assert inside < 0.6 * video.frames[frame][video.frames[frame] > 0].mean()
    assert video.edv > video.esv


def test_remodelling_links_still_heart_to_ef_only_when_switched_on():
    """A failing LV is larger, rounder, thinner-walled; with remodelling 0 only motion carries EF."""
    from dataclasses import replace

    site = SITES["target"]
    low = draw_phantom(np.random.default_rng(11), site, target_ef=20.0)
    high = draw_phantom(np.random.default_rng(11), site, target_ef=70.0)
    assert low.lv_length > high.lv_length
    assert low.lv_sphericity > high.lv_sphericity
    assert low.wall_thickness < high.wall_thickness
    assert low.la_size > high.la_size
    assert np.array_equal(low.beat_edv, high.beat_edv)  # same draws otherwise

    off = replace(site, remodelling=0.0)
    low = draw_phantom(np.random.default_rng(11), off, target_ef=20.0)
    high = draw_phantom(np.random.default_rng(11), off, target_ef=70.0)
    assert low.lv_length == high.lv_length
    assert low.lv_sphericity == high.lv_sphericity
    assert low.wall_thickness == high.wall_thickness
    times = np.arange(low.n_frames) / low.fps
    assert not np.allclose(
        cardiac_cycle(low, times)["volume"], cardiac_cycle(high, times)["volume"]
    )


def test_cycle_runs_at_the_heart_rate_in_real_time():
    site = get_site("target", {"fps_common_share": 0.0, "fps_range": (30, 90)})
    for seed in range(4):
        params = draw_phantom(np.random.default_rng(seed), site, target_ef=55.0)
        marks = cardiac_cycle(params, np.array([0.0]))["landmarks"]
        period = np.diff(marks[:, 0]).mean()
        assert period == pytest.approx(60.0 / params.heart_rate_bpm, rel=0.05)
        times = marks[:, 0]  # each ED is its beat's largest volume, each ES its smallest
        cycle = cardiac_cycle(params, np.concatenate([times, marks[:, 1]]))
        ed, es = np.split(cycle["volume"], 2)
        assert np.allclose(ed, params.beat_edv[: len(ed)])
        assert np.allclose(es, params.beat_edv[: len(es)] * (1 - params.beat_ef[: len(es)] / 100))
        duration = params.n_frames / params.fps
        assert duration >= site.min_beats * 60.0 / params.heart_rate_bpm * 0.85


def test_coverage_gives_train_every_integer_level():
    targets = coverage_targets(5, SITES["target"], 700)
    levels = sorted(math.floor(ef) for ef in targets.values())
    assert levels == list(range(10, 91))
    assert all(0 <= i < 700 for i in targets)
    assert coverage_targets(5, SITES["source"], 700) == {}  # source: natural distribution only


def test_crash_leaves_no_csv(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = synthetic._make_video

    def flaky(task):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        return real(task)

    monkeypatch.setattr(synthetic, "_make_video", flaky)
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate_dataset(
            tmp_path,
            n_train=3,
            n_val=0,
            n_test=0,
            seed=1,
            workers=1,
            progress=False,
            site_overrides=SHORT,
        )
    assert not list(tmp_path.glob("*.csv"))
    assert not list(tmp_path.glob(".*"))


def test_unknown_site_or_field_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown site"):
        generate_dataset(tmp_path, n_train=1, n_val=0, n_test=0, seed=1, site="nowhere")
    with pytest.raises(ValueError, match="unknown field"):
        get_site("target", {"not_a_field": 1})


def test_clip_store_output_holds_the_videos_the_avi_route_would(tmp_path):
    from cardiac_pipeline.echo.clipstore import ClipStore

    counts = {"n_train": 3, "n_val": 0, "n_test": 0}
    filelist = generate_dataset(
        tmp_path,
        **counts,
        seed=7,
        workers=1,
        progress=False,
        site_overrides=SHORT,
        output="clip_store",
    )
    assert not (tmp_path / "Videos").exists()
    store = ClipStore(tmp_path)
    assert sorted(store.file_names()) == sorted(filelist["FileName"])
    quality = synthetic.LabelConventions().clip_jpeg_quality
    for row in filelist.to_dict("records"):
        frames = store.load(row["FileName"])
        assert frames.shape == (row["NumberOfFrames"], 1, 112, 112)
        assert store.entry(row["FileName"])["fps"] == row["FPS"]
    video = synthetic.synthesize_video(7, "TRAIN", 0, get_site("target", SHORT))
    stored = store.load(video.name)[:, 0]
    assert np.array_equal(stored, synthetic.jpeg_round_trip(video.frames, quality))
    error = np.abs(stored.astype(float) - video.frames)
    assert 0 < error.mean() < 3  # compression noise like an MJPG AVI's, nothing more


def test_unknown_output_is_refused(tmp_path):
    with pytest.raises(ValueError, match="output 'mp4'"):
        generate_dataset(tmp_path, n_train=1, n_val=0, n_test=0, seed=1, output="mp4")


def _faults_of_fresh_arrays(keep: bool) -> int:
    import subprocess
    import sys

    code = (
        "import resource, numpy as np\n"
        "from cardiac_pipeline.echo.synthetic import keep_freed_memory\n"
        f"kept = keep_freed_memory() if {keep} else True\n"
        "start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(20):\n"
        "    np.ones(4_000_000)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start if kept else -1)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def test_generator_workers_reuse_freed_memory_instead_of_faulting_it_in_again():
    kept = _faults_of_fresh_arrays(True)
    if kept < 0:
        pytest.skip("no glibc malloc to tune")
    fresh = _faults_of_fresh_arrays(False)  # 20 x 32 MB: ~7,800 faults each in 4 kB pages
    if fresh < 20 * 7_800 // 4:  # transparent huge pages: 2 MB per fault, nothing to save
        pytest.skip(f"{fresh} faults for 20 fresh 32 MB arrays: the kernel maps huge pages here")
    assert kept * 4 < fresh
