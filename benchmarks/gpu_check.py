"""GPU check: CardiacCLIP training at full size through the project's loop, per backbone.

``--backbone`` picks a preset at its published input size (random weights):

- ``paper`` (default): the paper's recipe, ConvNeXt-B-W (``echo-convnext-b-w``), EchoZoom
  scales [1, 2] on 112-pixel frames, 48-frame clips.
- ``echoclip``: EchoCLIP's architecture (ConvNeXt-B-W, 512-d) on 224-pixel frames, EchoZoom
  [1, 2] with 224-pixel tiles, 16 frames, the prompt head.
- ``echoprime``: EchoPrime's MViT-v2-S clip encoder, one clip of 16 frames of 224 pixels,
  the linear head (its text tower needs the BiomedBERT tokenizer folder: ``--tokenizer``
  gives the prompt head with the text tower trained too).
- ``panecho``: PanEcho's ConvNeXt-T frame transformer, 16 frames of 224 pixels, the linear
  head started from its EF head.

Batch 2 per GPU, bf16 autocast and channels-last, trained by ``train.fit`` on random clips
for ``--steps`` steps after as many warm-up steps (the first epoch: allocator, cuDNN
autotuning). Prints the step time, frames/s, the share of step time spent waiting for data,
peak GPU memory and the model FLOP utilisation (FLOPs of one step counted by
``torch.utils.flop_counter.FlopCounterMode``, against ``--peak-tflops``, default 989:
H100/H200 dense bf16). Not part of the tests; runs where a GPU is present.

    python benchmarks/gpu_check.py --steps 300
    python benchmarks/gpu_check.py --backbone all --steps 50        # the three, one by one
    torchrun --nproc_per_node=8 benchmarks/gpu_check.py --steps 300 --ddp   # all GPUs
    python benchmarks/gpu_check.py --device cpu --tiny --steps 3            # a CPU smoke run

Under ``--ddp`` the batch is per GPU (global batch = batch x GPUs) and rank 0 prints.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import Dataset
from torch.utils.flop_counter import FlopCounterMode

from cardiac_pipeline.model import distributed
from cardiac_pipeline.model.losses import cardiac_clip_loss
from cardiac_pipeline.model.recipe import build_cardiac_clip
from cardiac_pipeline.model.train import TrainConfig, fit, resolve_device

H100_BF16_DENSE_TFLOPS = 989.0


class RandomClips(Dataset):
    """Random uint8 grey clips ``(T, 1, S, S)`` and EFs, the same for a given index."""

    def __init__(self, n: int, frames: int, size: int) -> None:
        self.n, self.frames, self.size = n, frames, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        generator = torch.Generator().manual_seed(i)
        clip = torch.randint(
            0, 256, (self.frames, 1, self.size, self.size), dtype=torch.uint8, generator=generator
        )
        ef = 10.0 + 70.0 * torch.rand((), generator=generator)
        return {"clip": clip, "ef": ef, "file_name": f"random{i:05d}"}


#: each backbone at its published input: arch (backbone.name), head, frames, pixels, scales
PRESETS: dict[str, dict] = {
    "paper": {"arch": "echo-convnext-b-w", "head": "prompt", "frames": 48, "size": 112},
    "echoclip": {"arch": "echo-convnext-b-w", "head": "prompt", "frames": 16, "size": 224},
    "echoprime": {"arch": "echoprime", "head": "linear", "frames": 16, "size": 224},
    "panecho": {"arch": "panecho", "head": "linear", "frames": 16, "size": 224},
}
FOUNDATION_MODELS = ("echoclip", "echoprime", "panecho")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backbone",
        choices=[*PRESETS, "all"],
        default="paper",
        help="preset at its published input size; all: echoclip, echoprime and panecho",
    )
    parser.add_argument("--steps", type=int, default=200, help="measured optimiser steps")
    parser.add_argument("--batch", type=int, default=2, help="clips per GPU per step")
    parser.add_argument("--frames", type=int, default=None, help="the preset's by default")
    parser.add_argument("--arch", default=None, help="backbone.name (the preset's by default)")
    parser.add_argument("--scales", type=int, nargs="+", default=None)
    parser.add_argument("--size", type=int, default=None, help="frame and EchoZoom tile pixels")
    parser.add_argument("--tokenizer", default=None, help="EchoPrime's BiomedBERT tokenizer folder")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=None, help="loader workers per process")
    parser.add_argument("--peak-tflops", type=float, default=None, help="bf16 peak per device")
    parser.add_argument("--ddp", action="store_true", help="one process per GPU (torchrun)")
    parser.add_argument(
        "--tiny", action="store_true", help="echo-convnext-atto, 4 frames of 64 px (CPU smoke)"
    )
    args = parser.parse_args(argv)
    if args.tiny:
        args.backbone, args.arch, args.frames, args.size = "paper", "echo-convnext-atto", 4, 64
    return args


def with_preset(args: argparse.Namespace, backbone: str) -> argparse.Namespace:
    """``args`` with the preset's values where the command line left them unset."""
    preset = PRESETS[backbone]
    clip_encoder = preset["arch"] in ("echoprime", "panecho")
    values = {
        "backbone": backbone,
        "arch": args.arch or preset["arch"],
        "frames": args.frames or preset["frames"],
        "size": args.size or preset["size"],
        "scales": args.scales or ([1] if clip_encoder else [1, 2]),
        "head": "prompt" if args.tokenizer else preset["head"],
    }
    return argparse.Namespace(**{**vars(args), **values})


def step_flops(model: torch.nn.Module, batch: dict, config: TrainConfig) -> int:
    """FLOPs of one training step (forward and backward) of one process's batch."""
    device = next(model.parameters()).device
    clips = batch["clip"].to(device)
    target = batch["ef"].to(device, dtype=torch.float32)
    dtype = torch.bfloat16 if config.amp == "bf16" else None
    model.train()
    counter = FlopCounterMode(display=False)
    with counter:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss, _ = cardiac_clip_loss(model(clips), target)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def main() -> bool:
    """Run the check for each asked backbone; True on the process that reports (rank 0)."""
    args = parse_args()
    if args.ddp:
        distributed.init_from_env(args.device)
    names = FOUNDATION_MODELS if args.backbone == "all" else (args.backbone,)
    reports = [check(with_preset(args, name)) for name in names]
    main_process = distributed.is_main()
    distributed.shutdown()
    return main_process and all(reports)


def check(args: argparse.Namespace) -> bool:
    """One backbone's measured run; prints its report on rank 0."""
    world = distributed.world_size()
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    cpus = len(os.sched_getaffinity(0))
    workers = args.workers
    if workers is None:
        workers = max(1, min(8, cpus // world - 1)) if cuda else 0
    config = TrainConfig(
        epochs=2,  # epoch 1: warm-up; epoch 2: measured
        batch_size=args.batch * world,
        max_batches_per_epoch=args.steps,
        device=str(device),
        amp="bf16" if cuda else "off",  # bf16 autocast on CPU is slow, not the recipe's point
        channels_last=cuda,
        num_workers=workers,
        seed=0,
    )
    backbone = {"name": args.arch, "pretrained": None, "tokenizer": args.tokenizer}
    arch = {
        "backbone": backbone,
        "cardiac_clip": {"scales": args.scales, "tile": args.size, "head": args.head},
    }
    model = build_cardiac_clip(arch, seed=0)
    dataset = RandomClips(args.steps * config.batch_size, args.frames, args.size)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as own:
        work = Path(distributed.broadcast_object(own))  # one checkpoint folder: rank 0's
        result = fit(model, dataset, None, config, work, progress=False)
        distributed.barrier()  # every rank has read best.pt before rank 0 removes it
    peak_gib = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else math.nan
    batch = torch.utils.data.default_collate([dataset[i] for i in range(args.batch)])
    flops = step_flops(model, batch, config)
    if distributed.is_main():
        report(args, config, result.history, flops, peak_gib, device, world, workers)
    if cuda:
        del model
        torch.cuda.empty_cache()
    return True


def report(
    args: argparse.Namespace,
    config: TrainConfig,
    history: pd.DataFrame,
    flops: int,
    peak_gib: float,
    device: torch.device,
    world: int,
    workers: int,
) -> None:
    measured = history.iloc[-1]
    step_s = measured["train_seconds"] / args.steps
    frames_s = measured["clips_per_s"] * args.frames
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    peak = args.peak_tflops or (H100_BF16_DENSE_TFLOPS if device.type == "cuda" else None)
    mfu = flops / step_s / (peak * 1e12) if peak else math.nan
    print(
        f"device        {name or device.type} x {world} ({device.type}, torch {torch.__version__})"
    )
    print(
        f"recipe        {args.backbone}: {args.arch}, {args.head} head, scales {args.scales}, "
        f"{args.frames} frames of "
        f"{args.size} px, batch {args.batch}/process (global {config.batch_size}), "
        f"amp {config.amp}, channels_last {config.channels_last}, {workers} loader workers"
    )
    print(f"steps         {args.steps} measured after {args.steps} warm-up")
    print(
        f"step time     {1000 * step_s:.1f} ms (warm-up epoch {1000 * history.iloc[0]['train_seconds'] / args.steps:.1f} ms)"
    )
    print(f"frames/s      {frames_s:.1f} (all processes; {measured['clips_per_s']:.2f} clips/s)")
    print(f"data wait     {100 * measured['data_wait_share']:.1f} % of step time")
    print(
        f"peak memory   {peak_gib:.2f} GiB per GPU"
        if device.type == "cuda"
        else "peak memory   n/a (CPU)"
    )
    print(f"FLOPs/step    {flops / 1e12:.3f} TFLOP per process (forward + backward)")
    if peak:
        print(f"MFU           {100 * mfu:.1f} % of {peak:.0f} TFLOP/s bf16 per device")
    else:
        print("MFU           n/a on CPU (pass --peak-tflops to compare)")
    print(f"final loss    {measured['train_loss']:.4f}")


if __name__ == "__main__":
    start = time.perf_counter()
    if main():
        print(f"wall          {time.perf_counter() - start:.1f} s")
