import numpy as np
import pandas as pd
import pytest
import torch

from cardiac_pipeline.echo.clips import ClipSpec, clip_at, eval_clip_starts
from cardiac_pipeline.echo.clipstore import ClipStore, build_clip_store
from cardiac_pipeline.echo.video import write_video
from cardiac_pipeline.model.data import EchoClipDataset, make_loader

SIZE = 32
SPEC = ClipSpec(frames=6, period=2)


@pytest.fixture(scope="module")
def store_and_table(tmp_path_factory):
    """Three grey videos; frame i of each is a flat image of value 4 * i (+ video offset)."""
    tmp = tmp_path_factory.mktemp("data")
    rows = []
    for v, num_frames in enumerate([40, 30, 7]):  # the last is shorter than one clip (11)
        values = (4 * np.arange(num_frames) + v).astype(np.uint8)
        frames = np.broadcast_to(values[:, None, None], (num_frames, SIZE, SIZE)).copy()
        path = tmp / "Videos" / f"V{v}.avi"
        write_video(path, frames, fps=50.0)
        rows.append({"FileName": f"V{v}", "path": str(path), "FPS": 50.0, "EF": 30.0 + 10 * v})
    table = pd.DataFrame(rows)
    build_clip_store(table, tmp / "store", size=SIZE, workers=1, progress=False)
    return ClipStore(tmp / "store"), table


def test_training_item_is_uint8_clip_with_frame_spacing(store_and_table):
    store, table = store_and_table
    data = EchoClipDataset(store, table, SPEC, train=True, seed=0, augment_pad=4)
    item = data[0]
    assert item["clip"].shape == (6, 1, SIZE, SIZE)
    assert item["clip"].dtype == torch.uint8
    assert item["ef"].dtype == torch.float32 and item["ef"].item() == 30.0
    assert item["file_name"] == "V0"
    centre = item["clip"][:, 0, SIZE // 2, SIZE // 2].int()  # inside the image for any shift
    assert torch.all((centre.diff() - 8).abs() <= 2)  # every 2nd frame, 4 levels apart (MJPG)
    assert abs(centre[0].item() - 4 * item["start"].item()) <= 2
    short = data[2]["clip"][:, 0, SIZE // 2, SIZE // 2]
    assert short[4:].eq(0).all() and short[:4].gt(0).all()  # 7 frames: 4 taken, then zeros


def test_items_are_deterministic_per_seed_epoch_and_index(store_and_table):
    store, table = store_and_table
    a = EchoClipDataset(store, table, SPEC, train=True, seed=1)
    b = EchoClipDataset(store, table, SPEC, train=True, seed=1)
    assert torch.equal(a[0]["clip"], b[0]["clip"])
    draws = set()
    for epoch in range(6):
        a.set_epoch(epoch)
        draws.add((a[0]["start"].item(), a[0]["clip"].sum().item()))
    assert len(draws) > 1  # epochs draw other clips / crops
    c = EchoClipDataset(store, table, SPEC, train=True, seed=2)
    assert any(not torch.equal(a[i]["clip"], c[i]["clip"]) for i in range(2))


def test_eval_item_stacks_the_test_time_clips_without_augmentation(store_and_table):
    store, table = store_and_table
    data = EchoClipDataset(store, table, SPEC, train=False, n_eval_clips=3, augment_pad=12)
    item = data[0]
    assert item["clip"].shape == (3, 6, 1, SIZE, SIZE)
    video = store.load("V0")
    starts = eval_clip_starts(video.shape[0], SPEC, 3)
    assert item["start"].tolist() == starts.tolist()
    for clip, start in zip(item["clip"], starts, strict=True):
        np.testing.assert_array_equal(clip.numpy(), clip_at(video, int(start), SPEC))
    every = EchoClipDataset(store, table, SPEC, train=False, n_eval_clips="all")
    assert every[0]["clip"].shape[0] == 3  # 40 frames, span 11: starts 0, 11, 22


def test_loader_is_seeded_and_workers_do_not_change_batches(store_and_table):
    store, table = store_and_table
    data = EchoClipDataset(store, table, SPEC, train=True, seed=0)

    def epoch_batches(num_workers):
        loader = make_loader(data, batch_size=2, seed=7, num_workers=num_workers)
        return [batch for batch in loader]

    serial, parallel = epoch_batches(0), epoch_batches(2)
    assert serial[0]["clip"].shape == (2, 6, 1, SIZE, SIZE)
    assert [b["file_name"] for b in serial] == [b["file_name"] for b in parallel]
    for x, y in zip(serial, parallel, strict=True):
        assert torch.equal(x["clip"], y["clip"])
    orders = {
        tuple(n for b in make_loader(data, batch_size=3, seed=s) for n in b["file_name"])
        for s in range(8)
    }
    assert len(orders) > 1


def test_unknown_or_unlabelled_videos_are_refused(store_and_table):
    store, table = store_and_table
    with pytest.raises(ValueError, match="not in clip store.*NOPE"):
        EchoClipDataset(store, pd.DataFrame({"FileName": ["NOPE"], "EF": [50.0]}), SPEC, True)
    with pytest.raises(ValueError, match="without EF"):
        EchoClipDataset(store, table.assign(EF=np.nan), SPEC, True)
