"""Data-parallel training across processes: torchrun + DistributedDataParallel (torch only).

``torchrun --nproc_per_node=N`` starts one process per GPU and describes the group in the
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``);
``init_from_env`` joins it (NCCL on CUDA, gloo on CPU). ``train.fit`` then runs the same loop
in every process: each takes its shard of every global batch (``EpochSampler``), the model
is wrapped in DDP (gradients averaged over processes), and rank 0 alone validates, writes
checkpoints and calls the epoch callback (MLflow). A single process is the group of one:
every helper here is then a no-op, so one code path serves both.

The global batch (``TrainConfig.batch_size``) is split over the processes, so a recipe gives
the same optimisation on any number of GPUs: the processes' shards of one step make the
one-process batch, and the loss is computed on that whole batch (``gather_batch`` joins the
model outputs), so batch-level terms such as CardiacCLIP's text-to-video KL (a softmax
over the batch's videos) see the same videos as in one process. The result equals one
process's up to float rounding when the batch divides the training set and the model has
no dropout (each process draws its own masks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

from cardiac_pipeline.errors import UserError

# validation runs on rank 0 while the others wait in a collective: allow it time
DEFAULT_TIMEOUT = timedelta(minutes=60)


def is_active() -> bool:
    """Whether this process belongs to a process group of more than one."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_active() else 0


def world_size() -> int:
    return dist.get_world_size() if is_active() else 1


def launch_rank() -> int:
    """This process's rank as the launcher set it (torchrun's ``RANK``; 0 alone), before or
    without a process group: who reports an error found before the group is joined."""
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Rank 0: the process that validates, writes files and logs."""
    return rank() == 0


def local_rank() -> int:
    """This process's GPU on its machine (torchrun's ``LOCAL_RANK``)."""
    return int(os.environ.get("LOCAL_RANK", "0")) if is_active() else 0


def init_from_env(device: str = "auto", timeout: timedelta = DEFAULT_TIMEOUT) -> bool:
    """Join the process group torchrun describes; False (nothing done) when run alone.

    On CUDA each process takes GPU ``LOCAL_RANK`` and the NCCL backend; ``device="cpu"`` or
    a machine without CUDA uses gloo.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if dist.is_initialized():
        return True
    use_cuda = torch.cuda.is_available() and not str(device).startswith("cpu")
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout)
    return True


def shutdown() -> None:
    """Leave the process group (at the end of a torchrun command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_active():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (picklable objects)."""
    if not is_active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not is_active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_batch(value: Any) -> Any:
    """``value`` joined over the processes along the batch (dim 0), in rank order.

    A tensor, or a dataclass of tensors (the model's output; other fields kept as they
    are). This process's part keeps its autograd graph, the others' come without: the
    gradient of a loss on the result, times the number of processes, then averaged by DDP,
    is the gradient of that loss on the global batch. Every process's batch must have the
    same size (``EpochSampler`` pads the epoch so that they do).
    """
    if not is_active():
        return value
    if isinstance(value, torch.Tensor):
        parts = [torch.empty_like(value) for _ in range(world_size())]
        dist.all_gather(parts, value.detach().contiguous())
        parts[rank()] = value
        return torch.cat(parts)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        joined = {
            f.name: gather_batch(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if isinstance(getattr(value, f.name), torch.Tensor)
        }
        return dataclasses.replace(value, **joined)
    raise TypeError(
        f"cannot gather a {type(value).__name__} over processes: the model must return a "
        "tensor or a dataclass of tensors"
    )


def per_process_batch(global_batch: int) -> int:
    """This process's share of a global batch; it must divide evenly."""
    world = world_size()
    if global_batch % world:
        raise UserError(
            f"global batch {global_batch} (training.batch_size, or training.cached.batch_size "
            f"in the cached stage) must be divisible by the {world} processes (torchrun "
            f"--nproc_per_node); use a multiple of {world}"
        )
    return global_batch // world


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DDP when in a group, else ``model`` itself (same parameters either way)."""
    if not is_active():
        return model
    ids = [device.index if device.index is not None else local_rank()]
    return DistributedDataParallel(model, device_ids=ids if device.type == "cuda" else None)


def no_sync(model: nn.Module, skip_sync: bool) -> contextlib.AbstractContextManager[Any]:
    """Skip the gradient all-reduce of a micro-batch that does not end its accumulation window."""
    if skip_sync and isinstance(model, DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def epoch_seed(seed: int, epoch: int) -> int:
    """Independent seed per (run seed, epoch), so epoch k's data order needs no history."""
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, np.uint64)[0] >> 1)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The training order of epoch ``epoch``: a permutation of ``range(n)`` fixed by the seed.

    It is the order a ``DataLoader(shuffle=True)`` draws from a generator seeded with
    ``epoch_seed`` (that loader takes its workers' base seed from the generator first), the
    loader every earlier run of this project used, so they keep their data order.
    """
    generator = torch.Generator()
    generator.manual_seed(epoch_seed(seed, epoch))
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    return torch.randperm(n, generator=generator).tolist()


class EpochSampler(DistributedSampler):
    """This process's share of ``epoch_order``: every ``num_replicas``-th index from ``rank``.

    With per-process batches of b, step j of every process together covers positions
    ``[j*b*W, (j+1)*b*W)`` of the epoch's order: the one-process batch of b*W. As in
    ``DistributedSampler``, the order is padded with its first indices to a multiple of W.
    ``set_epoch`` selects the epoch (also for a single process).
    """

    def __init__(self, dataset: Dataset, *, seed: int, num_replicas: int = 1, rank: int = 0):
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False
        )

    def __iter__(self) -> Iterator[int]:
        order = epoch_order(len(self.dataset), self.seed, self.epoch)  # type: ignore[arg-type]
        pad = self.total_size - len(order)
        if pad > 0:
            order += (order * math.ceil(pad / len(order)))[:pad]
        return iter(order[self.rank : self.total_size : self.num_replicas])
