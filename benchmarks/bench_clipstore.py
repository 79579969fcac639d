"""Benchmark of the clip store against decoding the AVI for every training sample.

Prints:
  (a) decode-and-cache throughput of ``build_clip_store`` (videos/s), and of a re-run that
      skips everything;
  (b) training-time clip loading (clips/s): store (memory-mapped .npy, one clip sampled,
      pad-and-crop) vs the reference's naive way (cv2.VideoCapture reads the whole AVI for
      every sample, then one clip is sampled), on the same videos in the same run, and
      through ``EchoClipDataset``;
  (c) peak resident memory of preprocessing 100 and 1,000 videos, each in a fresh
      subprocess (VmHWM of the build process, ru_maxrss of its largest worker, which
      includes ~115 MB inherited from the build process it was forked from): it must not
      grow with the number of videos;
  (d) disk per video: store .npy + entry vs the source AVI.

By default it writes its own videos (random-ish 112x112 grey, 120 frames, 50 fps) to a temp
dir; ``--videos DIR`` uses an EchoNet folder (``DIR/Videos/*.avi``) or a folder of videos.
The 1,000-video memory run reuses the same files under distinct FileNames (each row is
decoded and written separately, which is what memory depends on).

    python benchmarks/bench_clipstore.py            # ~2 min on 2 shared cores
    python benchmarks/bench_clipstore.py --videos /data/EchoNet-Dynamic --n 200
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cardiac_pipeline.echo.clips import ClipSpec, pad_and_random_crop, sample_clip
from cardiac_pipeline.echo.clipstore import ClipStore, build_clip_store
from cardiac_pipeline.echo.video import VIDEO_SUFFIXES, write_video


def make_videos(folder: Path, n: int, frames: int, fps: float, size: int, seed: int) -> list[Path]:
    """Grey phantom-like videos: moving sinusoidal texture plus speckle-like noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    paths = []
    for v in range(n):
        phase = rng.uniform(0, 2 * np.pi)
        t = np.arange(frames, dtype=np.float32)[:, None, None]
        base = np.sin(xx / 7 + t / 5 + phase) + np.cos(yy / 9 - t / 11)
        video = base * 60 + 128 + rng.normal(0, 12, (frames, size, size))
        path = folder / f"SYN{v:05d}.avi"
        write_video(path, video.clip(0, 255).astype(np.uint8), fps=fps)
        paths.append(path)
    return paths


def find_videos(folder: Path, n: int) -> list[Path]:
    videos = folder / "Videos" if (folder / "Videos").is_dir() else folder
    paths = sorted(p for p in videos.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not paths:
        sys.exit(f"{videos}: no .avi/.mp4 files")
    return paths[:n]


def index_of(paths: list[Path], rows: int | None = None) -> pd.DataFrame:
    """Video index rows (FileName, path); ``rows`` > len(paths) cycles the files."""
    rows = len(paths) if rows is None else rows
    return pd.DataFrame(
        {
            "FileName": [f"{paths[i % len(paths)].stem}_{i:05d}" for i in range(rows)],
            "path": [str(paths[i % len(paths)]) for i in range(rows)],
        }
    )


def naive_load_video(path: str) -> np.ndarray:
    """The reference loader: whole AVI via cv2.VideoCapture, BGR->RGB, to (C, F, H, W)."""
    import cv2

    capture = cv2.VideoCapture(path)
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    video = np.zeros((count, height, width, 3), np.uint8)
    for i in range(count):
        ok, frame = capture.read()
        if not ok:
            raise ValueError(f"{path}: failed to load frame {i}")
        video[i] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    capture.release()
    return video.transpose((3, 0, 1, 2))


def bench_loading(store: ClipStore, index: pd.DataFrame, samples: int, spec: ClipSpec) -> dict:
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(index), size=samples)
    names, paths = index["FileName"].to_numpy(), index["path"].to_numpy()

    start = time.perf_counter()
    for i in picks:
        video = store.load(names[i])
        clip = pad_and_random_crop(sample_clip(video, spec, rng), 12, rng=rng)
    store_rate = samples / (time.perf_counter() - start)

    naive_samples = max(1, samples // 10)  # the slow path: fewer samples, same videos
    start = time.perf_counter()
    for i in picks[:naive_samples]:
        video = naive_load_video(paths[i]).transpose(1, 0, 2, 3)  # (F, C, H, W)
        clip = pad_and_random_crop(sample_clip(video, spec, rng), 12, rng=rng)
    naive_rate = naive_samples / (time.perf_counter() - start)
    assert clip.shape[0] == spec.frames

    from cardiac_pipeline.model.data import EchoClipDataset

    table = index.assign(EF=50.0)
    dataset = EchoClipDataset(store, table, spec, train=True, seed=0, augment_pad=12)
    start = time.perf_counter()
    for i in picks:
        dataset[int(i)]
    dataset_rate = samples / (time.perf_counter() - start)
    return {"store": store_rate, "naive": naive_rate, "dataset": dataset_rate}


def peak_rss_mb() -> float:
    """Peak RSS of this process image. Linux keeps ru_maxrss across fork+exec (a child of a
    big parent inherits its peak), so prefer VmHWM, which starts afresh at exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(index_csv: str, root: str, workers: int) -> None:
    """Subprocess body: build a store, print elapsed time and peak RSS as JSON."""
    index = pd.read_csv(index_csv)
    start = time.perf_counter()
    build_clip_store(index, root, workers=workers, progress=False, fsync=False)
    elapsed = time.perf_counter() - start
    print(
        json.dumps(
            {
                "seconds": elapsed,
                "self_mb": peak_rss_mb(),
                "worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            }
        )
    )


def bench_memory(paths: list[Path], rows: int, workdir: Path, workers: int) -> dict:
    index_csv = workdir / f"index_{rows}.csv"
    index_of(paths, rows).to_csv(index_csv, index=False)
    root = workdir / f"store_{rows}"
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(index_csv), str(root), str(workers)],
        check=True,
        capture_output=True,
        text=True,
    )
    shutil.rmtree(root)  # 1,000 entries are ~1.5 GB
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=Path, help="EchoNet folder or folder of videos")
    parser.add_argument("--n", type=int, default=100, help="videos for (a), (b), (d)")
    parser.add_argument("--frames", type=int, default=120, help="frames per generated video")
    parser.add_argument("--fps", type=float, default=50.0)
    parser.add_argument("--samples", type=int, default=500, help="clips sampled in (b)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-rows", default="100,1000", help="store sizes for (c)")
    parser.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child[0], args.memory_child[1], int(args.memory_child[2]))
        return

    spec = ClipSpec(frames=48, period=2)
    with tempfile.TemporaryDirectory(prefix="bench_clipstore_") as tmp:
        work = Path(tmp)
        if args.videos:
            paths = find_videos(args.videos, args.n)
            source = f"{len(paths)} videos from {args.videos}"
        else:
            start = time.perf_counter()
            paths = make_videos(work / "Videos", args.n, args.frames, args.fps, 112, seed=0)
            source = (
                f"{len(paths)} generated videos (112x112 grey, {args.frames} frames, "
                f"{args.fps:g} fps; written in {time.perf_counter() - start:.1f} s)"
            )
        print(
            f"videos: {source}; workers={args.workers}; clip T={spec.frames} period={spec.period}"
        )
        index = index_of(paths)

        start = time.perf_counter()
        manifest = build_clip_store(index, work / "store", workers=args.workers, progress=False)
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        build_clip_store(index, work / "store", workers=args.workers, progress=False)
        skip_s = time.perf_counter() - start
        print(
            f"(a) decode+cache: {len(index) / build_s:.1f} videos/s ({build_s:.1f} s for "
            f"{len(index)}, incl. worker start); re-run (all skipped): {skip_s:.2f} s"
        )

        store = ClipStore(work / "store")
        rates = bench_loading(store, index, args.samples, spec)
        print(
            f"(b) clip loading: store {rates['store']:.0f} clips/s, naive cv2 whole-AVI "
            f"{rates['naive']:.1f} clips/s -> {rates['store'] / rates['naive']:.0f}x; "
            f"EchoClipDataset items {rates['dataset']:.0f}/s"
        )

        for rows in (int(r) for r in args.memory_rows.split(",") if r):
            mem = bench_memory(paths, rows, work, args.workers)
            print(
                f"(c) preprocess {rows:5d} videos: peak RSS build process {mem['self_mb']:.0f} MB, "
                f"largest worker {mem['worker_mb']:.0f} MB ({rows / mem['seconds']:.1f} videos/s)"
            )

        npy = manifest["nbytes"].mean()
        entry = np.mean([p.stat().st_size for p in (work / "store" / "entries").glob("*.json")])
        avi = np.mean([p.stat().st_size for p in paths])
        frames = manifest["frames"].mean()
        print(
            f"(d) disk per video: store {npy / 1e6:.2f} MB .npy + {entry / 1e3:.1f} kB entry "
            f"(mean {frames:.0f} frames, channels {sorted(int(c) for c in manifest['channels'].unique())}); "
            f"source AVI {avi / 1e6:.2f} MB; ratio {npy / avi:.1f}x"
        )


if __name__ == "__main__":
    main()
