"""The first run's parts, old code path against new, measured in one process.

Prints, per part, the cost before and after and their ratio, so that the ratio holds on a
machine shared with other work (wall times there are not comparable between runs):

- renderer: ms per frame of ``render_phantom`` at ``--baseline`` (a git revision, loaded
  from ``git show``) and now, interleaved video by video, per site; the share of frame
  pixels that differ and whether the LV cavity (the labels' source) is identical;
- allocator: CPU time and page faults of the renderer with glibc's default malloc and with
  ``keep_freed_memory`` (what the generator's worker processes now do), fresh processes;
- source corpus: ms per frame of getting rendered frames into the clip store pretraining
  reads: before, an MJPG AVI written, decoded and reduced to grey; now, an in-memory JPEG;
- frame features: ms per frame of the frozen trunk (EchoZoom scales [1, 2], fp32) at
  batch sizes and memory formats, the default (``batch_frames`` 16, contiguous) first.

- with ``--corpus-check CHECKPOINT AVI_STORE``: how a backbone pretrained on the AVI
  route sees the same source videos through the in-memory JPEG (embedding cosines).

    python benchmarks/first_run.py [--baseline 4af4388] [--videos 8] [--skip features]

Per-node shares of a whole run come from its log: ``benchmarks/kedro_node_times.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SITES = {"source": {"frames_range": (40, 64)}, "target": None}  # as the default run has them


def baseline_module(revision: str, relative: str, name: str) -> ModuleType:
    """``relative`` (a file under src/) as it was at ``revision``, imported as ``name``."""
    text = subprocess.run(
        ["git", "show", f"{revision}:{relative}"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / f"{name}.py"
    path.write_bytes(text)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def bench_renderer(old: ModuleType, videos: int) -> None:
    from cardiac_pipeline.echo import phantom
    from cardiac_pipeline.echo.sites import get_site

    for site_name, overrides in SITES.items():
        site = get_site(site_name, overrides)
        params = [old.draw_phantom(np.random.default_rng(500 + i), site) for i in range(videos)]
        before = after = 0.0
        frames = differing = 0
        same_cavity = True
        for p in params:
            a, t_old = _timed(old.render_phantom, p)
            b, t_new = _timed(phantom.render_phantom, p)
            before, after, frames = before + t_old, after + t_new, frames + p.n_frames
            differing += int((a.frames != b.frames).sum())
            same_cavity &= np.array_equal(a.lv_cavity, b.lv_cavity)
        print(
            f"renderer {site_name}: {1e3 * before / frames:.3f} -> {1e3 * after / frames:.3f} "
            f"ms/frame ({before / after:.2f}x); pixels differing {differing / a.frames[0].size / frames:.1e}; "
            f"LV cavity identical: {same_cavity}"
        )


def render_cost(keep_memory: bool, videos: int, baseline: str | None = None) -> dict[str, float]:
    """CPU seconds (user, kernel) and page faults of rendering target videos, this process;
    ``baseline``: with the renderer of that git revision."""
    import resource

    from cardiac_pipeline.echo import phantom
    from cardiac_pipeline.echo.sites import get_site
    from cardiac_pipeline.echo.synthetic import keep_freed_memory

    if baseline:
        phantom = baseline_module(baseline, "src/cardiac_pipeline/echo/phantom.py", "old_phantom")
    if keep_memory:
        keep_freed_memory()
    site = get_site("target")
    params = [phantom.draw_phantom(np.random.default_rng(700 + i), site) for i in range(videos)]
    phantom.render_phantom(params[0])  # warm-up
    before = resource.getrusage(resource.RUSAGE_SELF)
    for p in params:
        phantom.render_phantom(p)
    after = resource.getrusage(resource.RUSAGE_SELF)
    frames = sum(p.n_frames for p in params)
    return {
        "user_ms": 1e3 * (after.ru_utime - before.ru_utime) / frames,
        "kernel_ms": 1e3 * (after.ru_stime - before.ru_stime) / frames,
        "faults": (after.ru_minflt - before.ru_minflt) / videos,
    }


def bench_allocator(videos: int, baseline: str, rounds: int = 2) -> None:
    """The generator workers' ``keep_freed_memory``, and the old renderer with glibc's
    default malloc against the new one with it: CPU time, fresh processes, alternated."""
    import json

    code = (
        "import json,sys; sys.path.insert(0, {!r}); import first_run; "
        "print(json.dumps(first_run.render_cost({}, {}, {!r})))"
    )
    variants = {"old, default": (False, baseline), "new, default": (False, None)}
    variants["new, kept"] = (True, None)
    runs: dict[str, list[dict[str, float]]] = {label: [] for label in variants}
    for _ in range(rounds):
        for label, (keep, revision) in variants.items():
            line = code.format(str(Path(__file__).parent), keep, videos, revision)
            out = subprocess.run(
                [sys.executable, "-c", line], check=True, capture_output=True, text=True
            ).stdout
            runs[label].append(json.loads(out.strip().splitlines()[-1]))
    first = None
    for label, results in runs.items():
        mean = {m: float(np.mean([r[m] for r in results])) for m in results[0]}
        cpu = mean["user_ms"] + mean["kernel_ms"]
        first = first or cpu
        print(
            f"renderer CPU time, {label:12s}: {cpu:.3f} ms/frame (kernel {mean['kernel_ms']:.3f}, "
            f"{mean['faults']:.0f} page faults/video): {first / cpu:.2f}x"
        )


def _avi_route(frames: np.ndarray, fps: int, folder: Path) -> np.ndarray:
    from cardiac_pipeline.echo.clipstore import PreprocessParams, preprocess_frames
    from cardiac_pipeline.echo.video import read_video, write_video

    write_video(folder / "v.avi", frames, fps)
    return preprocess_frames(read_video(folder / "v.avi"), PreprocessParams(size=112))[0]


def bench_corpus(videos: int) -> None:
    from cardiac_pipeline.echo.sites import get_site
    from cardiac_pipeline.echo.synthetic import LabelConventions, jpeg_round_trip, synthesize_video

    site = get_site("source", SITES["source"])
    quality = LabelConventions().clip_jpeg_quality
    clips = [synthesize_video(11, "TRAIN", i, site) for i in range(videos)]
    before = after = 0.0
    errors_avi, errors_jpeg = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for video in clips:
            avi, t_old = _timed(_avi_route, video.frames, video.fps, Path(tmp))
            jpeg, t_new = _timed(jpeg_round_trip, video.frames, quality)
            before, after = before + t_old, after + t_new
            errors_avi.append(avi[:, 0].astype(float) - video.frames)
            errors_jpeg.append(jpeg.astype(float) - video.frames)
    frames = sum(len(v.frames) for v in clips)
    avi_e, jpeg_e = np.concatenate(errors_avi), np.concatenate(errors_jpeg)
    print(
        f"source corpus into the clip store (beyond rendering): AVI write + decode "
        f"{1e3 * before / frames:.3f} -> in-memory JPEG {1e3 * after / frames:.3f} ms/frame "
        f"({before / after:.1f}x); error vs rendered frames: mean |e| {np.abs(avi_e).mean():.2f} "
        f"-> {np.abs(jpeg_e).mean():.2f}, rms {np.sqrt((avi_e**2).mean()):.2f} -> "
        f"{np.sqrt((jpeg_e**2).mean()):.2f}, bias {avi_e.mean():+.2f} -> {jpeg_e.mean():+.2f}"
    )


def bench_features(frames: int, repeats: int) -> None:
    import torch

    from cardiac_pipeline.model import recipe
    from cardiac_pipeline.model.features import _encode

    sections = {
        "backbone": {"name": "echo-convnext-tiny", "pretrained": None},
        "cardiac_clip": {
            "method": "cardiac_clip",
            "scales": [1, 2],
            "tile": 112,
            "pooling": "attention",
            "head": "prompt",
            "prompt_set": "values",
        },
    }
    model = recipe.build_cardiac_clip(sections, seed=0).eval()
    grid = np.random.default_rng(0).integers(0, 255, (frames, 1, 112, 112), dtype=np.uint8)
    variants = {"b16": (16, False), "b64": (64, False), "b16 cl": (16, True), "b64 cl": (64, True)}
    seconds = dict.fromkeys(variants, 0.0)
    outputs = {}
    for _ in range(repeats):  # interleaved: load changes hit every variant alike
        for label, (batch, channels_last) in variants.items():
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            model.channels_last = channels_last
            model.image_encoder.trunk.to(memory_format=fmt)
            outputs[label], spent = _timed(_encode, model, grid, batch)
            seconds[label] += spent
    base = seconds["b16"]
    scale = np.abs(outputs["b16"].astype(np.float32)).mean()
    for label, spent in seconds.items():
        diff = np.abs(outputs[label].astype(np.float32) - outputs["b16"]).max()
        print(
            f"frame features {label:7s} {1e3 * spent / repeats / frames:6.2f} ms/frame "
            f"({base / spent:.2f}x of b16); max |diff| {diff:.1e} (mean |feature| {scale:.2e}); "
            f"torch threads {torch.get_num_threads()}"
        )


def corpus_check(checkpoint: Path, avi_store: Path, videos: int) -> None:
    """How differently a backbone pretrained on the AVI route's frames sees the same
    source videos through the in-memory JPEG: cosine of their video embeddings (the
    pretraining loss's input), beside the cosine between different videos, and the
    zero-shot EF of each route."""
    import torch

    from cardiac_pipeline.echo.clips import ClipSpec, clip_at, eval_clip_starts
    from cardiac_pipeline.echo.clipstore import ClipStore
    from cardiac_pipeline.echo.sites import get_site
    from cardiac_pipeline.echo.synthetic import LabelConventions, jpeg_round_trip, synthesize_video
    from cardiac_pipeline.model.backbone import create_backbone
    from cardiac_pipeline.model.pretrain import encode_videos, video_embedding

    backbone = create_backbone("echo-convnext-tiny", pretrained=checkpoint)
    model = backbone.model.eval()
    store, spec = ClipStore(avi_store), ClipSpec(frames=4, period=6, target_fps=30)
    site, quality = get_site("source", SITES["source"]), LabelConventions().clip_jpeg_quality
    avi_clips, jpeg_clips = [], []
    for i in range(videos):
        video = synthesize_video(11, "TRAIN", i, site)
        jpeg = jpeg_round_trip(video.frames, quality)[:, None]
        avi = np.asarray(store.load(video.name))
        start = int(eval_clip_starts(len(jpeg), spec, 1, video.fps)[0])
        avi_clips.append(clip_at(avi, start, spec, video.fps))
        jpeg_clips.append(clip_at(jpeg, start, spec, video.fps))
    with torch.inference_mode():
        embed = [
            video_embedding(
                encode_videos(model, np.stack(c), backbone.mean, backbone.std, torch.device("cpu"))
            )
            for c in (avi_clips, jpeg_clips)
        ]
    same = (embed[0] * embed[1]).sum(-1)
    other = embed[0] @ embed[0].t()
    off = other[~torch.eye(videos, dtype=torch.bool)]
    print(
        f"corpus check ({videos} source videos): cosine AVI vs JPEG route of the same video "
        f"{same.mean():.4f} (min {same.min():.4f}); between different videos {off.mean():.4f} "
        f"± {off.std():.4f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="4af4388", help="git revision of the old code")
    parser.add_argument("--videos", type=int, default=8, help="videos per site and part")
    parser.add_argument("--feature-frames", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["renderer", "allocator", "corpus", "features"]
    )
    parser.add_argument(
        "--corpus-check",
        nargs=2,
        type=Path,
        metavar=("CHECKPOINT", "AVI_STORE"),
        help="a backbone pretrained on the AVI route, and that route's source clip store",
    )
    args = parser.parse_args()
    import cv2

    cv2.setNumThreads(1)  # as in the generator's worker processes
    if "renderer" not in args.skip:
        old = baseline_module(args.baseline, "src/cardiac_pipeline/echo/phantom.py", "old_phantom")
        bench_renderer(old, args.videos)
    if "allocator" not in args.skip:
        bench_allocator(args.videos, args.baseline)
    if "corpus" not in args.skip:
        bench_corpus(args.videos)
    if "features" not in args.skip:
        bench_features(args.feature_frames, args.repeats)
    if args.corpus_check:
        corpus_check(*args.corpus_check, args.videos)


if __name__ == "__main__":
    main()
