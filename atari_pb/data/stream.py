"""`ShardStream`: a torch IterableDataset of batches for DataLoader workers and DDP ranks.

Step s of the stream is a global batch drawn with seed (seed, s); DDP rank r of W takes its disjoint
slice [r*B/W, (r+1)*B/W) of that batch, and DataLoader worker w of N serves the steps s = w, w+N, ...
(the DataLoader hands them back in step order). So the data of a run depends only on (seed, step): a
resumed run continues with `start_step`, and a W-rank run sees exactly the batches of a 1-rank run with
the same global batch size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from atari_pb.data.sampler import ShardSet
from atari_pb.errors import UsageError


@dataclass
class SampleSpec:
    """What an objective asks the sampler for (Atari-PB's frame / t_step / n_step / gamma)."""

    frames: int = 4
    t_step: int = 1
    n_step: int = 1
    gamma: float = 0.99
    random_future: bool = False
    extra_offsets: list[int] = field(default_factory=list)


class ShardStream(IterableDataset):
    def __init__(
        self,
        shards: ShardSet,
        global_batch_size: int,
        spec: SampleSpec,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
        num_steps: int | None = None,
    ):
        if global_batch_size % world_size:
            raise UsageError(f"batch size {global_batch_size} is not divisible by {world_size} ranks")
        if not 0 <= rank < world_size:
            raise UsageError(f"rank {rank} is outside 0..{world_size - 1}")
        self.shards = shards
        self.global_batch_size = global_batch_size
        self.spec = spec
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_step = start_step
        self.num_steps = num_steps

    def batch_at(self, step: int) -> dict[str, torch.Tensor]:
        """This rank's part of global batch `step`."""
        s = self.spec
        draw = self.shards.draw(
            self.global_batch_size,
            frames=s.frames,
            t_step=s.t_step,
            n_step=s.n_step,
            seed=(self.seed, step),
            random_future=s.random_future,
        )
        per_rank = self.global_batch_size // self.world_size
        mine = draw.take(slice(self.rank * per_rank, (self.rank + 1) * per_rank))
        return self.shards.gather(
            mine, frames=s.frames, t_step=s.t_step, gamma=s.gamma, extra_offsets=s.extra_offsets
        )

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        step = self.start_step + worker
        end = None if self.num_steps is None else self.start_step + self.num_steps
        while end is None or step < end:
            yield self.batch_at(step)
            step += workers


def make_loader(stream: ShardStream, num_workers: int = 2, pin_memory: bool = False) -> DataLoader:
    """Batches are built whole by the stream (batch_size=None); workers prefetch ahead of the trainer."""
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
    )


def spec_fields(spec: SampleSpec) -> Sequence[str]:
    """The batch fields a spec produces (for documentation and checks)."""
    fields = ["obs", "next_obs", "action", "reward", "ret", "done", "rtg", "game_id", "offset", "index"]
    return fields + (["extra_obs", "extra_done"] if spec.extra_offsets else [])
