"""`atari-pb collect`: real ALE play written in the DQN-Replay on-disk format."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from atari_pb.data.collect import CollectConfig, collect
from atari_pb.data.replay_format import replay_file
from atari_pb.errors import UsageError
from atari_pb.games import get_game

from .test_ingest import atari_pb


def _load(path):
    with gzip.open(path) as f:
        return np.load(f, allow_pickle=False)


@pytest.fixture(scope="module")
def pong(tmp_path_factory):
    root = tmp_path_factory.mktemp("pong")
    collect(root, [get_game("pong")], [1, 2], [3, 4], CollectConfig(transitions_per_ckpt=1500, seed=0))
    return root


def test_files_dtypes_and_shapes(pong):
    logs = pong / "Pong" / "1" / "replay_logs"
    names = sorted(p.name for p in logs.iterdir())
    assert names == sorted(
        [f"$store$_{f}_ckpt.{k}.gz" for f in ("observation", "action", "reward", "terminal") for k in (3, 4)]
        + [f"{f}_ckpt.{k}.gz" for f in ("add_count", "invalid_range") for k in (3, 4)]
    )
    obs = _load(logs / "$store$_observation_ckpt.3.gz")
    assert obs.dtype == np.uint8 and obs.shape == (1500, 84, 84)
    assert _load(logs / "$store$_action_ckpt.3.gz").dtype == np.int32
    assert _load(logs / "$store$_reward_ckpt.3.gz").dtype == np.float32
    assert _load(logs / "$store$_terminal_ckpt.3.gz").dtype == np.uint8
    assert _load(logs / "add_count_ckpt.4.gz") == 5 * 1500  # Dopamine counts every add so far
    np.testing.assert_array_equal(_load(logs / "invalid_range_ckpt.4.gz"), [1499, 0, 1, 2, 3])


def test_frames_are_real_pong(pong):
    obs = np.concatenate([_load(replay_file(pong, "Pong", 1, "observation", k)) for k in (3, 4)])
    assert 0 < obs.mean() < 255 and len(np.unique(obs[100])) > 2  # a picture, not a constant
    assert (np.abs(np.diff(obs.astype(np.int16), axis=0)).sum(axis=(1, 2)) > 0).mean() > 0.9  # it moves
    actions = _load(replay_file(pong, "Pong", 1, "action", 3))
    assert set(np.unique(actions)) == set(range(6))  # Pong's minimal action set


def test_pong_episodes_end_when_a_side_reaches_21(pong):
    """Checkpoints 3 and 4 of a run are consecutive stretches of one stream: whole episodes inside them
    follow Pong's rules, which only a real emulator gets right."""
    reward = np.concatenate(
        [_load(replay_file(pong, "Pong", r, "reward", k)) for r in (1, 2) for k in (3, 4)]
    )
    terminal = np.concatenate(
        [_load(replay_file(pong, "Pong", r, "terminal", k)) for r in (1, 2) for k in (3, 4)]
    )
    ends = np.flatnonzero(terminal)
    whole = [(a + 1, b) for a, b in zip(ends[:-1], ends[1:]) if b // 3000 == (a + 1) // 3000]  # same run
    assert whole, "no whole episode collected"
    for a, b in whole:
        r = reward[a : b + 1]
        assert max((r == 1).sum(), (r == -1).sum()) == 21


def test_deterministic_and_independent_of_grouping(pong, tmp_path):
    collect(tmp_path, [get_game("pong")], [2], [3], CollectConfig(transitions_per_ckpt=1500, seed=0))
    for field in ("observation", "action", "reward", "terminal"):
        a = replay_file(pong, "Pong", 2, field, 3).read_bytes()
        b = replay_file(tmp_path, "Pong", 2, field, 3).read_bytes()
        assert a == b, field
    assert (
        replay_file(pong, "Pong", 1, "action", 3).read_bytes()
        != replay_file(pong, "Pong", 2, "action", 3).read_bytes()
    )


def test_cross_domain_random_collection_via_cli(tmp_path):
    proc = atari_pb(
        "collect", tmp_path, "--games", "breakout", "klax", "--runs", 1, "--ckpts", 0, "--transitions", 200
    )
    assert proc.returncode == 0, proc.stderr
    for game in ("Breakout", "Klax"):
        assert _load(replay_file(tmp_path, game, 1, "observation", 0)).shape == (200, 84, 84)


@pytest.mark.parametrize(
    "args,words",
    [
        (
            ["--games", "pong", "--runs", 1, "--ckpts", 0, "--policy", "greedy"],
            "unknown policy 'greedy'; valid policies: random",
        ),
        (["--games", "pong", "--runs", 0, "--ckpts", 0], "must be distinct integers >= 1"),
        (["--games", "pongo", "--runs", 1, "--ckpts", 0], "unknown game"),
        (["--games", "pong", "--runs", 1, "--ckpts", 0, "--transitions", 2], "at least 5"),
        (
            ["--games", "pong", "--runs", 1, "--ckpts", 0, "collect.reward=sign"],
            "reward='sign': must be one of clipped, raw",
        ),
    ],
)
def test_bad_requests(tmp_path, args, words):
    proc = atari_pb("collect", tmp_path / "out", *args)
    assert proc.returncode == 2 and words in proc.stderr
    assert not (tmp_path / "out").exists()


def test_rerun_skips_finished_runs_and_refuses_other_settings(pong, tmp_path):
    import shutil

    shutil.copytree(pong, tmp_path / "t")
    path = replay_file(tmp_path / "t", "Pong", 1, "observation", 3)
    stamp = path.stat().st_mtime_ns
    collect(
        tmp_path / "t", [get_game("pong")], [1, 2], [3, 4], CollectConfig(transitions_per_ckpt=1500, seed=0)
    )
    assert path.stat().st_mtime_ns == stamp  # finished: not played again
    with pytest.raises(UsageError, match="collected with other settings"):
        collect(
            tmp_path / "t", [get_game("pong")], [1], [3, 4], CollectConfig(transitions_per_ckpt=1500, seed=9)
        )
    assert path.stat().st_mtime_ns == stamp


def test_destination_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        collect(tmp_path / "f", [get_game("pong")], [1], [0], CollectConfig(transitions_per_ckpt=10))


@pytest.fixture(scope="module")
def boxing(tmp_path_factory):
    """Boxing played twice with the same seed, rewards stored clipped (the default) and raw: a random
    policy ignores rewards, so both runs are the same play. Boxing scores 2 for a close punch."""
    roots = {}
    for reward in ("clipped", "raw"):
        roots[reward] = tmp_path_factory.mktemp(f"boxing_{reward}")
        cfg = CollectConfig(
            transitions_per_ckpt=1000, seed=0, **({"reward": reward} if reward == "raw" else {})
        )
        collect(roots[reward], [get_game("boxing")], [1], [0], cfg)
    return roots


def test_rewards_are_clipped_as_dqn_replay_stores_them(boxing):
    clipped = _load(replay_file(boxing["clipped"], "Boxing", 1, "reward", 0))
    raw = _load(replay_file(boxing["raw"], "Boxing", 1, "reward", 0))
    assert clipped.dtype == raw.dtype == np.float32
    assert np.abs(raw).max() > 1 and (raw > 1).any() and (raw < -1).any()  # the game's own scores
    assert set(np.unique(clipped)) <= {-1.0, 0.0, 1.0}  # DQN-Replay's $store$_reward values
    np.testing.assert_array_equal(clipped, np.clip(raw, -1, 1))
    np.testing.assert_array_equal(np.sign(clipped), np.sign(raw))
    for field in ("observation", "action", "terminal"):  # the same play: only the rewards differ
        assert (
            replay_file(boxing["clipped"], "Boxing", 1, field, 0).read_bytes()
            == replay_file(boxing["raw"], "Boxing", 1, field, 0).read_bytes()
        ), field


def test_the_reward_choice_is_recorded_and_kept(boxing):
    for reward, root in boxing.items():
        record = json.loads((root / "Boxing" / "1" / "collect.json").read_text())
        assert record["config"]["reward"] == reward
    assert CollectConfig().reward == "clipped"
    with pytest.raises(UsageError, match="collected with other settings"):  # never mixed into one run
        collect(
            boxing["raw"], [get_game("boxing")], [1], [0], CollectConfig(transitions_per_ckpt=1000, seed=0)
        )
