"""torchrun-launched data parallelism: process group set-up, and the all-gather contrastive losses need.

On CPU the backend is gloo, on GPU nccl. Without torchrun's environment everything here is a no-op, so
single-process code paths are the same code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join torchrun's process group when launched by torchrun; otherwise a world of one."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def world() -> tuple[int, int]:
    """(rank, world size) of this process."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_keys(x: torch.Tensor) -> torch.Tensor:
    """Concatenate a (B, ...) tensor over all ranks, in rank order, without gradient (contrastive keys)."""
    rank, size = world()
    if size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts)


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, keeping no gradient; the tensor itself without DDP."""
    _, size = world()
    if size == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x


def all_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (metrics); the tensor itself without DDP."""
    return all_sum(x) / world()[1]


def finish_distributed() -> None:
    """Leave torchrun's process group once a run is done: every rank waits for the others, then the group is
    destroyed (a rank that exits inside it can abort while gloo's threads are torn down: "terminate called
    without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
