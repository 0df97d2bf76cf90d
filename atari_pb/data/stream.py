"""`ShardStream`: batches for training loops, DataLoader workers and DDP ranks.

Step s of the stream is a global batch drawn with seed (seed, s); DDP rank r of W takes its disjoint
slice [r*B/W, (r+1)*B/W) of that batch, and with gradient accumulation over A micro-batches, item
i = s*A + m of the stream is part m of that slice. DataLoader worker w of N serves the items i = w, w+N, ...
(the DataLoader hands them back in order). So the data of a run depends only on (seed, step): a resumed
run continues with `start_step`, and W ranks, or A micro-batches, see exactly the batch of one process
with the same global batch size.

`make_loader` prefetches with threads by default: a batch is mostly numpy copies, which release the GIL,
and handing a 14 MB batch from a worker process to the trainer (through shared memory) costs more than
building it (BENCHMARKS.md). DataLoader worker processes remain available (`processes=True`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice

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
        accumulate: int = 1,
        start_step: int = 0,
        num_steps: int | None = None,
    ):
        """`start_step` and `num_steps` count stream items (micro-batches when accumulate > 1)."""
        if global_batch_size % (world_size * accumulate):
            raise UsageError(
                f"batch size {global_batch_size} does not split into {world_size} ranks x {accumulate} micro-batches"
            )
        if not 0 <= rank < world_size:
            raise UsageError(f"rank {rank} is outside 0..{world_size - 1}")
        self.shards = shards
        self.global_batch_size = global_batch_size
        self.spec = spec
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.accumulate = accumulate
        self.start_step = start_step
        self.num_steps = num_steps

    def rows(self, item: int) -> slice:
        """The rows of its step's global batch that stream item `item` holds on this rank."""
        size = self.global_batch_size // (self.world_size * self.accumulate)
        first = (self.rank * self.accumulate + item % self.accumulate) * size
        return slice(first, first + size)

    def batch_at(self, item: int) -> dict[str, torch.Tensor]:
        """This rank's part (micro-batch `item % accumulate`) of global batch `item // accumulate`."""
        s = self.spec
        draw = self.shards.draw(
            self.global_batch_size,
            frames=s.frames,
            t_step=s.t_step,
            n_step=s.n_step,
            seed=(self.seed, item // self.accumulate),
            random_future=s.random_future,
        )
        return self.shards.gather(
            draw.take(self.rows(item)),
            frames=s.frames,
            t_step=s.t_step,
            gamma=s.gamma,
            extra_offsets=s.extra_offsets,
        )

    def steps(self, worker: int = 0, workers: int = 1) -> Iterator[int]:
        """The steps this stream serves, start_step onwards; worker w of N takes every N-th."""
        end = None if self.num_steps is None else self.start_step + self.num_steps
        step = self.start_step + worker
        while end is None or step < end:
            yield step
            step += workers

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for step in self.steps(worker, workers):
            yield self.batch_at(step)


class PrefetchLoader:
    """Builds the next `prefetch` batches of a stream in background threads; yields them in step order."""

    def __init__(self, stream: ShardStream, threads: int = 2, prefetch: int = 4, pin_memory: bool = False):
        self.stream = stream
        self.threads = max(1, threads)
        self.prefetch = max(1, prefetch)
        self.pin_memory = pin_memory and torch.cuda.is_available()

    def _load(self, step: int) -> dict[str, torch.Tensor]:
        batch = self.stream.batch_at(step)
        if self.pin_memory:
            batch = {k: v.pin_memory() for k, v in batch.items()}
        return batch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        steps = self.stream.steps()
        with ThreadPoolExecutor(self.threads, thread_name_prefix="shard-prefetch") as pool:
            queue = deque(pool.submit(self._load, s) for s in islice(steps, self.prefetch))
            try:
                while queue:
                    batch = queue.popleft().result()
                    for s in islice(steps, 1):
                        queue.append(pool.submit(self._load, s))
                    yield batch
            finally:
                for fut in queue:
                    fut.cancel()


def make_loader(
    stream: ShardStream, num_workers: int = 2, pin_memory: bool = False, processes: bool = False
) -> Iterable[dict[str, torch.Tensor]]:
    """An iterable of the stream's batches in step order, built ahead of the trainer by `num_workers`
    threads (or DataLoader worker processes with `processes=True`; 0 builds them inline)."""
    if not processes:
        if num_workers == 0:
            return stream
        return PrefetchLoader(stream, threads=num_workers, prefetch=2 * num_workers, pin_memory=pin_memory)
    return DataLoader(
        stream,
        batch_size=None,  # the stream builds whole batches
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=4 if num_workers > 0 else None,
    )
