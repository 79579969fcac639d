"""Torch dataset and loader over the clip store.

Items stay **uint8** all the way to the device: conversion to float and the backbone's
mean/std normalisation happen on the device inside the model, so the host-to-device copy
moves 4x fewer bytes and the store needs no per-backbone variant. Grey entries have one
channel; the model expands them to three on the device.

The EchoZoom pyramid (scale-2 view: frame upsampled to 2x, cut into 2x2 tiles of the base
size) is built on the fly on the device, not cached: caching it would store 5x the pixels
(4 tiles + base) per frame, while an upsample and a crop cost next to nothing on the device.

Randomness is deterministic: item ``i`` in epoch ``e`` draws from a generator seeded with
``(seed, e, i)``, whatever worker or order it is loaded in. Call ``set_epoch(e)`` before
each epoch; with ``num_workers > 0`` the loader must not use persistent workers (the
workers' dataset copies would keep the old epoch), which ``make_loader`` ensures.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from cardiac_pipeline.echo.clips import (
    ClipSpec,
    clip_at,
    eval_clip_starts,
    pad_and_random_crop,
    random_clip_start,
)
from cardiac_pipeline.echo.clipstore import ClipStore


class EchoClipDataset(Dataset):
    """Clips of the videos in ``table`` (columns ``FileName``, ``EF``) read from ``store``.

    train=True: one random clip per item, ``clip`` is ``(T, C, H, W)`` uint8, augmented by
    ``pad_and_random_crop(augment_pad)`` when ``augment_pad`` > 0. train=False: the
    ``n_eval_clips`` test-time clips (int, or ``"all"`` non-overlapping: use batch size 1,
    counts differ between videos), ``clip`` is ``(N, T, C, H, W)``, no augmentation.
    Items: ``dict(clip, ef (float32 scalar), file_name, start)`` where ``start`` holds the
    clip start frame(s), to map MFL attention back to video time.
    """

    def __init__(
        self,
        store: ClipStore,
        table: pd.DataFrame,
        spec: ClipSpec,
        train: bool,
        n_eval_clips: int | Literal["all"] = 1,
        seed: int = 0,
        augment_pad: int = 12,
    ) -> None:
        missing = {"FileName", "EF"} - set(table.columns)
        if missing:
            raise ValueError(f"dataset table lacks columns {sorted(missing)}")
        self.store = store
        self.file_names = table["FileName"].astype(str).tolist()
        self.ejection_fraction = table["EF"].to_numpy(dtype=np.float32)
        if np.isnan(self.ejection_fraction).any():
            bad = [
                n
                for n, ef in zip(self.file_names, self.ejection_fraction, strict=True)
                if np.isnan(ef)
            ]
            raise ValueError(f"videos without EF: {bad[:10]}")
        absent = [n for n in self.file_names if n not in store]
        if absent:
            raise ValueError(f"{len(absent)} videos not in clip store {store.root}: {absent[:10]}")
        self.spec = spec
        self.train = train
        self.n_eval_clips = n_eval_clips
        self.seed = seed
        self.augment_pad = augment_pad
        self.epoch = 0

    def eval_identity(self) -> dict[str, Any]:
        """What decides an eval dataset's items (no randomness there): a cache-key part."""
        if self.train:
            raise ValueError("training items are drawn at random; only eval datasets qualify")
        return {
            "store": str(self.store.root),
            "files": self.file_names,
            "ef": [float(ef) for ef in self.ejection_fraction],
            "spec": dataclasses.asdict(self.spec),
            "n_eval_clips": self.n_eval_clips,
        }

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random clips and crops the next items draw."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.file_names)

    def __getitem__(self, i: int) -> dict[str, Any]:
        name = self.file_names[i]
        video = self.store.load(name, mmap=True)
        fps = self.store.entry(name).get("fps")
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            start = random_clip_start(video.shape[0], self.spec, rng, fps)
            clip = clip_at(video, start, self.spec, fps)
            if self.augment_pad:
                clip = pad_and_random_crop(clip, self.augment_pad, rng=rng)
            start = torch.tensor(start)
        else:
            starts = eval_clip_starts(video.shape[0], self.spec, self.n_eval_clips, fps)
            clip = np.stack([clip_at(video, int(s), self.spec, fps) for s in starts])
            start = torch.from_numpy(starts)
        return {
            "clip": torch.from_numpy(np.ascontiguousarray(clip)),
            "ef": torch.tensor(self.ejection_fraction[i], dtype=torch.float32),
            "file_name": name,
            "start": start,
        }


def make_loader(
    dataset: EchoClipDataset,
    *,
    batch_size: int,
    shuffle: bool | None = None,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader whose shuffling is fixed by ``seed`` (shuffles when training by default).

    Iterating the same loader again gives the next epoch's order (the generator advances),
    reproducibly from ``seed``; set the dataset's epoch too (``dataset.set_epoch``).
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=dataset.train if shuffle is None else shuffle,
        num_workers=num_workers,
        generator=generator,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
