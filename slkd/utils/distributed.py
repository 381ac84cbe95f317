"""Process-group set-up for torchrun (NCCL on GPUs, gloo on CPUs) and small collectives."""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: ``rank`` of ``world_size``, on ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Launched by torchrun, in a process group (also with a single process)."""
        return dist.is_available() and dist.is_initialized()


def launched_by_torchrun() -> bool:
    """torchrun (and torch.distributed.run) set these for every process it starts."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def init(device_type: str) -> DistContext:
    """Join the process group torchrun prepared (even a group of one, so that
    ``torchrun --nproc_per_node=1`` runs the DistributedDataParallel path), or run as a
    plain single process.

    ``device_type`` is ``"cuda"`` or ``"cpu"``; each CUDA process uses GPU ``LOCAL_RANK``.
    """
    if not launched_by_torchrun():
        device = torch.device("cuda", torch.cuda.current_device()) if device_type == "cuda" else torch.device("cpu")
        return DistContext(device=device)
    rank, world, local = (int(os.environ[name]) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if device_type == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistContext(rank=rank, world_size=world, local_rank=local, device=device)


def all_reduce_sum(tensor: torch.Tensor, context: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over processes in place (a no-op in one process)."""
    if context.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shutdown() -> None:
    """Leave the process group, once the objects that refer to it are gone.

    Garbage is collected first: a DDP wrapper kept alive only by reference cycles would
    otherwise free its reducer, and with it the group, after the group is unregistered, with
    the GIL held (see :func:`slkd.host.ddp.unwrap_student`)."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
