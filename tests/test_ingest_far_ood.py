"""`atari-pb ingest --layout atari_pb_far_ood`: the released Far-OOD BC buffer dumps (real ALE frames,
written as the released PERBuffer.save_buffer writes them) -> shards, verify, sampler, and bad input."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from atari_pb.data import ShardSet
from atari_pb.envs.atari import EnvConfig, make_vector_env, num_actions
from atari_pb.games import get_game

GAMES = ["surround", "basic_math"]
RUN, CKPT = 1, 2
STEPS = 400  # transitions in each dump
SAMPLES = 300  # ingested: the first SAMPLES
FIELDS = ("observation", "action", "reward", "terminal")


def atari_pb(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "atari_pb", "--log-level", "WARNING", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def save_buffer(folder: Path, buffers: dict[str, np.ndarray]) -> None:
    """As the released per_buffer.py:224-246 does: gzip.open + np.save, the stack's last frame."""
    folder.mkdir(parents=True, exist_ok=True)
    for field, array in buffers.items():
        with gzip.open(folder / f"{field}_{RUN}_{CKPT}.gz", "wb") as f:
            np.save(f, array[:, -1] if field == "observation" else array)


def play(game: str, seed: int) -> dict[str, np.ndarray]:
    """The released PERBuffer's arrays: uint8 frame stacks, float64 action/reward/done (np.zeros(size))."""
    g = get_game(game)
    env, obs = make_vector_env(g, 1, EnvConfig(), seed)
    rng = np.random.default_rng(seed)
    buf = {
        "observation": np.zeros((STEPS, 4, 84, 84), np.uint8),
        **{k: np.zeros(STEPS) for k in FIELDS[1:]},
    }
    for t in range(STEPS):
        action = rng.integers(num_actions(g), size=1)
        next_obs, reward, term, trunc, info = env.step(action)
        done = term[0] or trunc[0] or info["lost_life"][0]  # the released env's done (episodic lives)
        buf["observation"][t], buf["action"][t] = obs[0], action[0]
        buf["reward"][t], buf["terminal"][t] = np.sign(reward[0]), float(done)
        obs = next_obs
    env.close()
    buf["terminal"][[50, SAMPLES - 1]] = 1.0  # episode ends inside and at the end of the prefix
    return buf


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> tuple[Path, dict[str, dict[str, np.ndarray]]]:
    root = tmp_path_factory.mktemp("far_ood_released")
    written = {}
    for seed, game in enumerate(GAMES):
        buf = play(game, seed)
        save_buffer(root / get_game(game).replay_name, buf)
        written[game] = {**buf, "observation": buf["observation"][:, -1]}
    return root, written


def dataset_yaml(path: Path, games=GAMES) -> Path:
    path.write_text(
        f"games: [{', '.join(games)}]\nruns: [{RUN}]\nckpts: [{CKPT}]\nsamples_per_ckpt: {SAMPLES}\n"
        "layout: atari_pb_far_ood\n"
    )
    return path


@pytest.fixture(scope="module")
def shards(released, tmp_path_factory) -> Path:
    src, _ = released
    tmp = tmp_path_factory.mktemp("far_ood_shards")
    dst = tmp / "shards"
    proc = atari_pb("ingest", src, dst, "--dataset", dataset_yaml(tmp / "sel.yaml"))
    assert proc.returncode == 0, proc.stderr
    return dst


def test_shards_hold_the_released_prefix(released, shards):
    _, written = released
    manifest = {e["game"]: e for e in json.loads((shards / "manifest.json").read_text())["shards"]}
    assert sorted(manifest) == sorted(GAMES)
    for game in GAMES:
        entry = manifest[game]
        replay_name = get_game(game).replay_name
        assert (entry["run"], entry["ckpt"], entry["length"]) == (RUN, CKPT, SAMPLES)
        assert entry["source"] == f"atari_pb_far_ood:{replay_name}/observation_{RUN}_{CKPT}.gz"
        assert entry["origin"] == "atari_pb_far_ood"  # the leaderboard's pre-training data (provenance.py)
        with h5py.File(shards / entry["path"]) as f:
            for field in FIELDS:
                np.testing.assert_array_equal(f[field][:], written[game][field][:SAMPLES])
            assert f["action"].dtype == np.int32 and f["terminal"].dtype == np.uint8
            assert f["invalid_range"].shape == (0,)
            assert f.attrs["layout"] == "atari_pb_far_ood" and f.attrs["source_length"] == STEPS
            assert list(f.attrs["sources"]) == [f"{replay_name}/{fld}_{RUN}_{CKPT}.gz" for fld in FIELDS]
            assert f["action"][:].max() < num_actions(game)


def test_verify_and_sampler(released, shards):
    proc = atari_pb("verify", shards)
    assert proc.returncode == 0, proc.stderr
    data = ShardSet(shards)
    assert len(data) == len(GAMES) * SAMPLES
    batch = data.sample(16, frames=4, n_step=3, seed=0)
    assert batch["obs"].shape == (16, 1, 4, 84, 84)
    assert int(batch["action"].max()) < max(num_actions(g) for g in GAMES)


def test_the_flag_and_the_dataset_file(released, tmp_path):
    src, _ = released
    flags = ["--games", "surround", "--runs", RUN, "--ckpts", CKPT, "--samples-per-ckpt", 10]
    proc = atari_pb("ingest", src, tmp_path / "a", *flags, "--layout", "atari_pb_far_ood")
    assert proc.returncode == 0, proc.stderr
    proc = atari_pb("ingest", src, tmp_path / "b", *flags)  # the default layout: told which one to use
    assert proc.returncode == 2 and "--layout atari_pb_far_ood" in proc.stderr
    assert not (tmp_path / "b").exists()
    shipped = Path(__file__).resolve().parents[1] / "datasets" / "far_ood_released.yaml"
    proc = atari_pb("ingest", src, tmp_path / "c", "--dataset", shipped)  # 3 of its games are not there
    assert proc.returncode == 2 and "HumanCannonball does not exist" in proc.stderr


def broken(released, tmp_path: Path, game: str, field: str, array: np.ndarray | None) -> Path:
    src = tmp_path / "src"
    shutil.copytree(released[0], src)
    if array is not None:
        with gzip.open(src / get_game(game).replay_name / f"{field}_{RUN}_{CKPT}.gz", "wb") as f:
            np.save(f, array)
    return src


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if "error" in line]


@pytest.mark.parametrize(
    "field, array, expected",
    [
        ("action", np.zeros((STEPS, 2, 2)), "(N,) of numbers"),
        ("observation", np.zeros((STEPS, 84, 84), np.float32), "uint8 (N, 84, 84)"),
        ("observation", np.zeros((STEPS, 4, 84, 84), np.uint8), "uint8 (N, 84, 84)"),
        (
            "action",
            np.full(STEPS, float(num_actions("basic_math"))),
            "action 5.0 at index 0 (300 such) is not an index into basic_math's released action set (integers 0..4)",
        ),
        ("action", np.full(STEPS, 0.5), "released action set"),
        ("terminal", np.full(STEPS, 2.0), "expected 0 or 1"),
        ("reward", np.zeros(STEPS - 1), "differ in length"),
    ],
)
def test_bad_files(released, tmp_path, field, array, expected):
    src = broken(released, tmp_path, "basic_math", field, array)
    dst = tmp_path / "shards"
    proc = atari_pb("ingest", src, dst, "--dataset", dataset_yaml(tmp_path / "sel.yaml"))
    assert proc.returncode == 1, proc.stderr
    lines = error_lines(proc)
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    bad_file = "differ" in expected and "action" or field
    assert f"BasicMath/{bad_file}_{RUN}_{CKPT}.gz" in lines[0]
    assert not (dst / "basic_math" / f"run{RUN}_ckpt{CKPT}.h5").exists()
    manifest = dst / "manifest.json"
    if manifest.exists():
        assert "basic_math" not in manifest.read_text()
    assert not list(dst.rglob("*.tmp")) if dst.exists() else True


def test_wrong_layout_requests(released, tmp_path):
    src = broken(released, tmp_path, "basic_math", "action", None)
    sel = ["--dataset", dataset_yaml(tmp_path / "sel.yaml")]
    logs = src / "BasicMath" / str(RUN) / "replay_logs"
    logs.mkdir(parents=True)
    (logs / f"$store$_observation_ckpt.{CKPT}.gz").write_bytes(b"")
    proc = atari_pb("ingest", src, tmp_path / "a", *sel)
    assert proc.returncode == 2 and "--layout dqn_replay" in proc.stderr and "BasicMath" in proc.stderr
    shutil.rmtree(src / "BasicMath" / str(RUN))
    proc = atari_pb("ingest", src, tmp_path / "b", *sel, "ckpts=[3]")
    assert proc.returncode == 2 and "Surround/observation_1_3.gz does not exist" in proc.stderr
    assert "1_2" in proc.stderr  # what is there
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
