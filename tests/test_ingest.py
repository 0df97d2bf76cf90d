"""Ingest and verify through the real command line: shards, manifest, kill-and-resume, and bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from atari_pb.data.manifest import sha256_file
from atari_pb.data.replay_format import replay_file

from .conftest import CKPTS, GAMES, RUNS, SAMPLES, load_source, rewrite_source

SELECTION = ["--games", *GAMES, "--runs", *map(str, RUNS), "--ckpts", *map(str, CKPTS)]


def atari_pb(*args, check: bool = False, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "atari_pb", "--log-level", "WARNING", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        **kw,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_shards_hold_the_source_prefix(shard_dir, replay_tree):
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    assert len(manifest["shards"]) == len(GAMES) * len(RUNS) * len(CKPTS)
    for entry in manifest["shards"]:
        path = shard_dir / entry["path"]
        assert sha256_file(path) == entry["sha256"] and entry["length"] == SAMPLES
        with h5py.File(path) as f:
            for field in ("observation", "action", "reward", "terminal"):
                src = load_source(replay_tree, entry["game"], entry["run"], field, entry["ckpt"])[:SAMPLES]
                np.testing.assert_array_equal(f[field][:], src)  # NaN rewards compare equal here
            assert f["observation"].chunks is None and f["observation"].dtype == np.uint8
            np.testing.assert_array_equal(
                f["invalid_range"][:],
                load_source(replay_tree, entry["game"], entry["run"], "invalid_range", entry["ckpt"]),
            )
            assert (f.attrs["game"], f.attrs["run"], f.attrs["ckpt"]) == (
                entry["game"],
                entry["run"],
                entry["ckpt"],
            )


def test_verify_passes_then_names_a_changed_shard(shard_dir, tmp_path):
    copy = tmp_path / "shards"
    shutil.copytree(shard_dir, copy)
    assert atari_pb("verify", copy).returncode == 0
    victim = copy / "pong" / "run2_ckpt1.h5"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    proc = atari_pb("verify", copy)
    assert proc.returncode == 1
    assert "pong/run2_ckpt1.h5" in proc.stderr and "SHA-256" in proc.stderr
    assert "breakout" not in proc.stderr
    (copy / "breakout" / "run1_ckpt0.h5").unlink()
    proc = atari_pb("verify", copy)
    assert proc.returncode == 1 and "breakout/run1_ckpt0.h5: missing" in proc.stderr


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _listed(dst: Path) -> int:
    try:
        return len(json.loads((dst / "manifest.json").read_text())["shards"])
    except (OSError, ValueError):
        return 0


@pytest.mark.slow
def test_kill_and_resume_is_byte_identical(replay_tree, shard_dir, tmp_path):
    dst = tmp_path / "shards"
    cmd = [
        sys.executable,
        "-m",
        "atari_pb",
        "--log-level",
        "WARNING",
        "ingest",
        replay_tree,
        dst,
        *SELECTION,
        "--samples-per-ckpt",
        SAMPLES,
        "--workers",
        2,
    ]
    rng = np.random.default_rng(0)
    for wait_for in (0, 1, 3, 5):  # kill before any shard, then after 1, 3 and 5 shards are recorded
        proc = subprocess.Popen(list(map(str, cmd)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        if wait_for == 0:
            time.sleep(rng.uniform(0.2, 1.0))
        while _listed(dst) < wait_for and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        workers = _children(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for w in workers:  # workers die with their parent (or, still starting, as soon as they notice)
            for _ in range(3000):
                if not Path(f"/proc/{w}").exists() or "Z" in Path(f"/proc/{w}/stat").read_text().split()[2]:
                    break
                time.sleep(0.01)
            else:
                pytest.fail(f"worker {w} outlived the killed ingest")
        if (dst / "manifest.json").exists():  # whatever the manifest lists is whole
            assert atari_pb("verify", dst).returncode == 0
    atari_pb(*cmd[3:], check=True)
    assert tree_bytes(dst) == tree_bytes(shard_dir)


@pytest.fixture
def small_tree(replay_tree, tmp_path) -> Path:
    """Pong run 1 alone, copied so that a test can damage it."""
    root = tmp_path / "replay"
    shutil.copytree(replay_tree / "Pong" / "1", root / "Pong" / "1")
    return root


def _ingest_pong(src, dst, *extra):
    return atari_pb(
        "ingest",
        src,
        dst,
        "--games",
        "pong",
        "--runs",
        1,
        "--ckpts",
        0,
        1,
        "--samples-per-ckpt",
        SAMPLES,
        *extra,
    )


def _obs(root, ckpt=1) -> Path:
    return replay_file(root, "Pong", 1, "observation", ckpt)


def _assert_bad_source_not_finished(dst: Path):
    listed = {e["path"] for e in json.loads((dst / "manifest.json").read_text())["shards"]}
    assert listed == {"pong/run1_ckpt0.h5"}  # the good checkpoint is finished ...
    assert not (dst / "pong" / "run1_ckpt1.h5").exists()  # ... the bad one left nothing behind
    assert not list(dst.rglob("*.tmp"))


def test_truncated_gz_then_repaired(small_tree, tmp_path):
    good = _obs(small_tree).read_bytes()
    _obs(small_tree).write_bytes(good[: len(good) // 3])
    dst = tmp_path / "shards"
    proc = _ingest_pong(small_tree, dst)
    assert proc.returncode == 1
    assert str(_obs(small_tree)) in proc.stderr and "truncated" in proc.stderr
    _assert_bad_source_not_finished(dst)
    finished = dst / "pong" / "run1_ckpt0.h5"
    before = (finished.stat().st_ino, finished.stat().st_mtime_ns)
    _obs(small_tree).write_bytes(good)
    assert _ingest_pong(small_tree, dst).returncode == 0
    assert (finished.stat().st_ino, finished.stat().st_mtime_ns) == before  # not redone
    assert _listed(dst) == 2 and atari_pb("verify", dst).returncode == 0


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_corrupt_gz_is_caught_with_full_check(small_tree, tmp_path, where):
    """Garbage inside a deflate stream can decode without a zlib error; the CRC-32 at the end catches it.
    A prefix read never reaches the CRC, so `--full-check` reads on (DESIGN: the price is the full file)."""
    data = bytearray(_obs(small_tree).read_bytes())
    at = int(len(data) * where)
    data[at : at + 400] = np.random.default_rng(0).integers(0, 256, 400, dtype=np.uint8).tobytes()
    _obs(small_tree).write_bytes(bytes(data))
    proc = _ingest_pong(small_tree, tmp_path / "shards", "--full-check")
    assert proc.returncode == 1 and str(_obs(small_tree)) in proc.stderr and "corrupt" in proc.stderr
    _assert_bad_source_not_finished(tmp_path / "shards")


def test_corrupt_small_file_is_caught_without_full_check(small_tree, tmp_path):
    path = replay_file(small_tree, "Pong", 1, "action", 1)
    data = bytearray(path.read_bytes())
    data[-6] ^= 0xFF  # inside the CRC-32 trailer
    path.write_bytes(bytes(data))
    proc = _ingest_pong(small_tree, tmp_path / "shards")
    assert proc.returncode == 1 and str(path) in proc.stderr and "corrupt" in proc.stderr


def test_not_gzip_at_all(small_tree, tmp_path):
    _obs(small_tree).write_bytes(b"this is not a gzip file" * 100)
    proc = _ingest_pong(small_tree, tmp_path / "shards")
    assert proc.returncode == 1 and str(_obs(small_tree)) in proc.stderr
    assert not (tmp_path / "shards").exists()  # caught while checking headers: nothing written


@pytest.mark.parametrize(
    "array,words",
    [
        (np.zeros((SAMPLES, 84, 84), np.float32), "dtype float32"),
        (np.zeros((SAMPLES, 64, 64), np.uint8), "shape (1000, 64, 64)"),
        (np.zeros((SAMPLES - 1, 84, 84), np.uint8), "has 999 transitions"),
    ],
)
def test_wrong_dtype_shape_or_length(small_tree, tmp_path, array, words):
    rewrite_source(small_tree, "pong", 1, "observation", 1, array)
    proc = _ingest_pong(small_tree, tmp_path / "shards")
    assert proc.returncode == 1 and words in proc.stderr and str(_obs(small_tree)) in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_missing_file(small_tree, tmp_path):
    victim = replay_file(small_tree, "Pong", 1, "terminal", 0)
    victim.unlink()
    proc = _ingest_pong(small_tree, tmp_path / "shards")
    assert proc.returncode == 2 and str(victim) in proc.stderr
    assert not (tmp_path / "shards").exists()


@pytest.mark.parametrize(
    "args,words",
    [
        (["--games", "pongg", "--runs", 1, "--ckpts", 0], "unknown game 'pongg' (did you mean pong?)"),
        (["--games", "pong", "--runs", 3, "--ckpts", 0], "runs of Pong: 1"),
        (["--games", "pong", "--runs", 1, "--ckpts", 7], "checkpoints of Pong run 1: 0, 1"),
        (["--games", "breakout", "--runs", 1, "--ckpts", 0], "games in"),
        (["--games", "pong", "--runs", 1, "--ckpts", 0, "bogus.key=1"], "unknown key 'bogus'"),
        (["--games", "pong", "--runs", 1, "--ckpts", 0, "samples_per_ckpt=many"], "bad value"),
    ],
)
def test_bad_requests_write_nothing(small_tree, tmp_path, args, words):
    dst = tmp_path / "shards"
    extra = [] if any("samples_per_ckpt" in str(a) for a in args) else ["--samples-per-ckpt", 10]
    proc = atari_pb("ingest", small_tree, dst, *args, *extra)
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not dst.exists()


def test_destination_is_a_file(small_tree, tmp_path):
    dst = tmp_path / "file"
    dst.write_text("keep me")
    proc = _ingest_pong(small_tree, dst)
    assert proc.returncode == 2 and "is a file" in proc.stderr and dst.read_text() == "keep me"


def test_other_length_into_finished_destination_is_refused(small_tree, tmp_path):
    dst = tmp_path / "shards"
    assert _ingest_pong(small_tree, dst).returncode == 0
    before = tree_bytes(dst)
    proc = atari_pb(
        "ingest", small_tree, dst, "--games", "pong", "--runs", 1, "--ckpts", 0, "--samples-per-ckpt", 500
    )
    assert proc.returncode == 2 and "already holds 1000" in proc.stderr
    assert tree_bytes(dst) == before


def test_ingest_from_dataset_file_with_workers(small_tree, tmp_path):
    cfg = tmp_path / "mini.yaml"
    cfg.write_text("games: [pong]\nruns: [1]\nckpts: [0, 1]\nsamples_per_ckpt: 300\n")
    dst = tmp_path / "shards"
    proc = atari_pb("ingest", small_tree, dst, "--dataset", cfg, "--workers", 2)
    assert proc.returncode == 0, proc.stderr
    assert [e["length"] for e in json.loads((dst / "manifest.json").read_text())["shards"]] == [300, 300]
    assert sorted(os.listdir(dst / "pong")) == ["run1_ckpt0.h5", "run1_ckpt1.h5"]


def test_manifest_records_where_each_shard_came_from(shard_dir, small_tree, tmp_path):
    """A collected run (collect.json beside replay_logs/) gives origin collect; the same layout without it
    is downloaded DQN-Replay. The leaderboard shows what encoders were pre-trained on from this."""
    from atari_pb.data.collect import RECORD_NAME
    from atari_pb.data.ingest import ingest
    from atari_pb.data.manifest import read_manifest
    from atari_pb.data.shard import COLLECT_RECORD
    from atari_pb.games import resolve_games

    assert COLLECT_RECORD == RECORD_NAME  # shard.py names collect.py's record without importing it
    # the session's tree was collected
    assert {e.origin for e in read_manifest(shard_dir).values()} == {"collect"}
    (small_tree / "Pong" / "1" / RECORD_NAME).unlink()
    dst = tmp_path / "shards"
    report = ingest(small_tree, dst, resolve_games(["pong"]), [1], [0], 200)
    assert not report.errors
    assert [e.origin for e in read_manifest(dst).values()] == ["dqn_replay"]
