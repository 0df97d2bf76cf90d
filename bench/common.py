"""Shared pieces of the benchmarks: the cached real-frame data they run on, timing, tables, JSON results.

Everything generated lives under bench/out/ (git-ignored) and is reused by later runs; each cached data
set carries a small JSON marker describing how it was made, and is rebuilt when that description changes.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "out"

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


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- machine
def machine_info() -> dict:
    import h5py
    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": round(mem_kb / 2**20, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "torch": torch.__version__,
        "zlib": zlib.ZLIB_RUNTIME_VERSION,
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """Memory lines of /proc/<pid>/status in bytes: VmHWM, VmRSS, RssAnon, RssFile, RssShmem, VmData..."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key.startswith(("Vm", "Rss")) and rest.strip().endswith("kB"):
            out[key] = int(rest.split()[0]) * 1024
    return out


# ----------------------------------------------------------------------------------------------- timing
def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def repeat(fn: Callable[[], object], n: int) -> list[float]:
    return [timed(fn)[0] for _ in range(n)]


def med(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def warm_page_cache(paths: Sequence[Path]) -> None:
    """Read files once so every timed pass sees them in the page cache (all timings here are warm)."""
    buf = bytearray(1 << 24)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


# ------------------------------------------------------------------------------------------- reporting
def fmt(x, digits: int = 3) -> str:
    if isinstance(x, str):
        return x
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.{max(digits - 1, 0)}f}"
    return f"{x:.{digits}g}"


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence]) -> dict:
    return {"title": title, "headers": list(headers), "rows": [[fmt(c) for c in r] for r in rows]}


def render_text(tbl: dict) -> str:
    cells = [tbl["headers"], *tbl["rows"]]
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(tbl["headers"]))]
    lines = [tbl["title"]]
    for k, r in enumerate(cells):
        lines.append(
            "  "
            + "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
        )
        if k == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_markdown(tbl: dict) -> str:
    lines = [f"**{tbl['title']}**", "", "| " + " | ".join(tbl["headers"]) + " |"]
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(tbl["headers"]) - 1)) + "|")
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in tbl["rows"]]
    return "\n".join(lines)


def finish(name: str, result: dict) -> dict:
    """Print the result tables and write bench/out/<name>.json."""
    OUT.mkdir(parents=True, exist_ok=True)
    print()
    for line in result.get("setup", []):
        print(f"# {line}")
    for tbl in result["tables"]:
        print()
        print(render_text(tbl))
    for goal in result.get("goals", []):
        print(
            f"goal: {goal['what']} {goal['goal']}: measured {fmt(goal['value'])} -> {'met' if goal['met'] else 'NOT met'}"
        )
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {path.relative_to(OUT.parent.parent)} ({result['seconds']:.0f} s)")
    return result


# ------------------------------------------------------------------------------------------- data sets
def _cached(marker: Path, spec: dict) -> bool:
    try:
        return {k: v for k, v in json.loads(marker.read_text()).items() if k in spec} == spec
    except (OSError, ValueError):
        return False


def collected_root() -> Path:
    """100,000 real frames: GAMES x RUNS x CKPTS x PER_CKPT, played by ale-py (random policy, sticky actions)."""
    from atari_pb.data.collect import CollectConfig, collect
    from atari_pb.games import resolve_games

    root = OUT / "collected"
    marker = OUT / "collected.json"
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
    OUT.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({**spec, "seconds": round(seconds, 1)}, indent=1) + "\n")
    return root


def _real_pool() -> dict[str, np.ndarray]:
    """The 100,000 collected transitions, interleaved in blocks of BIG_BLOCK from the 16 checkpoints in turn,
    so that any prefix of a few thousand frames mixes all four games."""
    from atari_pb.data.replay_format import STORE_FIELDS, read_store_prefix, replay_file
    from atari_pb.games import get_game

    root = collected_root()
    sources = [(g, r, c) for g in GAMES for r in RUNS for c in CKPTS]
    arrays = {
        field: [
            read_store_prefix(replay_file(root, get_game(g).replay_name, r, field, c), field, PER_CKPT)[0]
            for g, r, c in sources
        ]
        for field in STORE_FIELDS
    }
    pool = {}
    for field, per_src in arrays.items():
        parts = [src[b : b + BIG_BLOCK] for b in range(0, PER_CKPT, BIG_BLOCK) for src in per_src]
        pool[field] = np.concatenate(parts)
    return pool


def big_source(frames: int, compresslevel: int = DOPAMINE_LEVEL) -> tuple[Path, dict]:
    """A DQN-Replay checkpoint of `frames` transitions (ckpt 0 of run 1 of BIG_GAME) made of the real
    frames of `collected_root()`, streamed through GzipNpyWriter as many times as it takes."""
    from atari_pb.data.collect import invalid_range
    from atari_pb.data.replay_format import STORE_FIELDS, GzipNpyWriter, replay_file, write_gz_npy
    from atari_pb.games import get_game

    root = OUT / f"source_{frames}"
    marker = OUT / f"source_{frames}.json"
    spec = {
        "frames": frames,
        "compresslevel": compresslevel,
        "real_frames": REAL_FRAMES,
        "games": list(GAMES),
        "block": BIG_BLOCK,
    }
    game = get_game(BIG_GAME)
    path = replay_file(root, game.replay_name, 1, "observation", 0)
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
            replay_file(root, game.replay_name, 1, field, 0), dtype, (frames, *item_shape), compresslevel
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
    write_gz_npy(
        replay_file(root, game.replay_name, 1, "invalid_range", 0), invalid_range(0, frames), compresslevel
    )
    write_gz_npy(
        replay_file(root, game.replay_name, 1, "add_count", 0), np.array(frames, np.int64), compresslevel
    )
    seconds = time.perf_counter() - t0
    info = {
        **spec,
        "seconds": round(seconds, 1),
        "observation_file": str(path.relative_to(OUT.parent.parent)),
        "compressed_bytes": path.stat().st_size,
        "decompressed_bytes": frames * 84 * 84 + 128,
    }
    marker.write_text(json.dumps(info, indent=1) + "\n")
    log(f"wrote {path} ({info['compressed_bytes'] / 2**20:,.0f} MiB) in {seconds:.0f} s")
    return root, info


def link_checkpoints(root: Path, count: int) -> list[int]:
    """Make checkpoints 1..count-1 of the large source symlinks to checkpoint 0, so that several
    shards can be ingested from it (the page cache holds one copy)."""
    from atari_pb.data.replay_format import ALL_FIELDS, replay_file
    from atari_pb.games import get_game

    game = get_game(BIG_GAME)
    for ckpt in range(1, count):
        for field in ALL_FIELDS:
            link = replay_file(root, game.replay_name, 1, field, ckpt)
            if not link.is_symlink():
                link.unlink(missing_ok=True)
                link.symlink_to(replay_file(root, game.replay_name, 1, field, 0).name)
    return list(range(count))


def describe_source(info: dict) -> str:
    return (
        f"{info['frames']:,}-frame `$store$_observation_ckpt.0.gz` ({info['compressed_bytes'] / 2**20:,.0f} MiB "
        f"compressed, {info['decompressed_bytes'] / 2**30:.2f} GiB of .npy): {info['real_frames']:,} real ALE frames "
        f"({', '.join(info['games'])}; random policy, sticky actions; {len(RUNS)} runs x {len(CKPTS)} checkpoints x "
        f"{PER_CKPT:,} each) interleaved in blocks of {info['block']:,} and streamed "
        f"{info['frames'] / info['real_frames']:g}x through GzipNpyWriter at gzip level {info['compresslevel']} "
        "(Dopamine's level)"
    )


def sampler_shards(samples: int = 5_000) -> Path:
    """Shards of the first `samples` transitions of every collected checkpoint (16 shards, 4 games)."""
    from atari_pb.data.ingest import ingest
    from atari_pb.data.manifest import read_manifest
    from atari_pb.games import resolve_games

    src = collected_root()
    dst = OUT / f"shards_sampler_{samples}"
    want = len(GAMES) * len(RUNS) * len(CKPTS)
    if dst.is_dir() and len(read_manifest(dst)) == want:
        return dst
    log(f"ingesting {want} shards of {samples:,} transitions into {dst} (once; cached)")
    report = ingest(src, dst, resolve_games(GAMES), RUNS, CKPTS, samples, workers=2)
    if report.errors:
        raise RuntimeError("; ".join(report.errors))
    return dst


def dir_bytes(root: Path, pattern: str = "**/*.h5") -> int:
    return sum(p.stat().st_size for p in Path(root).glob(pattern) if p.is_file())
