"""Data parallelism across processes started by `torchrun`, and the device each process computes on:
one object, no global state of ours.

Outside torchrun (no WORLD_SIZE in the environment) everything is a single process and the
collectives are no-ops, so the same code path serves one process and many. On GPUs each process takes
the GPU of its LOCAL_RANK and the processes talk over NCCL; on the CPU over gloo.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

from handheld.core.errors import HandheldError


DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")  # where this process keeps the model, batches and rotations

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This process's rows of a global batch (rows rank, rank + world, ...)."""
        if batch.shape[0] % self.world:
            raise HandheldError(f"the batch size {batch.shape[0]} must be a multiple of the {self.world} processes")
        return batch[self.rank :: self.world]

    def mean_(self, tensor: torch.Tensor) -> torch.Tensor:
        """In place: the mean of `tensor` over processes (each holds the mean over an equal shard)."""
        if self.world > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            tensor.div_(self.world)
        return tensor

    def gather_rows(self, mine: torch.Tensor) -> torch.Tensor:
        """Every process's `shard` rows back in global order: the inverse of `shard`, on all processes."""
        if self.world == 1:
            return mine
        parts = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(parts, mine.contiguous())
        return torch.stack(parts, dim=1).reshape(-1, *mine.shape[1:])

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def resolve_device(requested: str) -> torch.device:
    """`auto`: CUDA when torch sees a GPU, else the CPU. Under torchrun each process takes GPU LOCAL_RANK."""
    if requested not in DEVICES:
        raise HandheldError(f"unknown --device {requested!r}; known: {', '.join(DEVICES)}")
    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        raise HandheldError("--device cuda: torch sees no CUDA GPU (a CPU-only torch, or no driver); use --device cpu")
    if requested == "cpu" or not has_cuda:
        return torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if local_rank >= torch.cuda.device_count():
        raise HandheldError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s): start fewer processes")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def join_group(device: str = "cpu") -> Group:
    """The process group torchrun set up in the environment, or one process, on `device`: NCCL between
    GPUs, gloo between CPU processes."""
    where = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Group(device=where)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if where.type == "cuda" else "gloo")
    return Group(rank=dist.get_rank(), world=dist.get_world_size(), device=where)


def leave_group(group: Group) -> None:
    if group.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device: str = "cpu") -> Iterator[Group]:
    """`join_group` for the duration of a job, always left again (also on errors)."""
    group = join_group(device)
    try:
        yield group
    finally:
        leave_group(group)
