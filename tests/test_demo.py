"""`make demo`, the README's first command, end to end in a scratch directory: collect, ingest, verify,
pre-train two tiny encoders, offline BC and Rainbow for them and the random baseline on every demo game,
AtariARI probes of them and the random and pixels baselines on the annotated demo games, evaluation tables for the three splits, the leaderboard. The budgets are cut further than the demo's own
(Makefile DEMO_* variables) so the test takes minutes; the stages and files are the demo's."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from atari_pb.eval.records import read_records
from atari_pb.games import get_game

REPO = Path(__file__).resolve().parent.parent
QUICK = {
    "DEMO_STEPS": "30",
    "DEMO_BC": "train.max_steps=20 train.batch_size=32",
    "DEMO_RAINBOW": "train.env_steps=160 train.learning_starts=120 train.updates_per_step=1 "
    "train.batch_size=8 train.eps_decay_steps=20 replay.capacity=2000 agent.n_step=3",
    "DEMO_EVAL": "--episodes 1 --eval-envs 1 eval.env.horizon=200",
    "DEMO_PROBE": "train.epochs=15",
    "DEMO_PROBE_GAMES": "boxing pong",
}
GAMES = {"boxing": "id", "breakout": "id", "freeway": "id", "pong": "near_ood", "surround": "far_ood"}
PROBE_GAMES = ["boxing", "pong"]  # two of the annotated demo games (the demo: all four)


def dqn_normalized(game: str, score: float) -> float:
    """Agarwal et al.'s normalisation as the released Atari-PB logger writes it (src/common/logger.py:345-347,
    + 1e-6 in the range), from the game table (not the library's helper)."""
    g = get_game(game)
    lo, hi = sorted((g.random_score, g.reference_score))
    return (score - lo) / (hi - lo + 1e-6)


def _make_demo(tmp: Path) -> subprocess.CompletedProcess:
    variables = [f"{k}={v}" for k, v in QUICK.items()]
    variables += [f"DATA_ROOT={tmp / 'data'}", f"DEMO_DIR={tmp / 'runs'}"]
    return subprocess.run(
        ["make", "--no-print-directory", "demo", *variables],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1500,
        env={**os.environ, "CI": "true"},
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    proc = _make_demo(tmp)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp, proc


@pytest.mark.slow
def test_demo_writes_a_leaderboard_whose_rows_match_the_records(demo):
    tmp, proc = demo
    runs = tmp / "runs"
    for obj in ("curl", "siammae"):
        assert (runs / obj / "encoder.safetensors").is_file()
    records = read_records(runs / "results")
    expected = {
        (m, p, GAMES[g], g, 0)
        for m in ("curl", "siammae", "random")
        for p in ("offline_bc", "rainbow")
        for g in GAMES
    }
    expected |= {
        (m, "probe", GAMES[g], g, 0) for m in ("curl", "siammae", "random", "pixels") for g in PROBE_GAMES
    }
    assert {(r.method, r.protocol, r.split, r.game, r.seed) for r in records} == expected
    assert all(0.0 <= r.score <= 1.0 for r in records if r.protocol == "probe")

    rows = {}  # game-scale protocols in leaderboard.csv, the probes' F1 in leaderboard_f1.csv
    for name in ("leaderboard.csv", "leaderboard_f1.csv"):
        with open(runs / "leaderboard" / name) as f:
            rows |= {(r["method"], r["protocol"], r["split"]): r for r in csv.DictReader(f)}
    groups = {(r.method, r.protocol, r.split) for r in records}
    assert rows.keys() == groups
    for (method, protocol, split), row in rows.items():
        mine = [r for r in records if (r.method, r.protocol, r.split) == (method, protocol, split)]
        # probe scores are mean F1 (not normalised); the others DQN-normalised
        normalized = [r.score if protocol == "probe" else dqn_normalized(r.game, r.score) for r in mine]
        assert int(row["n_games"]) == len({r.game for r in mine}) and int(row["n_seeds"]) == 1
        assert float(row["mean"]) == pytest.approx(np.mean(normalized), abs=1e-6)
        assert float(row["median"]) == pytest.approx(np.median(normalized), abs=1e-6)
        assert float(row["iqm_low"]) <= float(row["iqm"]) <= float(row["iqm_high"])
    for name in ("index.html", "leaderboard.md", "leaderboard.tex"):
        assert (runs / "leaderboard" / name).stat().st_size > 0
    assert list((runs / "leaderboard").glob("*.png"))
    # the evaluation tables were printed, one per split, with a row per method and protocol
    assert proc.stdout.count("| Method |") >= 3, proc.stdout[-2000:]
    for method in ("curl", "siammae", "random"):
        assert f"| {method} | offline_bc |" in proc.stdout
    for method in ("curl", "siammae", "random", "pixels"):
        assert f"| {method} | probe |" in proc.stdout, proc.stdout[-3000:]


@pytest.mark.slow
def test_demo_again_recomputes_nothing(demo):
    tmp, _ = demo
    results = tmp / "runs" / "results"
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in results.rglob("*.json")}
    encoders = {p: p.stat().st_mtime_ns for p in (tmp / "runs").glob("*/encoder.safetensors")}
    proc = _make_demo(tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in results.rglob("*.json")} == before
    assert {p: p.stat().st_mtime_ns for p in (tmp / "runs").glob("*/encoder.safetensors")} == encoders
    assert json.loads((tmp / "data" / "shards" / "demo" / "manifest.json").read_text())
