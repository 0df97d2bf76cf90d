"""The data sets the benchmarks run on, built once from real ALE frames and cached in bench/out/.

Each cached data set carries a small JSON marker describing how it was made and is rebuilt when that
description changes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from bench.harness import OUT, REPO, log

# Real frames: 4 games x 2 runs x 2 checkpoints x 6,250 transitions = 100,000 frames played through ale-py.
GAMES = ("pong", "breakout", "ms_pacman", "space_invaders")
RUNS = (1, 2)
CKPTS = (0, 1)
PER_CKPT = 6_250
REAL_FRAMES = len(GAMES) * len(RUNS) * len(CKPTS) * PER_CKPT
# The large source file is laid out under this game's name (its frames come from all four games).
BIG_GAME = "pong"
BIG_BLOCK = 1_250  # frames taken from each collected checkpoint in turn when the large file is assembled
DOPAMINE_LEVEL = 9  # Dopamine writes its checkpoints through gzip.GzipFile's default, compresslevel=9


def _cached(marker: Path, spec: dict) -> bool:
    try:
        return {k: v for k, v in json.loads(marker.read_text()).items() if k in spec} == spec
    except (OSError, ValueError):
        return False


def collected_root() -> Path:
    """100,000 real frames: GAMES x RUNS x CKPTS x PER_CKPT, played by ale-py (random policy, sticky actions)."""
    from atari_pb.data.collect import CollectConfig, collect
    from atari_pb.games import resolve_games

    root, marker = OUT / "collected", OUT / "collected.json"
    spec = {
        "games": list(GAMES),
        "runs": list(RUNS),
        "ckpts": list(CKPTS),
        "transitions_per_ckpt": PER_CKPT,
        "seed": 0,
    }
    if _cached(marker, spec):
        return root
    shutil.rmtree(root, ignore_errors=True)
    log(f"collecting {REAL_FRAMES:,} real frames with ale-py into {root} (once; cached)")
    t0 = time.perf_counter()
    collect(root, resolve_games(GAMES), RUNS, CKPTS, CollectConfig(transitions_per_ckpt=PER_CKPT, seed=0))
    seconds = time.perf_counter() - t0
    log(f"collected in {seconds:.0f} s ({REAL_FRAMES / seconds:,.0f} transitions/s)")
    marker.write_text(json.dumps({**spec, "seconds": round(seconds, 1)}, indent=1) + "\n")
    return root


def _real_pool() -> dict[str, np.ndarray]:
    """The 100,000 collected transitions, interleaved in blocks of BIG_BLOCK from the 16 checkpoints in turn,
    so that any prefix of a few thousand frames mixes all four games."""
    from atari_pb.data.replay_format import STORE_FIELDS, read_store_prefix, replay_file
    from atari_pb.games import get_game

    root = collected_root()
    sources = [(g, r, c) for g in GAMES for r in RUNS for c in CKPTS]
    pool = {}
    for field in STORE_FIELDS:
        per_src = [
            read_store_prefix(replay_file(root, get_game(g).replay_name, r, field, c), field, PER_CKPT)[0]
            for g, r, c in sources
        ]
        pool[field] = np.concatenate(
            [s[b : b + BIG_BLOCK] for b in range(0, PER_CKPT, BIG_BLOCK) for s in per_src]
        )
    return pool


def big_source(frames: int, compresslevel: int = DOPAMINE_LEVEL) -> tuple[Path, dict]:
    """A DQN-Replay checkpoint of `frames` transitions (ckpt 0 of run 1 of BIG_GAME) made of the real
    frames of `collected_root()`, streamed through GzipNpyWriter as many times as it takes."""
    from atari_pb.data.collect import invalid_range
    from atari_pb.data.replay_format import STORE_FIELDS, GzipNpyWriter, replay_file, write_gz_npy
    from atari_pb.games import get_game

    root, marker = OUT / f"source_{frames}", OUT / f"source_{frames}.json"
    spec = {
        "frames": frames,
        "compresslevel": compresslevel,
        "real_frames": REAL_FRAMES,
        "games": list(GAMES),
        "block": BIG_BLOCK,
    }
    name = get_game(BIG_GAME).replay_name
    path = replay_file(root, name, 1, "observation", 0)
    if _cached(marker, spec) and path.is_file():
        return root, json.loads(marker.read_text())
    shutil.rmtree(root, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    pool = _real_pool()
    log(
        f"writing a {frames:,}-frame observation file from {REAL_FRAMES:,} real frames (gzip level {compresslevel}; once; cached)"
    )
    t0 = time.perf_counter()
    for field, (dtype, item_shape) in STORE_FIELDS.items():
        src = pool[field]
        writer = GzipNpyWriter(
            replay_file(root, name, 1, field, 0), dtype, (frames, *item_shape), compresslevel
        )
        try:
            done = 0
            while done < frames:
                for start in range(0, len(src), BIG_BLOCK):
                    m = min(BIG_BLOCK, frames - done)
                    if m <= 0:
                        break
                    writer.write(src[start : start + m])
                    done += m
            writer.close()
        except BaseException:
            writer.abort()
            raise
    write_gz_npy(replay_file(root, name, 1, "invalid_range", 0), invalid_range(0, frames), compresslevel)
    write_gz_npy(replay_file(root, name, 1, "add_count", 0), np.array(frames, np.int64), compresslevel)
    seconds = time.perf_counter() - t0
    info = {
        **spec,
        "seconds": round(seconds, 1),
        "observation_file": str(path.relative_to(REPO)),
        "compressed_bytes": path.stat().st_size,
        "decompressed_bytes": frames * 84 * 84 + 128,
    }
    marker.write_text(json.dumps(info, indent=1) + "\n")
    log(f"wrote {path} ({info['compressed_bytes'] / 2**20:,.0f} MiB) in {seconds:.0f} s")
    return root, info


def describe_source(info: dict) -> str:
    return (
        f"{info['frames']:,}-frame `$store$_observation_ckpt.0.gz` ({info['compressed_bytes'] / 2**20:,.0f} MiB "
        f"compressed, {info['decompressed_bytes'] / 2**30:.2f} GiB of .npy): {info['real_frames']:,} real ALE frames "
        f"({', '.join(info['games'])}; random policy, sticky actions; {len(RUNS)} runs x {len(CKPTS)} checkpoints x "
        f"{PER_CKPT:,} each) interleaved in blocks of {info['block']:,} and streamed "
        f"{info['frames'] / info['real_frames']:g}x through GzipNpyWriter at gzip level {info['compresslevel']} "
        "(Dopamine's level)"
    )


def link_checkpoints(root: Path, count: int) -> list[int]:
    """Make checkpoints 1..count-1 of the large source symlinks to checkpoint 0, so that several
    shards can be ingested from it (the page cache holds one copy)."""
    from atari_pb.data.replay_format import ALL_FIELDS, replay_file
    from atari_pb.games import get_game

    name = get_game(BIG_GAME).replay_name
    for ckpt in range(1, count):
        for field in ALL_FIELDS:
            link = replay_file(root, name, 1, field, ckpt)
            if not link.is_symlink():
                link.unlink(missing_ok=True)
                link.symlink_to(replay_file(root, name, 1, field, 0).name)
    return list(range(count))


def _ingest(src: Path, dst: Path, games, runs, ckpts, samples: int) -> None:
    from atari_pb.data.ingest import ingest

    n = len(games) * len(runs) * len(ckpts)
    log(f"ingesting {n} shards of {samples:,} transitions into {dst} (once; cached)")
    report = ingest(src, dst, games, runs, ckpts, samples, workers=2)
    if report.errors:
        raise RuntimeError("; ".join(report.errors))


def sampler_shards(samples: int = 5_000) -> Path:
    """Shards of the first `samples` transitions of every collected checkpoint (16 shards, 4 games)."""
    from atari_pb.data.manifest import read_manifest
    from atari_pb.games import resolve_games

    src, dst = collected_root(), OUT / f"shards_sampler_{samples}"
    if not (dst.is_dir() and len(read_manifest(dst)) == len(GAMES) * len(RUNS) * len(CKPTS)):
        _ingest(src, dst, resolve_games(GAMES), RUNS, CKPTS, samples)
    return dst


def memory_shards(src: Path, samples: int, count: int) -> tuple[Path, Path]:
    """`count` shards of `samples` transitions (checkpoints 0..count-1 of the large source, symlinked), and
    a second root holding only the first of them (hard link), for a small/large comparison."""
    from atari_pb.data.manifest import read_manifest, write_manifest
    from atari_pb.games import get_game

    large, small = OUT / f"shards_mem_{samples}x{count}", OUT / f"shards_mem_{samples}x1"
    ckpts = link_checkpoints(src, count)
    if len(read_manifest(large)) != count:
        _ingest(src, large, [get_game(BIG_GAME)], [1], ckpts, samples)
    if len(read_manifest(small)) != 1:
        shutil.rmtree(small, ignore_errors=True)
        entries = read_manifest(large)
        first = entries[min(entries)]
        (small / first.path).parent.mkdir(parents=True, exist_ok=True)
        os.link(large / first.path, small / first.path)
        write_manifest(small, {first.key: first})
    return small, large


def dir_bytes(root: Path, pattern: str = "**/*.h5") -> int:
    return sum(p.stat().st_size for p in Path(root).glob(pattern) if p.is_file())
