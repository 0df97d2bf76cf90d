"""`ShardSet`: uniform random batches of frame stacks, n-step returns and returns-to-go from shards.

The per-transition arrays of every shard (action, reward, terminal, ...) are concatenated in memory, a few
bytes per transition; observations stay on disk and are memory-mapped, so memory does not grow with the
dataset and the page cache decides what stays resident. A sample is addressed by its global index
g = base[k] + i (shard k, index i). See `ShardSet.sample` for the exact contract.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import h5py
import numpy as np
import torch

from atari_pb.data.manifest import ShardEntry, read_manifest
from atari_pb.data.replay_format import FRAME_SHAPE
from atari_pb.data.shard import observation_offset
from atari_pb.errors import DataError, UsageError
from atari_pb.games import get_game

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    """One shard of a ShardSet: where it is and what it holds."""

    number: int
    game: str
    run: int
    ckpt: int
    length: int
    path: Path
    game_id: int


@dataclass(frozen=True)
class Draw:
    """Which transitions a batch holds: enough to rebuild it, and to split it across ranks."""

    start: np.ndarray  # (B,) global index of each sample's first step
    offset: np.ndarray  # (B,) steps to next_obs: n_step, or uniform in 1..n_step with random_future

    def take(self, sel: slice | np.ndarray) -> Draw:
        return Draw(self.start[sel], self.offset[sel])


def _episode_starts(terminal: np.ndarray) -> np.ndarray:
    """For each index, the index where its episode (or the shard) begins."""
    starts = np.zeros(len(terminal), dtype=np.int64)
    ends = np.flatnonzero(terminal[:-1]) + 1
    starts[ends] = ends
    return np.maximum.accumulate(starts)


def _returns_to_go(reward: np.ndarray, terminal: np.ndarray) -> np.ndarray:
    """Undiscounted sum of reward from each index to the end of its episode (or of the shard)."""
    episode = np.concatenate([[0], np.cumsum(terminal[:-1])])  # episode number of each index
    totals_from = np.cumsum(reward[::-1], dtype=np.float64)[::-1]  # sum from i to the shard end
    # subtract what lies beyond the episode end: the sum from the next episode's first index on
    next_start = np.searchsorted(episode, episode, side="right")
    beyond = np.append(totals_from, 0.0)[next_start]
    return (totals_from - beyond).astype(np.float32)


class ShardSet:
    """The shards listed in `root/manifest.json`, sampled uniformly over valid starting transitions."""

    def __init__(
        self, root: str | Path, games: Sequence[str] | None = None, runs: Sequence[int] | None = None
    ):
        """`games`, `runs`: use only these games' and runs' shards (e.g. the ID games for pre-training, or
        a held-out run for validation)."""
        self.root = Path(root)
        if not self.root.is_dir():
            raise UsageError(f"shard directory {self.root} does not exist")
        entries = read_manifest(self.root)
        if not entries:
            raise DataError(
                f"{self.root}/manifest.json does not exist or lists no shards; run atari-pb ingest"
            )
        if games is not None:
            present = sorted({game for game, _, _ in entries})
            missing = [g for g in games if g not in present]
            if missing:
                raise UsageError(
                    f"{self.root} holds no shards of {', '.join(missing)}; games there: {', '.join(present)}"
                )
            entries = {key: e for key, e in entries.items() if e.game in games}
        if runs is not None:
            present_runs = sorted({run for _, run, _ in entries})
            entries = {key: e for key, e in entries.items() if e.run in runs}
            if not entries:
                raise UsageError(
                    f"{self.root} holds no shards of runs {list(runs)}; runs there: {present_runs}"
                )
        self.shards: list[Shard] = []
        for k, entry in enumerate(entries[key] for key in sorted(entries)):
            self.shards.append(self._open_shard(k, entry))
        lengths = np.array([s.length for s in self.shards], dtype=np.int64)
        self.base = np.concatenate([[0], np.cumsum(lengths)])  # global index of each shard's index 0
        self._load_scalars()
        self._offsets = [observation_offset(s.path) for s in self.shards]
        self._maps: list[np.ndarray] | None = None  # opened lazily, once per process
        self._buffers = _BufferPool()
        self._valid_cache: dict[tuple[int, int, int], np.ndarray] = {}

    def _open_shard(self, k: int, entry: ShardEntry) -> Shard:
        path = self.root / entry.path
        if not path.is_file():
            raise DataError(f"{path}: listed in the manifest but missing; run atari-pb verify {self.root}")
        if path.stat().st_size != entry.bytes:
            raise DataError(f"{path}: size differs from the manifest; run atari-pb verify {self.root}")
        try:
            game_id = get_game(entry.game).game_id
        except UsageError:
            game_id = 0  # a game outside the registry shares id 0, like the Far-OOD games
        return Shard(k, entry.game, entry.run, entry.ckpt, entry.length, path, game_id)

    def _load_scalars(self) -> None:
        n = int(self.base[-1])
        # a few bytes a transition: 22 with int32 indices (datasets under 2**31 transitions)
        index_dtype = np.int32 if n < 2**31 else np.int64
        self.action = np.empty(n, np.int32)
        self.reward = np.empty(n, np.float32)  # sign-clipped, NaN -> 0
        self.terminal = np.empty(n, np.uint8)
        self.episode_start = np.empty(n, index_dtype)  # global index where each index's episode starts
        self.rtg = np.empty(n, np.float32)
        self.shard_game_id = np.array([s.game_id for s in self.shards], dtype=np.int64)
        self.invalid = np.zeros(n, bool)
        for shard, a in zip(self.shards, self.base[:-1]):
            b = a + shard.length
            with h5py.File(shard.path, "r") as f:
                self.action[a:b] = f["action"][:]
                raw = f["reward"][:]
                terminal = f["terminal"][:]
                invalid = f["invalid_range"][:]
            if not np.isin(terminal, (0, 1)).all():
                raise DataError(f"{shard.path}: terminal holds values other than 0 and 1")
            self.reward[a:b] = np.sign(np.nan_to_num(raw, nan=0.0))
            self.terminal[a:b] = terminal
            self.episode_start[a:b] = a + _episode_starts(terminal)
            self.rtg[a:b] = _returns_to_go(self.reward[a:b], terminal)
            invalid = invalid[(invalid >= 0) & (invalid < shard.length)]
            self.invalid[a + invalid] = True

    def __len__(self) -> int:
        return int(self.base[-1])

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_maps"] = None  # memory maps are reopened in each worker process
        state["_buffers"] = _BufferPool()
        return state

    @property
    def maps(self) -> list[np.ndarray]:
        """Each shard's observations, memory-mapped once per process."""
        if self._maps is None:
            self._maps = [self._open_observations(s, off) for s, off in zip(self.shards, self._offsets)]
        return self._maps

    def _open_observations(self, shard: Shard, offset: int) -> np.ndarray:
        shape = (shard.length, *FRAME_SHAPE)
        # a plain ndarray view: slicing a np.memmap object costs more than the copy it makes
        return np.memmap(shard.path, dtype=np.uint8, mode="r", offset=offset, shape=shape).view(np.ndarray)

    @cached_property
    def games(self) -> list[str]:
        return sorted({s.game for s in self.shards})

    # ---------------------------------------------------------------- which starts are valid
    def valid_starts(self, frames: int, t_step: int, n_step: int) -> np.ndarray:
        """Global indices i with no episode end inside the sequence, room for the n-step future in the
        shard, and no index of [i-F+1, i+T-1+n] in the checkpoint's invalid range."""
        key = (frames, t_step, n_step)
        if key not in self._valid_cache:
            parts = []
            term_cum = np.concatenate([[0], np.cumsum(self.terminal, dtype=np.int64)])
            inv_cum = np.concatenate([[0], np.cumsum(self.invalid, dtype=np.int64)])
            for shard, a in zip(self.shards, self.base[:-1]):
                last = shard.length - 1 - (t_step - 1) - n_step  # last valid local start
                if last < 0:
                    continue
                g = a + np.arange(last + 1)
                ends_inside = term_cum[g + t_step - 1] - term_cum[g]  # d[m] for i <= m <= i+T-2
                lo = np.maximum(g - frames + 1, a)
                invalid_inside = inv_cum[g + t_step + n_step] - inv_cum[lo]  # [i-F+1, i+T-1+n]
                parts.append(g[(ends_inside == 0) & (invalid_inside == 0)])
            valid = np.concatenate(parts) if parts else np.empty(0, np.int64)
            valid = valid.astype(self.episode_start.dtype)  # int32 where it fits: 4 bytes a transition
            if len(valid) == 0:
                raise DataError(
                    f"{self.root}: no valid start for frames={frames} t_step={t_step} n_step={n_step} "
                    f"(shards hold {min(s.length for s in self.shards)}..{max(s.length for s in self.shards)} "
                    "transitions); ingest longer checkpoints or ask for shorter sequences"
                )
            self._valid_cache[key] = valid
        return self._valid_cache[key]

    # ---------------------------------------------------------------- drawing and gathering
    def draw(
        self,
        batch_size: int,
        *,
        frames: int = 4,
        t_step: int = 1,
        n_step: int = 1,
        seed: int | Sequence[int] | None = None,
        random_future: bool = False,
    ) -> Draw:
        """Pick `batch_size` valid starts uniformly (with replacement), deterministic in `seed`."""
        _check_args(batch_size, frames, t_step, n_step)
        if random_future and n_step < 1:
            raise UsageError("random_future needs n_step >= 1")
        rng = np.random.default_rng(seed)
        valid = self.valid_starts(frames, t_step, n_step)
        start = valid[rng.integers(0, len(valid), batch_size)]
        if random_future:
            offset = rng.integers(1, n_step + 1, batch_size)
        else:
            offset = np.full(batch_size, n_step, dtype=np.int64)
        return Draw(start, offset)

    def sample(
        self,
        batch_size: int,
        frames: int = 4,
        t_step: int = 1,
        n_step: int = 1,
        gamma: float = 0.99,
        seed: int | Sequence[int] | None = None,
        *,
        random_future: bool = False,
        extra_offsets: Sequence[int] = (),
    ) -> dict[str, torch.Tensor]:
        """A batch of `batch_size` sequences of `t_step` frame stacks of `frames` frames.

        Fields (B = batch, T = t_step, F = frames): obs, next_obs (B, T, F, 84, 84) uint8; action, reward,
        ret, done, rtg, game_id (B, T); offset (B,) steps from obs to next_obs; index (B, 2) = (shard,
        first step). With `random_future`, each sample's offset k is uniform in 1..n_step and next_obs, ret
        and done use k in place of n_step (ATC, SiamMAE). `extra_offsets` adds extra_obs (B, E, T, F, 84,
        84) and extra_done (B, E, T) at those offsets (each <= n_step), e.g. R3M's positive at +3 with
        the negative at n_step = 6.
        """
        if any(not 1 <= o <= n_step for o in extra_offsets):
            raise UsageError(f"extra_offsets {list(extra_offsets)} must lie within 1..n_step={n_step}")
        d = self.draw(
            batch_size, frames=frames, t_step=t_step, n_step=n_step, seed=seed, random_future=random_future
        )
        return self.gather(d, frames=frames, t_step=t_step, gamma=gamma, extra_offsets=extra_offsets)

    def gather(
        self,
        d: Draw,
        *,
        frames: int = 4,
        t_step: int = 1,
        gamma: float = 0.99,
        extra_offsets: Sequence[int] = (),
    ) -> dict[str, torch.Tensor]:
        """Read the drawn transitions into a batch (see `sample`)."""
        steps = d.start[:, None] + np.arange(t_step)  # (B, T) global index j of every step
        shard = np.searchsorted(self.base, d.start, side="right") - 1
        ends = [steps, steps + d.offset[:, None]] + [steps + o for o in extra_offsets]
        stacks = self._stacks(shard, ends, frames)
        batch = {
            "obs": stacks[0],
            "next_obs": stacks[1],
            "action": self.action[steps].astype(np.int64),
            "reward": self.reward[steps],
            "rtg": self.rtg[steps],
            "game_id": np.repeat(self.shard_game_id[shard][:, None], steps.shape[1], axis=1),
            "offset": d.offset.astype(np.int64),
            "index": np.stack([shard, d.start - self.base[shard]], axis=1).astype(np.int64),
        }
        batch["ret"], batch["done"] = self._n_step(steps, d.offset, gamma)
        if extra_offsets:
            batch["extra_obs"] = np.stack(stacks[2:], 1)
            batch["extra_done"] = np.stack(
                [self._n_step(steps, np.full(len(d.start), o), gamma)[1] for o in extra_offsets], 1
            )
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}

    def _n_step(self, steps: np.ndarray, offset: np.ndarray, gamma: float) -> tuple[np.ndarray, np.ndarray]:
        """ret = sum_{k<n} gamma^k r[j+k] prod_{m<k}(1-d[j+m]); done = max_{k<n} d[j+k]; n = 0: (0, d[j])."""
        n_max = int(offset.max()) if len(offset) else 0
        ret = np.zeros(steps.shape, np.float32)
        alive = np.ones(steps.shape, np.float32)
        done = np.zeros(steps.shape, np.float32)
        for k in range(n_max):
            inside = (k < offset)[:, None]
            d_k = self.terminal[steps + k].astype(np.float32)
            ret += np.where(inside, (gamma**k) * self.reward[steps + k] * alive, 0.0).astype(np.float32)
            done = np.where(inside, np.maximum(done, d_k), done)
            alive *= np.where(inside, 1.0 - d_k, 1.0).astype(np.float32)
        if n_max == 0:
            done = self.terminal[steps].astype(np.float32)
        return ret, done

    def _stacks(self, shard: np.ndarray, ends: list[np.ndarray], frames: int) -> list[np.ndarray]:
        """For each (B, T) array of global indices in `ends`, the frame stacks ending there: (B, T, F, 84, 84),
        zero where a frame lies before the shard's first index or in an earlier episode than the stack's last
        frame. One pass over the samples fills them all (the loop, not the copying, is the cost here)."""
        b_size, t_size = ends[0].shape
        outs = [self._buffers.empty((b_size, t_size, frames, *FRAME_SHAPE)) for _ in ends]
        base = self.base[shard][:, None]
        # per sample, set and step: (shard-local exclusive end, frames to zero-fill at the front), as Python
        # ints: numpy scalars and memmap slicing cost more than the copies
        plan = [
            zip(
                (e - base + 1).tolist(),
                np.maximum(self.episode_start[e] - (e - frames + 1), 0).tolist(),
            )
            for e in ends
        ]
        maps = self.maps
        for b, (k, *rows) in enumerate(zip(shard.tolist(), *plan)):
            source = maps[k]
            for out, (end_t, zero_t) in zip(outs, rows):
                out_b = out[b]
                for t in range(t_size):
                    end, z = end_t[t], zero_t[t]
                    if z:
                        out_b[t, :z] = 0
                    out_b[t, z:] = source[end - frames + z : end]
        return outs


class _BufferPool:
    """Frame-stack buffers recycled once nothing outside the pool refers to them any more.

    A batch that is still held (by a prefetch queue, or by the caller) keeps its buffer; a new 14 MB array
    per batch would cost fresh, kernel-zeroed pages each time, as much as the copy into it.
    """

    _PER_SHAPE = 16

    def __init__(self):
        self._bufs: dict[tuple[int, ...], list[np.ndarray]] = {}
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...]) -> np.ndarray:
        with self._lock:
            bufs = self._bufs.setdefault(shape, [])
            for buf in bufs:
                if sys.getrefcount(buf) == 3:  # the list, `buf` and getrefcount's argument: free
                    return buf
            buf = np.empty(shape, np.uint8)
            if len(bufs) < self._PER_SHAPE:
                bufs.append(buf)
            return buf


def _check_args(batch_size: int, frames: int, t_step: int, n_step: int) -> None:
    for name, value, lowest in (
        ("batch_size", batch_size, 1),
        ("frames", frames, 1),
        ("t_step", t_step, 1),
        ("n_step", n_step, 0),
    ):
        if int(value) != value or value < lowest:
            raise UsageError(f"{name}={value}: must be an integer >= {lowest}")
