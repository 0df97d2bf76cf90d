"""`atari-pb ingest --layout rlu`: RL Unplugged checkpoint files -> the same HDF5 shards DQN-Replay gives.

The request is checked whole before anything is written: games RL Unplugged lacks (one line listing them,
unless `skip_missing_games`), a DQN-Replay tree given as this layout, and every checkpoint's file. A
requested checkpoint 50 follows the download's record (`<Game>/<run>/download.json`, 50 -> 49 or 48) as for
DQN-Replay, and its shard is named after the checkpoint it holds. How episodes become transitions: rlu.py.

A shard differs from a DQN-Replay one only where the source has less to say (docs/parity.md, "RL
Unplugged"): `invalid_range` is empty and `add_count` -1 (RLU keeps neither), and `source_length` is -1 (the
file's length in transitions is unknown without reading all of it). The manifest entry carries `details`:
the URL, the checkpoint asked for and the one used, the episodes, the compressed bytes read and the counts
of rlu.py's alignment checks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from atari_pb.data import rlu
from atari_pb.data.download import RECORD_NAME, read_used_ckpts
from atari_pb.data.manifest import ShardEntry
from atari_pb.data.replay_format import FRAME_SHAPE
from atari_pb.data.shard import SHARD_SCHEMA_VERSION, ShardJob, write_shard
from atari_pb.errors import DataError, UsageError
from atari_pb.games import Game

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RluShardJob(ShardJob):
    file: str = ""  # the checkpoint's file
    num_actions: int = 0  # the game's minimal action set's size
    asked_ckpt: int = 0  # the checkpoint requested (50 when a fallback gave 49)


def rlu_jobs(
    src: Path,
    dst: Path,
    game: Game,
    runs: Sequence[int],
    ckpts: Sequence[int],
    samples: int,
    full_check: bool,
    num_actions: int,
) -> list[ShardJob]:
    """One job per requested (run, checkpoint) of `game`, each naming the file it reads."""
    folder = src / game.replay_name
    if any((folder / str(run) / "replay_logs").is_dir() for run in runs):
        raise UsageError(
            f"{folder} is a DQN-Replay tree (<run>/replay_logs/), not RL Unplugged's "
            f"(run_<r>-<ckpt>-of-<N>); ingest it with --layout dqn_replay"
        )
    jobs = []
    for run in runs:
        used = read_used_ckpts(src, game.replay_name, run)
        for ckpt in ckpts:
            source = used.get(ckpt, ckpt)
            path = rlu.local_shard(src, game, run, source)
            if path is None:
                via = f" (checkpoint {ckpt} falls back to {source}: {folder / str(run) / RECORD_NAME})"
                have = rlu.local_ckpts(src, game, run)
                raise UsageError(
                    f"{folder}/{rlu.shard_name(run, source, 50).rsplit('-of-', 1)[0]}-of-*: no such file"
                    f"{via if source != ckpt else ''}; checkpoints of {game.replay_name} run {run} there: "
                    f"{', '.join(map(str, have)) or 'none'}"
                )
            jobs.append(
                RluShardJob(
                    str(src),
                    str(dst),
                    game.name,
                    game.replay_name,
                    run,
                    source,
                    samples,
                    full_check,
                    file=str(path),
                    num_actions=num_actions,
                    asked_ckpt=ckpt,
                )
            )
    return jobs


def check_rlu_source(job: RluShardJob) -> None:
    """The file's first record (a few KB to MB): a TFRecord of RL Unplugged episodes, not something else."""
    path = Path(job.file)
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")
    stream = rlu.RecordStream(str(path))
    with open(path, "rb") as f:
        while stream.records == 0 and (chunk := f.read(rlu.BLOCK)):
            for record in stream.feed(chunk):
                rlu.parse_episode(record, str(path), 0)
                break


class _Frames:
    """What write_shard reads frames from: the prefix's PNGs, decoded a block at a time."""

    def __init__(self, prefix: rlu.Prefix, path: Path):
        self.prefix = prefix
        self.path = path
        self.next = 0

    def readinto(self, view: memoryview) -> int:
        out = np.frombuffer(view, np.uint8).reshape(-1, *FRAME_SHAPE)
        rlu.decode_frames(self.prefix, self.next, out, str(self.path))
        self.next += len(out)
        return view.nbytes

    def drain(self) -> int:
        return 0  # the prefix is all that was read: nothing follows it

    def close(self) -> None:
        pass


@dataclass
class _Header:
    shape: tuple[int, ...]


def build_rlu_shard(job: RluShardJob) -> ShardEntry:
    """Read the first `samples` transitions of one RLU checkpoint file and write them as a finished shard."""
    path = Path(job.file)
    final = Path(job.dst_root) / job.relpath
    final.parent.mkdir(parents=True, exist_ok=True)
    n = job.samples
    prefix = rlu.read_prefix(path, n, job.num_actions, job.full_check)
    if prefix.dropped_rewards or prefix.return_mismatches:
        log.warning(
            "%s: %d dropped last steps carry a reward and %d episodes' kept rewards miss their clipped return: "
            "the alignment of rewards to steps may not be what rlu.py assumes (docs/parity.md)",
            path,
            prefix.dropped_rewards,
            prefix.return_mismatches,
        )
    wrong_ckpt = sorted(set(prefix.checkpoint_idx) - {job.ckpt})
    if wrong_ckpt:
        log.warning("%s: records say checkpoint_idx %s, the file name %d", path, wrong_ckpt, job.ckpt)
    url = rlu.source_url(Path(job.src_root), path)
    relative = f"{job.replay_name}/{path.name}"
    details = {
        "url": url,
        "asked_ckpt": job.asked_ckpt,
        "used_ckpt": job.ckpt,
        "checkpoint_idx": sorted(set(prefix.checkpoint_idx)),
        "bytes_read": prefix.bytes_read,
        "records_read": len(prefix.checkpoint_idx),
        "episodes": prefix.episodes,
        "terminal_ends": prefix.terminal_ends,
        "cut_ends": prefix.cut_ends,
        "dropped_rewards": prefix.dropped_rewards,
        "return_mismatches": prefix.return_mismatches,
    }
    attrs = {
        "schema_version": SHARD_SCHEMA_VERSION,
        "game": job.game,
        "replay_name": job.replay_name,
        "run": job.run,
        "ckpt": job.ckpt,
        "source": relative,
        "source_length": -1,  # unknown without reading the whole file
        "add_count": -1,  # RLU keeps none
        "layout": rlu.RLU_LAYOUT,
        "url": url,
        "bytes_read": prefix.bytes_read,
        "episode_starts": np.array([e["start"] for e in prefix.episodes], np.int64),
        "episode_idx": np.array([e["episode_idx"] for e in prefix.episodes], np.int64),
    }
    scalars = {"action": prefix.action, "reward": prefix.reward, "terminal": prefix.terminal}
    invalid = np.zeros(0, np.int64)  # episodes are whole: nothing in a shard is out of time order
    digest, size = write_shard(
        final, n, scalars, invalid, _Frames(prefix, path), _Header((n, *FRAME_SHAPE)), False, attrs
    )
    return ShardEntry(
        job.relpath,
        job.game,
        job.run,
        job.ckpt,
        n,
        digest,
        size,
        f"{rlu.RLU_LAYOUT}:{relative}",
        origin=rlu.RLU_LAYOUT,
        details=details,
    )
