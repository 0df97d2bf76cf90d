"""Shared fixtures: real Atari frames collected with ale-py, ingested once per test session."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from atari_pb.data.collect import CollectConfig, collect
from atari_pb.data.ingest import ingest
from atari_pb.data.replay_format import replay_file, write_gz_npy
from atari_pb.games import get_game, resolve_games

TRANSITIONS = 1200  # per collected checkpoint
SAMPLES = 1000  # per shard: a prefix, as in Atari-PB
GAMES = ["pong", "breakout"]
RUNS = [1, 2]
CKPTS = [0, 1]


def load_source(root: Path, game: str, run: int, field: str, ckpt: int) -> np.ndarray:
    """A DQN-Replay array read whole with numpy's own loader (independent of atari_pb's reader)."""
    with gzip.open(replay_file(root, get_game(game).replay_name, run, field, ckpt)) as f:
        return np.load(f, allow_pickle=False)


def rewrite_source(root: Path, game: str, run: int, field: str, ckpt: int, array: np.ndarray) -> None:
    write_gz_npy(replay_file(root, get_game(game).replay_name, run, field, ckpt), array)


@pytest.fixture(scope="session")
def replay_tree(tmp_path_factory) -> Path:
    """Real ALE frames in DQN-Replay format, with the awkward cases real data has planted on purpose:
    NaN and large raw rewards, invalid ranges inside and at both edges of a checkpoint, episode ends at
    the first and the last index of a checkpoint, a reward just after an episode end."""
    root = tmp_path_factory.mktemp("replay")
    collect(root, resolve_games(GAMES), RUNS, CKPTS, CollectConfig(transitions_per_ckpt=TRANSITIONS, seed=1))
    reward = load_source(root, "pong", 1, "reward", 0).copy()
    reward[[5, 50, 700]] = np.nan
    reward[100], reward[101] = 5.0, -3.0
    reward[301] = 1.0  # a reward right after an episode end: n-step returns must not reach it
    rewrite_source(root, "pong", 1, "reward", 0, reward)
    terminal = load_source(root, "pong", 1, "terminal", 0).copy()
    terminal[300] = 1
    rewrite_source(root, "pong", 1, "terminal", 0, terminal)
    rewrite_source(root, "pong", 1, "invalid_range", 1, np.arange(600, 605))  # inside
    rewrite_source(
        root, "breakout", 2, "invalid_range", 1, np.arange(SAMPLES - 5, SAMPLES)
    )  # at the prefix end
    terminal = load_source(root, "breakout", 1, "terminal", 0).copy()
    terminal[0] = terminal[SAMPLES - 1] = 1
    rewrite_source(root, "breakout", 1, "terminal", 0, terminal)
    return root


@pytest.fixture(scope="session")
def shard_dir(replay_tree, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("shards")
    report = ingest(replay_tree, dst, resolve_games(GAMES), RUNS, CKPTS, SAMPLES)
    assert not report.errors
    return dst


def run_cli(*args, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m atari_pb ARGS` in a real process, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "atari_pb", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_error_line(proc: subprocess.CompletedProcess, code: int) -> str:
    """The CLI's contract for a bad request or bad data: exit `code` and one `atari-pb: error:` line."""
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("atari-pb: error: "), proc.stderr
    return lines[0]
