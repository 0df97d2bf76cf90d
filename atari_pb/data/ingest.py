"""`atari-pb ingest` and `atari-pb verify`: DQN-Replay checkpoints -> verified HDF5 shards.

Ingest checks the whole request before it writes anything (games, runs, checkpoints, every source file),
then builds the missing shards, in worker processes when asked, and records each one in the manifest the
moment it is complete. Killing it at any point loses at most the shards being written; running it again
builds those and gives the same bytes as an uninterrupted run.

A run downloaded with the checkpoint fallback (download.py: a missing checkpoint 50 replaced by 49, then 48)
has a `download.json` beside its replay_logs/; a requested checkpoint listed there is read from the
checkpoint it names, and its shard is named after the checkpoint it holds (`run1_ckpt49.h5`, `ckpt: 49` and
the ckpt-49 file as `source` in the manifest), so `ingest --dataset datasets/offline_bc.yaml` (checkpoint
50) works on such a tree and the manifest says where each shard came from.

`layout="atari_pb_far_ood"` reads the released Far-OOD BC data instead (replay_format.py: LAYOUTS), the
buffer dumps the released Rainbow agents wrote with PERBuffer.save_buffer (per_buffer.py:224-246):
`<Game>/{observation,action,reward,terminal}_<run>_<ckpt>.gz`; the released loader reads run 1, checkpoint 2,
its first 50,000 transitions (configs/dataloader/far_ood_offline_bc.yaml; src/common/dataset_utils.py:164-172).
Such a shard holds the same arrays as a DQN-Replay one, with these differences:
  * invalid_range is empty and add_count is -1: a dump has neither. It is the buffer's array saved whole and
    read from its start; the buffer's write cursor, the only place where stored transitions are not in time
    order, sits at its end (1M slots, 2M steps: at slot 1M - max_n_step + 1), not in a prefix.
  * action: indices into the released env's action set (minimal set; NOOP dropped for basic_math and
    othello), which is what our env and `collect` use (envs/atari.py: action_set(game, "released")); they
    are stored as they are, after checking they are integers in 0..num_actions(game) - 1.
  * reward: the released env's sign-clipped reward (envs/atari.py:155, clip_reward=True), float64 -> float32.
  * terminal: the released env's `done` (envs/atari.py:157): game over, the 27,000-step horizon, *or a lost
    life* (episodic_lives=True, the default its config keeps), unlike DQN-Replay's game-over terminal; the
    released loader uses it as the episode end just the same (dataset_utils.py:210-214).
  * attrs: `layout`, `sources` (its four files); the manifest's `source` is "atari_pb_far_ood:<obs file>".
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from atari_pb.data.download import RECORD_NAME, read_used_ckpts
from atari_pb.data.manifest import (
    MANIFEST_NAME,
    ShardEntry,
    read_manifest,
    sha256_file,
    write_manifest,
)
from atari_pb.data.replay_format import (
    ALL_FIELDS,
    LAYOUTS,
    META_FIELDS,
    RELEASED_LAYOUT,
    STORE_FIELDS,
    open_released_array,
    open_store_array,
    read_released_prefix,
    read_small_array,
    relative_released_file,
    released_file,
    replay_file,
    run_dir,
)
from atari_pb.data.rlu import RLU_LAYOUT, check_coverage
from atari_pb.data.rlu_shard import RluShardJob, build_rlu_shard, check_rlu_source, rlu_jobs
from atari_pb.data.shard import (
    SCALAR_FIELDS,
    SHARD_SCHEMA_VERSION,
    ShardJob,
    build_shard,
    shard_problems,
    write_shard,
)
from atari_pb.envs.atari import num_actions
from atari_pb.errors import AtariPBError, DataError, UsageError
from atari_pb.games import Game, all_games

log = logging.getLogger(__name__)
_OBS_BLOCK = 2048  # frames decompressed and written at a time (as shard.py)


@dataclass
class IngestReport:
    built: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _available(path: Path, pattern: str) -> list[str]:
    return sorted(p.name for p in path.glob(pattern)) if path.is_dir() else []


def plan_ingest(
    src: Path,
    dst: Path,
    games: Sequence[Game],
    runs: Sequence[int],
    ckpts: Sequence[int],
    samples: int,
    full_check: bool = False,
    layout: str = "dqn_replay",
    skip_missing_games: bool = False,
) -> list[ShardJob]:
    """Check the request against what `src` holds; one job per (game, run, checkpoint). RL Unplugged
    (`layout="rlu"`) lacks some games: asking for them is an error unless `skip_missing_games`."""
    src, dst = Path(src), Path(dst)
    _check_request(src, dst, samples, games, runs, ckpts, layout)
    if layout == RLU_LAYOUT:
        games = check_coverage(games, skip_missing_games)
    known = {g.replay_name for g in all_games()}
    jobs = []
    for game in games:
        if not (src / game.replay_name).is_dir():
            present = [n for n in _available(src, "*") if n in known]
            raise UsageError(
                f"{src / game.replay_name} does not exist; games in {src}: {', '.join(present) or 'none'}"
            )
        if layout == RELEASED_LAYOUT:
            jobs += _released_jobs(src, dst, game, runs, ckpts, samples, full_check)
        elif layout == RLU_LAYOUT:
            minimal = num_actions(game, "minimal")
            jobs += rlu_jobs(src, dst, game, runs, ckpts, samples, full_check, minimal)
        else:
            jobs += _replay_jobs(src, dst, game, runs, ckpts, samples, full_check)
    for job in tqdm(jobs, unit="checkpoint", desc="check sources", disable=None, leave=False):
        if isinstance(job, ReleasedShardJob):
            check_released_sources(job)
        elif isinstance(job, RluShardJob):
            check_rlu_source(job)
        else:
            check_sources(job)
    return jobs


def _check_request(src: Path, dst: Path, samples: int, games, runs, ckpts, layout: str) -> None:
    if layout not in LAYOUTS:
        raise UsageError(f"layout {layout!r}; valid layouts: {', '.join(LAYOUTS)}")
    if not src.is_dir():
        raise UsageError(f"source {src} is not a directory")
    if dst.exists() and not dst.is_dir():
        raise UsageError(f"destination {dst} is a file; ingest needs a directory")
    if samples < 1:
        raise UsageError(f"samples_per_ckpt={samples}: must be >= 1")
    if not games or not runs or not ckpts:
        raise UsageError("ingest needs at least one game, one run and one checkpoint")


def _replay_jobs(
    src: Path,
    dst: Path,
    game: Game,
    runs: Sequence[int],
    ckpts: Sequence[int],
    samples: int,
    full_check: bool,
) -> list[ShardJob]:
    """The jobs of one game of a DQN-Replay tree, after checking that the tree is one."""
    folder = src / game.replay_name
    if _available(folder, "run_*-*-of-*"):
        raise UsageError(
            f"{folder} holds RL Unplugged files (run_<r>-<ckpt>-of-<N>), not DQN-Replay's "
            f"<run>/replay_logs/; ingest it with --layout {RLU_LAYOUT}"
        )
    if _available(folder, "observation_*_*.gz"):
        raise UsageError(
            f"{folder} holds released Far-OOD files (observation_<run>_<ckpt>.gz), "
            f"not DQN-Replay's <run>/replay_logs/; ingest it with --layout {RELEASED_LAYOUT}"
        )
    jobs = []
    for run in runs:
        logs = run_dir(src, game.replay_name, run)
        if not logs.is_dir():
            present = [n for n in _available(folder, "*") if (folder / n).is_dir()]
            raise UsageError(
                f"{logs} does not exist; runs of {game.replay_name}: {', '.join(present) or 'none'}"
            )
        jobs += _run_jobs(src, dst, game, run, ckpts, samples, full_check)
    return jobs


@dataclass(frozen=True)
class ReleasedShardJob(ShardJob):
    """A shard of the released Far-OOD layout (module docstring)."""

    num_actions: int = 0  # actions must index the game's released action set: 0..num_actions - 1

    def file(self, fld: str) -> Path:
        return released_file(Path(self.src_root), self.replay_name, self.run, fld, self.ckpt)

    def relative(self, fld: str) -> str:
        return relative_released_file(self.replay_name, self.run, fld, self.ckpt)


def _released_jobs(
    src: Path,
    dst: Path,
    game: Game,
    runs: Sequence[int],
    ckpts: Sequence[int],
    samples: int,
    full_check: bool,
) -> list[ShardJob]:
    folder = src / game.replay_name
    if (folder / str(runs[0]) / "replay_logs").is_dir() or _available(folder, "*/replay_logs"):
        raise UsageError(
            f"{folder} is a DQN-Replay tree (<run>/replay_logs/), not the released Far-OOD layout "
            f"(<field>_<run>_<ckpt>.gz); ingest it with --layout dqn_replay"
        )
    jobs = []
    for run in runs:
        for ckpt in ckpts:
            for fld in STORE_FIELDS:
                path = released_file(src, game.replay_name, run, fld, ckpt)
                if not path.is_file():
                    have = sorted(
                        n[len("observation_") : -3] for n in _available(folder, "observation_*_*.gz")
                    )
                    raise UsageError(
                        f"{path} does not exist; {RELEASED_LAYOUT} expects {folder}/<field>_<run>_<ckpt>.gz "
                        f"for observation, action, reward, terminal; (run_ckpt) there: {', '.join(have) or 'none'}"
                    )
            jobs.append(
                ReleasedShardJob(
                    str(src),
                    str(dst),
                    game.name,
                    game.replay_name,
                    run,
                    ckpt,
                    samples,
                    full_check,
                    num_actions=num_actions(game),
                )
            )
    return jobs


def check_released_sources(job: ReleasedShardJob) -> None:
    """The headers of a released checkpoint's four files: dtypes, shapes, and one common length."""
    lengths = {}
    for fld in STORE_FIELDS:
        reader, header = open_released_array(job.file(fld), fld)
        reader.close()
        if header.shape[0] < job.samples:
            raise DataError(f"{reader.path}: has {header.shape[0]} transitions, {job.samples} were asked for")
        lengths[fld] = header.shape[0]
    if len(set(lengths.values())) > 1:
        raise DataError(
            f"{job.file('action')}: the four files of one buffer dump differ in length "
            f"({', '.join(f'{k} {v}' for k, v in lengths.items())})"
        )


def _released_scalars(job: ReleasedShardJob) -> dict[str, np.ndarray]:
    """action, reward, terminal: the first `samples`, values checked, in the shard's dtypes."""
    raw = {fld: read_released_prefix(job.file(fld), fld, job.samples)[0] for fld in SCALAR_FIELDS}
    action = raw["action"]
    whole = np.isfinite(action) & (action == np.round(action)) if action.dtype.kind == "f" else True
    bad = np.flatnonzero(~(whole & (action >= 0) & (action < job.num_actions)))
    if bad.size:
        raise DataError(
            f"{job.file('action')}: action {action[bad[0]].item()!r} at index {bad[0]} ({bad.size} such) is not an "
            f"index into {job.game}'s released action set (integers 0..{job.num_actions - 1})"
        )
    terminal = raw["terminal"]
    bad = np.flatnonzero((terminal != 0) & (terminal != 1))
    if bad.size:
        raise DataError(
            f"{job.file('terminal')}: terminal {terminal[bad[0]].item()!r} at index {bad[0]}; expected 0 or 1 (done)"
        )
    return {
        "action": action.astype(np.int32),
        "reward": raw["reward"].astype(np.float32),
        "terminal": terminal.astype(np.uint8),
    }


def build_released_shard(job: ReleasedShardJob) -> ShardEntry:
    """build_shard for the released Far-OOD layout: the same schema, written the same atomic way."""
    final = Path(job.dst_root) / job.relpath
    final.parent.mkdir(parents=True, exist_ok=True)
    n = job.samples
    scalars = _released_scalars(job)
    reader, header = open_released_array(job.file("observation"), "observation")
    # a saved buffer read from its start: no invalid range (see the module docstring)
    invalid = np.zeros(0, np.int64)
    attrs = _released_attrs(job, header.shape[0])
    digest, size = write_shard(final, n, scalars, invalid, reader, header, job.full_check, attrs)
    source = f"{RELEASED_LAYOUT}:{job.relative('observation')}"
    return ShardEntry(
        job.relpath, job.game, job.run, job.ckpt, n, digest, size, source, origin=RELEASED_LAYOUT
    )


def _released_attrs(job: ReleasedShardJob, length: int) -> dict:
    return {
        "schema_version": SHARD_SCHEMA_VERSION,
        "game": job.game,
        "replay_name": job.replay_name,
        "run": job.run,
        "ckpt": job.ckpt,
        "source": job.relative("observation"),
        "source_length": length,
        "add_count": -1,  # a buffer dump records none
        "layout": RELEASED_LAYOUT,
        "sources": [job.relative(fld) for fld in STORE_FIELDS],
    }


def build_job(job: ShardJob) -> ShardEntry:
    """Build one shard of either layout (what the worker processes run)."""
    if isinstance(job, RluShardJob):
        return build_rlu_shard(job)
    return build_released_shard(job) if isinstance(job, ReleasedShardJob) else build_shard(job)


def _run_jobs(
    src: Path, dst: Path, game: Game, run: int, ckpts: Sequence[int], samples: int, full_check: bool
) -> list[ShardJob]:
    """One job per requested checkpoint of a run, each reading the checkpoint the download used for it
    (download.json: a missing checkpoint 50 replaced by 49 or 48); the shard is named after that one."""
    logs = run_dir(src, game.replay_name, run)
    used = read_used_ckpts(src, game.replay_name, run)
    jobs, asked_as = [], {}
    for ckpt in ckpts:
        source = used.get(ckpt, ckpt)
        via = (
            f" (checkpoint {ckpt} falls back to {source}: {logs.parent / RECORD_NAME})"
            if source != ckpt
            else ""
        )
        if source in asked_as:
            raise UsageError(
                f"{game.replay_name} run {run}: checkpoints {asked_as[source]} and {ckpt} both read "
                f"checkpoint {source}{via}; leave one of them out"
            )
        asked_as[source] = ckpt
        for fld in ALL_FIELDS:
            path = replay_file(src, game.replay_name, run, fld, source)
            if not path.is_file():
                have = sorted(
                    int(name.rsplit(".", 2)[-2])
                    for name in _available(logs, "$store$_observation_ckpt.*.gz")
                    if name.rsplit(".", 2)[-2].isdigit()
                )
                raise UsageError(
                    f"{path} does not exist{via}; checkpoints of {game.replay_name} run {run}: "
                    f"{', '.join(map(str, have)) or 'none'}"
                )
        if via:
            log.info(
                "%s run %d: checkpoint %d is read from checkpoint %d%s", game.name, run, ckpt, source, via
            )
        jobs.append(
            ShardJob(str(src), str(dst), game.name, game.replay_name, run, source, samples, full_check)
        )
    return jobs


def check_sources(job: ShardJob) -> None:
    """Read the headers of a checkpoint's files (a few bytes each): dtypes, shapes and lengths."""
    for fld in STORE_FIELDS:
        reader, header = open_store_array(
            replay_file(job.src_root, job.replay_name, job.run, fld, job.ckpt), fld
        )
        reader.close()
        if header.shape[0] < job.samples:
            raise DataError(f"{reader.path}: has {header.shape[0]} transitions, {job.samples} were asked for")
    for fld in META_FIELDS:
        read_small_array(replay_file(job.src_root, job.replay_name, job.run, fld, job.ckpt))


def _die_with_parent(parent: int) -> None:
    """Worker initializer: a killed ingest takes its workers with it (Linux), leaving no orphan writers.
    A worker whose parent died while it was starting, before the death signal was armed, exits at once."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)


def ingest(
    src: Path,
    dst: Path,
    games: Sequence[Game],
    runs: Sequence[int],
    ckpts: Sequence[int],
    samples: int,
    workers: int = 1,
    full_check: bool = False,
    layout: str = "dqn_replay",
    skip_missing_games: bool = False,
) -> IngestReport:
    jobs = plan_ingest(src, dst, games, runs, ckpts, samples, full_check, layout, skip_missing_games)
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    entries = read_manifest(dst)
    report = IngestReport()
    todo = []
    for job in jobs:
        done = entries.get((job.game, job.run, job.ckpt))
        if done is None:
            todo.append(job)
        elif done.length != job.samples:
            raise UsageError(
                f"{dst / done.path} already holds {done.length} transitions, {job.samples} were asked for; "
                "ingest into another destination"
            )
        else:
            report.skipped.append(done.path)

    def finished(entry: ShardEntry) -> None:
        entries[entry.key] = entry
        write_manifest(dst, entries)
        report.built.append(entry.path)

    bar = tqdm(total=len(jobs), initial=len(report.skipped), unit="shard", desc="ingest", disable=None)
    try:
        if workers <= 1:
            for job in todo:
                try:
                    finished(build_job(job))
                except AtariPBError as err:
                    report.errors.append(str(err))
                bar.update()
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(
                workers, mp_context=ctx, initializer=_die_with_parent, initargs=(os.getpid(),)
            ) as pool:
                job_of: dict[Future, ShardJob] = {pool.submit(build_job, job): job for job in todo}
                pending = set(job_of)
                while pending:
                    done_now, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done_now:
                        try:
                            finished(fut.result())
                        except AtariPBError as err:
                            report.errors.append(str(err))
                        except BrokenProcessPool as err:  # a worker was killed (out of memory, a signal)
                            report.errors.append(f"{dst / job_of[fut].relpath}: worker died ({err})")
                        bar.update()
    finally:
        bar.close()
    if not report.errors:
        write_manifest(dst, entries)  # a manifest even when there was nothing to do
        for stale in [*dst.glob(".*.tmp"), *dst.glob("*/.*.tmp")]:  # left by an ingest that was killed
            stale.unlink(missing_ok=True)
    log.info("ingest: %d shards built, %d already finished", len(report.built), len(report.skipped))
    return report


def verify(root: Path) -> list[str]:
    """Re-hash every shard against the manifest and check its layout; one problem line per bad shard."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory")
    if not (root / MANIFEST_NAME).is_file():
        raise UsageError(f"{root / MANIFEST_NAME} does not exist; is {root} a shard directory?")
    entries = read_manifest(root)
    if not entries:
        raise DataError(f"{root / MANIFEST_NAME} lists no shards")
    problems = []
    for entry in tqdm(list(entries.values()), unit="shard", desc="verify", disable=None):
        path = root / entry.path
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        if path.stat().st_size != entry.bytes:
            problems.append(f"{path}: {path.stat().st_size} bytes, manifest says {entry.bytes}")
            continue
        if sha256_file(path) != entry.sha256:
            problems.append(f"{path}: SHA-256 differs from the manifest")
            continue
        problems += [f"{path}: {p}" for p in shard_problems(path, entry)]
    return problems
