"""Data-parallel fit: two gloo processes on CPU train like one process with the same global batch."""

from __future__ import annotations

import importlib
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from cardiac_pipeline.model import distributed
from cardiac_pipeline.model.losses import text_to_video_kl
from cardiac_pipeline.model.train import TrainConfig, fit
from tests.conftest import loop_config
from tests.model.test_train import (
    BIN_EDGES,
    LRS,
    FakeClipModel,
    ToyEchoDataset,
    fake_loss,
    fake_param_groups,
)


def batch_loss(output, ef_target, **weights):
    """The toy loss plus CardiacCLIP's text-to-video KL: a softmax over the batch's videos,
    so a process's shard alone would give another loss than the global batch."""
    loss, parts = fake_loss(output, ef_target, **weights)
    kl = text_to_video_kl(output.logits.float(), torch.bucketize(ef_target, BIN_EDGES))
    return loss + kl, {**parts, "kl": float(kl.detach())}


# (name, config overrides): plain steps, and accumulated windows with clipping (DDP's no_sync)
RUNS = {
    "plain": {"batch_size": 4},
    "accumulated": {"batch_size": 2, "grad_accum_steps": 2, "max_grad_norm": 0.5},
}


def _config(**overrides) -> TrainConfig:
    base = {"epochs": 2, "lrs": dict(LRS), "seed": 3, "device": "cpu", "num_workers": 0}
    base.update({"batch_size": 2, "select_start": False, "max_batches_per_epoch": None})
    return loop_config(**{**base, **overrides})


def _fit(out: Path, config: TrainConfig) -> tuple[dict[str, torch.Tensor], list[int], object]:
    torch.manual_seed(0)
    model = FakeClipModel(dropout=0.0)  # dropout masks differ per process: off for equality
    calls: list[int] = []
    result = fit(
        model,
        ToyEchoDataset(8, mode="train"),
        ToyEchoDataset(4, mode="eval", data_seed=1),
        config,
        out,
        loss_fn=batch_loss,
        param_groups_fn=fake_param_groups,
        on_epoch_end=lambda epoch, metrics: calls.append(epoch),
        progress=False,
    )
    return model.state_dict(), calls, result


def _worker(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "GLOO_SOCKET_IFNAME": "lo",
        }
    )
    torch.set_num_threads(1)
    assert distributed.init_from_env("cpu")
    try:
        for name, overrides in RUNS.items():
            state, calls, result = _fit(Path(root) / name, _config(**overrides))
            report = {"state": state, "calls": calls, "val_mae": result.history["val_mae"].tolist()}
            torch.save(report, Path(root) / f"{name}-rank{rank}.pt")
        # a 2-process run stopped after epoch 1 and resumed, against one run straight through
        whole = _config(batch_size=4, schedule_epochs=2)
        straight, _, _ = _fit(Path(root) / "straight", whole)
        _fit(Path(root) / "resumed", _config(batch_size=4, epochs=1, schedule_epochs=2))
        resumed, calls, _ = _fit(Path(root) / "resumed", whole)
        torch.save(
            {"straight": straight, "resumed": resumed, "calls": calls},
            Path(root) / f"resume-rank{rank}.pt",
        )
    finally:
        distributed.shutdown()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs the gloo backend")
def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: no thread contention on a small machine
    try:
        alone = {name: _fit(tmp_path / "alone" / name, _config(**o)) for name, o in RUNS.items()}
    finally:
        torch.set_num_threads(threads)
    ddp = tmp_path / "ddp"
    # fork: the workers inherit the imports (DDP's torch._dynamo too), so they start at once
    importlib.import_module("torch._dynamo")
    mp.start_processes(
        _worker, args=(2, _free_port(), str(ddp)), nprocs=2, join=True, start_method="fork"
    )

    for name, (state, calls, result) in alone.items():
        saved = torch.load(ddp / name / "last.pt", weights_only=True)
        ranks = [torch.load(ddp / f"{name}-rank{r}.pt", weights_only=True) for r in (0, 1)]
        for key, value in state.items():
            # equal up to float rounding of the split sums, which Adam's division by the
            # gradients' own scale can magnify on near-zero gradients; a wrong shard, a
            # missing average or another data order moves weights by ~lr = 5e-2 per step
            torch.testing.assert_close(saved["model"][key], value, rtol=1e-3, atol=1e-4)
            # every rank returns the same (best) weights
            torch.testing.assert_close(ranks[1]["state"][key], ranks[0]["state"][key])
        assert saved["history"]["epoch"] == [1, 2] and len(ranks[0]["val_mae"]) == 2
        torch.testing.assert_close(
            torch.tensor(saved["history"]["train_loss"]),
            torch.tensor(result.history["train_loss"].tolist()),
            rtol=1e-4,
            atol=1e-6,
        )
        torch.testing.assert_close(
            torch.tensor(ranks[1]["val_mae"]), torch.tensor(result.history["val_mae"].tolist())
        )
        assert len(saved["rng_ranks"]) == 2  # each rank's random streams, for resuming
        # only rank 0 reports epochs (MLflow, logs)
        assert ranks[0]["calls"] == calls == [1, 2] and ranks[1]["calls"] == []

    for rank in (0, 1):
        resume = torch.load(ddp / f"resume-rank{rank}.pt", weights_only=True)
        assert resume["calls"] == ([2] if rank == 0 else [])  # only epoch 2 ran again
        for key, value in resume["straight"].items():
            torch.testing.assert_close(resume["resumed"][key], value)


def test_shards_of_a_step_make_the_one_process_batch() -> None:
    dataset = list(range(10))
    alone = distributed.EpochSampler(dataset, seed=5)
    alone.set_epoch(3)
    order = list(alone)
    # the order a shuffling DataLoader drew from the same seeded generator (earlier runs)
    generator = torch.Generator()
    generator.manual_seed(distributed.epoch_seed(5, 3))
    loader = DataLoader(dataset, batch_size=1, shuffle=True, generator=generator)
    assert order == [int(x) for x in loader]
    assert sorted(order) == dataset

    shards = []
    for rank in (0, 1):
        sampler = distributed.EpochSampler(dataset, seed=5, num_replicas=2, rank=rank)
        sampler.set_epoch(3)
        shards.append(list(sampler))
    for step in range(len(shards[0]) // 2):  # per-process batches of 2: global batches of 4
        together = shards[0][2 * step : 2 * step + 2] + shards[1][2 * step : 2 * step + 2]
        assert sorted(together) == sorted(order[4 * step : 4 * step + 4])
    other = distributed.EpochSampler(dataset, seed=5)
    other.set_epoch(4)
    assert list(other) != order


def test_single_process_helpers_are_no_ops() -> None:
    assert not distributed.is_active() and distributed.is_main()
    assert distributed.world_size() == 1 and distributed.per_process_batch(3) == 3
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    model = torch.nn.Linear(2, 1)
    assert distributed.wrap(model, torch.device("cpu")) is model
    assert not distributed.init_from_env("cpu")  # no WORLD_SIZE: nothing to join
