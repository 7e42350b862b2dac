"""Data-parallel training on PyTorch's own engine: ``torchrun`` starts one process per device,
``torch.distributed`` connects them (gloo on CPU, NCCL on GPU).

Each process holds the whole (decoded) dataset and the frozen teacher, draws the same per-epoch
permutation from the (seed, epoch) generator and takes its own strided share of it, as
``torch.utils.data.DistributedSampler`` does. The student is wrapped in
``DistributedDataParallel``, which averages gradients, so one step of N processes with
``batch_size`` images each equals one step of one process with ``N * batch_size`` images (when the
loss is a batch mean). Only rank 0 writes files. Every rank validates the whole validation
split with the same weights, so all ranks compute the same metrics and take the same decisions
without exchanging them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 when not distributed)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def current() -> World:
    """The world as initialized by :func:`session` (a single process otherwise)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


@contextmanager
def session() -> Iterator[World]:
    """Join the process group when started by torchrun (rank and addresses from its environment
    variables), leave it at the end; without torchrun, a world of one and nothing to join."""
    if not launched_by_torchrun() or dist.is_initialized():
        yield current()
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        yield current()
    finally:
        dist.destroy_process_group()


def shard(order: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's share of ``order``: padded by repeating its head to a multiple of the world
    size, then every ``size``-th element from ``rank`` (DistributedSampler's semantics). Step i of
    rank r then holds the images of a single process's step i at ``size`` times the batch."""
    per_rank = math.ceil(len(order) / world.size)
    padding = per_rank * world.size - len(order)
    if padding:
        order = torch.cat([order, order[:padding]])
    return order[world.rank::world.size]


def shard_size(count: int, world: World) -> int:
    return math.ceil(count / world.size)


def wrap_student(model: nn.Module, world: World) -> nn.Module:
    """DistributedDataParallel around the student (the teacher is never wrapped: it does not
    train, and every rank holds its own frozen copy). On CUDA, BatchNorm becomes SyncBatchNorm so
    batch statistics cover the global batch; on CPU (gloo) SyncBatchNorm is not available and each
    process normalizes with its own ``batch_size`` images."""
    if not world.active:
        return model
    if next(model.parameters()).is_cuda:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return nn.parallel.DistributedDataParallel(model, device_ids=[world.local_rank])
    return nn.parallel.DistributedDataParallel(model)


def sum_across(values: list[float], world: World) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (float64, so counts stay exact)."""
    if not world.active:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_true(flag: bool, world: World) -> bool:
    """True on every rank only when ``flag`` is True on every rank (keeps ranks in step when one
    of them has to stop, e.g. on a NaN loss)."""
    return sum_across([0.0 if flag else 1.0], world)[0] == 0.0


@contextmanager
def main_first(world: World) -> Iterator[None]:
    """Rank 0 runs the block first (decoding images, computing teacher outputs: it fills the disk
    caches), the other ranks after it (reading them), so shared caches are built once. If rank 0
    fails inside, the others are released and torchrun stops the job."""
    if not world.is_main:
        barrier(world)
    try:
        yield
    finally:
        if world.is_main:
            barrier(world)


def barrier(world: World) -> None:
    if world.active:
        dist.barrier()


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
