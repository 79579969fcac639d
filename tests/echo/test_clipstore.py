import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cardiac_pipeline.echo import clipstore
from cardiac_pipeline.echo.clipstore import (
    MANIFEST_COLUMNS,
    ClipStore,
    ClipStoreError,
    PreprocessParams,
    build_clip_store,
    is_grey,
    preprocess_frames,
    store_key,
)
from cardiac_pipeline.echo.video import read_video, write_video
from cardiac_pipeline.io import LOCK_FILE
from tests.processes import SPAWN, another_process_holding, wait_until

SIZE = 32


def make_video(path: Path, num_frames: int = 12, size=(SIZE, SIZE), colour=False, seed=0):
    rng = np.random.default_rng(seed)
    height, width = size
    grey = rng.integers(30, 220, size=(num_frames, height, width), dtype=np.uint8)
    frames = np.stack([grey, grey // 2, 255 - grey], axis=-1) if colour else grey
    write_video(path, frames, fps=50.0)
    return path


def make_index(tmp_path: Path, n: int = 3, colour_last=True) -> pd.DataFrame:
    videos = tmp_path / "Videos"
    rows = []
    for i in range(n):
        path = make_video(videos / f"V{i}.avi", colour=colour_last and i == n - 1, seed=i)
        rows.append({"FileName": f"V{i}", "path": str(path), "FPS": 50.0})
    return pd.DataFrame(rows)


def build(index, root, **kwargs):
    kwargs = {"size": SIZE, "workers": 1, "progress": False, **kwargs}
    return build_clip_store(index, root, **kwargs)


def test_build_writes_channels_first_grey_and_colour_entries(tmp_path):
    index = make_index(tmp_path)
    manifest = build(index, tmp_path / "store")
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert manifest["FileName"].tolist() == ["V0", "V1", "V2"]
    assert (manifest["status"] == "built").all()
    assert manifest["channels"].tolist() == [1, 1, 3]
    assert manifest["fps"].tolist() == [50.0] * 3
    store = ClipStore(tmp_path / "store")
    for name, path in zip(index["FileName"], index["path"], strict=True):
        video = store.load(name)
        assert isinstance(video, np.memmap)
        expected, _ = preprocess_frames(read_video(path), PreprocessParams(size=SIZE))
        np.testing.assert_array_equal(video, expected)
        store.verify(name)
    assert store.load("V2").shape == (12, 3, SIZE, SIZE)
    assert store.file_names() == ["V0", "V1", "V2"]
    on_disk = pd.read_csv(tmp_path / "store" / "manifest.csv")
    assert on_disk["checksum"].tolist() == manifest["checksum"].tolist()


def test_rerun_skips_done_work_and_rebuilds_changed_sources_or_params(tmp_path):
    index = make_index(tmp_path)
    root = tmp_path / "store"
    build(index, root)
    npy = ClipStore(root).npy_path("V0")
    before = npy.stat().st_mtime_ns
    again = build(index, root)
    assert (again["status"] == "skipped").all()
    assert npy.stat().st_mtime_ns == before
    make_video(Path(index.loc[1, "path"]), num_frames=7, seed=99)  # source changed
    again = build(index, root)
    assert again["status"].tolist() == ["skipped", "built", "skipped"]
    assert ClipStore(root).load("V1").shape[0] == 7
    again = build(index, root, size=16)  # other params: nothing trusted
    assert (again["status"] == "built").all()
    assert ClipStore(root).load("V0").shape[-2:] == (16, 16)


def test_parallel_build_matches_in_process_build(tmp_path):
    index = make_index(tmp_path)
    serial = build(index, tmp_path / "a")
    parallel = build(index, tmp_path / "b", workers=2)
    assert parallel["checksum"].tolist() == serial["checksum"].tolist()


def test_interrupted_build_leaves_nothing_trusted(tmp_path, monkeypatch):
    index = make_index(tmp_path)
    root = tmp_path / "store"
    real_write = clipstore.atomic_write
    calls = []

    def crash_before_entry(path, write, *, fsync):
        calls.append(path)
        if path.suffix == ".json":  # the .npy is in place, its entry never lands
            raise KeyboardInterrupt
        real_write(path, write, fsync=fsync)

    monkeypatch.setattr(clipstore, "atomic_write", crash_before_entry)
    with pytest.raises(KeyboardInterrupt):
        build(index, root)
    monkeypatch.setattr(clipstore, "atomic_write", real_write)
    store = ClipStore(root)
    assert store.npy_path("V0").is_file()
    assert "V0" not in store
    with pytest.raises(ClipStoreError, match="V0: no entry"):
        store.load("V0")
    stray = root / "clips" / ".tmp-abc.npy"  # a temp file from a killed writer
    stray.write_bytes(b"half")
    manifest = build(index, root)
    assert (manifest["status"] == "built").all()
    assert not stray.exists()
    assert not list(root.rglob(".tmp-*"))


def test_entry_with_wrong_checksum_or_truncated_file_is_not_trusted(tmp_path):
    index = make_index(tmp_path)
    root = tmp_path / "store"
    build(index, root)
    store = ClipStore(root)
    entry_path = store.entry_path("V0")
    entry = json.loads(entry_path.read_text())
    entry["checksum"] = "sha1:" + "0" * 40
    entry_path.write_text(json.dumps(entry))
    with open(store.npy_path("V1"), "r+b") as handle:  # truncated .npy
        handle.truncate(store.npy_path("V1").stat().st_size - 10)
    with pytest.raises(ClipStoreError, match=r"V0\.npy: checksum mismatch"):
        ClipStore(root).verify("V0")
    with pytest.raises(ClipStoreError, match=r"V1\.npy: .*truncated"):
        ClipStore(root).load("V1")
    # cheap checks catch the truncation; the checksum needs verify_existing
    assert build(index, root)["status"].tolist() == ["skipped", "built", "skipped"]
    assert build(index, root, verify_existing=True)["status"].tolist() == [
        "built",
        "skipped",
        "skipped",
    ]
    assert ClipStore(root).verify_all() == {}


def test_corrupt_entries_are_reported_with_the_file_name(tmp_path):
    index = make_index(tmp_path)
    root = tmp_path / "store"
    build(index, root)
    store = ClipStore(root)
    path = store.npy_path("V0")
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # one pixel flipped: same size and shape
    path.write_bytes(bytes(data))
    store.load("V0")  # cheap check cannot see it
    with pytest.raises(ClipStoreError, match=r"V0\.npy: checksum mismatch"):
        store.verify("V0")
    store.npy_path("V1").write_bytes(b"\x00" * store.entry("V1")["nbytes"])  # garbage header
    with pytest.raises(ClipStoreError, match=r"V1\.npy: not a readable \.npy"):
        store.load("V1")
    store.entry_path("V2").write_text("{not json")
    with pytest.raises(ClipStoreError, match=r"V2\.json: unreadable"):
        ClipStore(root).load("V2")
    assert sorted(ClipStore(root).verify_all()) == ["V0", "V1", "V2"]


def test_grey_detection_tolerates_decoder_noise_only():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, size=(3, 8, 8), dtype=np.uint8)
    noisy = np.stack([grey, np.clip(grey.astype(int) + 2, 0, 255).astype(np.uint8), grey], -1)
    assert is_grey(noisy, tolerance=8)
    tinted = noisy.copy()
    tinted[2, 4, 4, 0] = np.uint8((int(tinted[2, 4, 4, 1]) + 60) % 256)  # one coloured pixel
    assert not is_grey(tinted, tolerance=8)
    video, grey_flag = preprocess_frames(noisy, PreprocessParams(size=8))
    assert grey_flag and video.shape == (3, 1, 8, 8)
    assert np.abs(video[:, 0].astype(int) - grey).max() <= 1


def test_large_non_square_video_is_resized(tmp_path):
    path = make_video(tmp_path / "Videos" / "BIG.avi", num_frames=2, size=(768, 1024))
    index = pd.DataFrame({"FileName": ["BIG"], "path": [str(path)]})  # no FPS: probed
    manifest = build(index, tmp_path / "store", size=112)
    row = manifest.iloc[0]
    assert (row["source_height"], row["source_width"]) == (768, 1024)
    assert ClipStore(tmp_path / "store").load("BIG").shape == (2, 1, 112, 112)
    assert row["fps"] == pytest.approx(50.0)


def test_fit_modes_for_non_square_frames():
    frame = np.zeros((1, 40, 80, 3), dtype=np.uint8)
    frame[:, :, :20] = 200  # bright left quarter
    stretch, _ = preprocess_frames(frame, PreprocessParams(size=20, fit="stretch"))
    crop, _ = preprocess_frames(frame, PreprocessParams(size=20, fit="center_crop"))
    pad, _ = preprocess_frames(frame, PreprocessParams(size=20, fit="pad"))
    assert stretch[0, 0, :, :5].min() == 200 and stretch[0, 0, :, 5:].max() == 0
    assert crop.max() == 0  # the bright quarter lies outside the central square
    assert pad[0, 0, :5].max() == 0 and pad[0, 0, 5:15, :5].min() == 200


def test_failed_video_raises_or_is_listed(tmp_path):
    index = make_index(tmp_path, n=2)
    (tmp_path / "Videos" / "BAD.avi").write_bytes(b"not a video")
    index = pd.concat(
        [index, pd.DataFrame({"FileName": ["BAD"], "path": [str(tmp_path / "Videos" / "BAD.avi")]})]
    )
    with pytest.raises(ClipStoreError, match=r"BAD\.avi"):
        build(index, tmp_path / "a")
    manifest = build(index, tmp_path / "b", on_error="skip")
    assert manifest["FileName"].tolist() == ["V0", "V1"]
    assert [name for name, _ in manifest.attrs["failures"]] == ["BAD"]


def build_gated(index, root, started, go) -> None:
    """Another process's build that pauses, holding the lock, before its first video."""
    decode = clipstore._build_entry

    def gated(task):
        started.set()
        go.wait(120)
        return decode(task)

    clipstore._build_entry = gated
    build(index, root)


def test_second_build_waits_for_the_first_then_reuses_its_entries(tmp_path, caplog):
    pytest.importorskip("fcntl")
    index, root = make_index(tmp_path, n=2), tmp_path / "store"
    started, go = SPAWN.Event(), SPAWN.Event()
    first = SPAWN.Process(target=build_gated, args=(index, root, started, go))
    first.start()
    try:
        assert started.wait(120), "the first build never started"
        caplog.set_level(logging.INFO, logger="cardiac_pipeline.io")
        with ThreadPoolExecutor(1) as pool:
            second = pool.submit(build, index, root)
            wait_until(lambda: "being built by" in caplog.text, "the second build waiting")
            assert f"clip store {root.name} is being built by process" in caplog.text
            go.set()
            manifest = second.result(timeout=120)
    finally:
        go.set()
        first.join(120)
    assert first.exitcode == 0
    assert (manifest["status"] == "skipped").all()  # decoded by the first, reused
    assert ClipStore(root).verify_all() == {}


def test_complete_store_is_read_while_another_process_holds_its_lock(tmp_path):
    pytest.importorskip("fcntl")
    index, root = make_index(tmp_path, n=2), tmp_path / "store"
    build(index, root)
    with another_process_holding(root / LOCK_FILE), ThreadPoolExecutor(1) as pool:
        manifest = pool.submit(build, index, root).result(timeout=120)
    assert (manifest["status"] == "skipped").all()


def test_store_key_separates_datasets_and_params(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    params = {"size": 112, "fit": "stretch"}
    monkeypatch.chdir(tmp_path)
    assert store_key("a", params) == store_key(a, dict(reversed(params.items())))
    assert store_key(a, params) != store_key(b, params)
    assert store_key(a, params) != store_key(a, {**params, "size": 224})
    assert len(store_key(a, params)) == 12
    assert os.sep not in store_key(a, params)
