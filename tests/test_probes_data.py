"""AtariARI probe data: the RAM annotation table read from real games while they are played, and
`atari-pb collect-probes` end to end (files, manifest, an episode per life, splits by episode, labels, frames,
re-runs, errors)."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
from ale_py import Action

from atari_pb.cli import main
from atari_pb.config import load_config
from atari_pb.core.policies import RandomPolicy
from atari_pb.envs.atari import EnvConfig, action_set, make_vector_env
from atari_pb.errors import DataError, UsageError
from atari_pb.games import get_game
from atari_pb.probes.annotations import (
    ANNOTATIONS,
    CATEGORIES,
    CATEGORY_NAMES,
    annotated_games,
    check_annotated,
    ram_indices,
    variables,
)
from atari_pb.probes.data import (
    ProbeData,
    ProbeDatasetConfig,
    assign_splits,
    check_config,
    env_config,
    env_rams,
    env_seed,
    game_frames,
    play,
    policy_seeds,
)

DATASETS = Path(__file__).resolve().parents[1] / "datasets"

# AtariARI's table (mila-iqia/atari-representation-learning a06f52c, ram_annotations.py), lists expanded
VARIABLE_COUNTS = {
    "asteroids": 41, "berzerk": 34, "bowling": 16, "boxing": 7, "breakout": 35, "demon_attack": 10,
    "freeway": 12, "frostbite": 17, "hero": 8, "montezuma_revenge": 15, "ms_pacman": 17, "pitfall": 7,
    "pong": 8, "private_eye": 10, "qbert": 29, "riverraid": 5, "seaquest": 18, "space_invaders": 7,
    "tennis": 8, "venture": 18, "video_pinball": 6, "yars_revenge": 8,
}  # fmt: skip


# ------------------------------------------------------------------------------------------- the table
def test_table_covers_atariari_games_with_our_names():
    assert {g: len(v) for g, v in ANNOTATIONS.items()} == VARIABLE_COUNTS
    assert annotated_games() == sorted(VARIABLE_COUNTS)
    assert Counter(get_game(g).split for g in annotated_games()) == {"id": 18, "near_ood": 4}
    for game in annotated_games():
        assert variables(game) == list(ANNOTATIONS[game]) == list(CATEGORIES[game])
        assert all(0 <= i < 128 for i in ram_indices(game))
        assert set(CATEGORIES[game].values()) <= set(CATEGORY_NAMES)
        assert "agent_localization" in CATEGORIES[game].values()
    # lists expand to name_i in AtariARI's order: single bytes first, then the lists' entries
    assert variables("breakout")[:5] == ["ball_x", "ball_y", "player_x", "blocks_hit_count", "score"]
    assert variables("breakout")[5:] == [f"block_bit_map_{i}" for i in range(30)]
    assert ANNOTATIONS["breakout"]["block_bit_map_29"] == 29 and ANNOTATIONS["qbert"]["tile_color_20"] == 42
    assert CATEGORIES["pong"] == {
        "player_y": "agent_localization", "player_x": "agent_localization",
        "enemy_y": "other_localization", "enemy_x": "other_localization",
        "ball_x": "small_object_localization", "ball_y": "small_object_localization",
        "enemy_score": "score_clock_lives_display", "player_score": "score_clock_lives_display",
    }  # fmt: skip
    assert CATEGORIES["asteroids"]["num_lives_direction"] == "score_clock_lives_display"
    assert (
        CATEGORIES["qbert"]["tile_color_0"] == "misc"
        and CATEGORIES["qbert"]["player_column"] == "agent_localization"
    )
    assert check_annotated("ms_pacman") == "ms_pacman"
    with pytest.raises(
        UsageError, match=r"'surround' has no AtariARI RAM annotations; annotated games: asteroids, "
    ):
        check_annotated("surround")


def _play(game: str, actions, steps: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(RAM (T+1, 128), last frames (T+1, 84, 84)) of one env (no sticky actions) playing `actions`
    (ALE action names, or None: uniformly random ones for `steps` steps)."""
    g = get_game(game)
    env, obs = make_vector_env(g, 1, EnvConfig(sticky_action_prob=0.0), seed)
    ids = [int(a) for a in action_set(g)]
    if actions is None:
        actions = np.random.default_rng(seed).integers(0, len(ids), steps)
    else:
        actions = [ids.index(getattr(Action, a).value) for a in actions]
    rams, frames = [env_rams(env, np.empty((1, 128), np.uint8))[0]], [obs[0, -1]]
    try:
        for a in actions:
            obs, *_ = env.step(np.array([a]))
            rams.append(env_rams(env, np.empty((1, 128), np.uint8))[0])
            frames.append(obs[0, -1])
    finally:
        env.close()
    return np.array(rams), np.array(frames)


@pytest.mark.parametrize("game", annotated_games())
def test_agent_position_bytes_move_in_random_play(game):
    """In every annotated game, some byte AtariARI calls the agent's position takes several values in 300
    random steps: the table points at live state, read from each env's RAM as collection reads it."""
    rams, _ = _play(game, None, steps=300)
    agent = [v for v, c in CATEGORIES[game].items() if c == "agent_localization"]
    distinct = {v: len(np.unique(rams[:, ANNOTATIONS[game][v]])) for v in agent}
    assert max(distinct.values()) > 1, distinct


def _monotone(values: np.ndarray, sign: int) -> bool:
    steps = np.diff(values.astype(int)) * sign
    return bool((steps >= 0).all() and steps.sum() > 0)


def test_targeted_moves_change_the_player_bytes_the_right_way():
    """Pressing a move changes the player's byte in the direction of the move (the screen agrees)."""
    # Breakout: the paddle's x grows to the right; its drawn position (row 76 of the 84x84 frame) follows
    rams, frames = _play("breakout", ["RIGHT"] * 3 + ["LEFT"] * 6)
    x = rams[:, ANNOTATIONS["breakout"]["player_x"]]
    assert _monotone(x[:4], +1) and _monotone(x[4:], -1), x
    drawn = [np.flatnonzero(f[75:78, 5:79].max(0) > 60).mean() for f in frames]
    assert np.corrcoef(x, drawn)[0, 1] > 0.95
    # Pong: RIGHT moves the paddle up the screen, and y counts from the top
    rams, frames = _play("pong", ["RIGHT"] * 4 + ["LEFT"] * 6)
    y = rams[:, ANNOTATIONS["pong"]["player_y"]]
    assert _monotone(y[:5], -1) and _monotone(y[5:], +1), y
    drawn = [np.flatnonzero((f[14:77, 72:76] != 87).any(1)).mean() for f in frames]
    assert np.corrcoef(y, drawn)[0, 1] > 0.95
    # Freeway: the chicken crossing up the road, y counting from the bottom
    rams, _ = _play("freeway", ["UP"] * 10)
    assert _monotone(rams[:, ANNOTATIONS["freeway"]["player_y"]], +1)
    # Boxing: right then left, down then up
    rams, _ = _play("boxing", ["RIGHT"] * 5 + ["LEFT"] * 5 + ["DOWN"] * 5 + ["UP"] * 5)
    x, y = rams[:, ANNOTATIONS["boxing"]["player_x"]], rams[:, ANNOTATIONS["boxing"]["player_y"]]
    assert _monotone(x[:6], +1) and _monotone(x[5:11], -1), x
    assert _monotone(y[10:16], +1) and _monotone(y[15:], -1), y


# ------------------------------------------------------------------------------------------- configs
def test_probe_dataset_files():
    """probes.yaml restates ProbeDatasetConfig's defaults; the demo is a small selection."""
    full = load_config(ProbeDatasetConfig, DATASETS / "probes.yaml")
    assert full == ProbeDatasetConfig() and full.games == annotated_games()
    assert full.sticky_action_prob == EnvConfig().sticky_action_prob
    assert (full.frames_per_game, full.num_envs, full.episode_end) == (50_000, 64, "life")
    demo = load_config(ProbeDatasetConfig, DATASETS / "probes_demo.yaml")
    assert demo.frames_per_game == 6400 and demo.game_frames == {"breakout": 24000}
    assert set(demo.games) <= set(annotated_games()) and demo.episode_end == "life"
    with pytest.raises(UsageError, match="unknown key 'frames'"):
        load_config(ProbeDatasetConfig, DATASETS / "probes_demo.yaml", ["frames=3"])


def test_splits_take_whole_episodes_near_their_shares():
    rng = np.random.default_rng(0)
    episode = np.repeat(np.arange(40), rng.integers(1, 400, 40))
    share = np.array([0.7, 0.1, 0.2])
    split = assign_splits(episode, share, np.random.default_rng(1))
    for e in np.unique(episode):
        assert len(np.unique(split[episode == e])) == 1
    assert np.abs(np.bincount(split, minlength=3) / len(split) - share).max() < 0.03
    # few episodes: each split still gets one
    split = assign_splits(np.repeat([0, 1, 2, 3], [500, 400, 3, 2]), share, np.random.default_rng(0))
    assert set(split.tolist()) == {0, 1, 2}


# ------------------------------------------------------------------------------------------- collect-probes
GAMES = ["pong", "breakout"]
OVERRIDES = ["frames_per_game=400", "game_frames.breakout=400", "num_envs=4"]
ARGS = ["--dataset", "probes_demo", "--games", *GAMES, *OVERRIDES]


def _replay(game: str, cfg: ProbeDatasetConfig) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """(episode, step) -> (frame stack, RAM, lives) of the same play, made here with make_vector_env and the
    same seeds and random actions, episodes numbered as they start: a new one at game over and wherever the
    env's info["lives"] fell since the step before (AtariARI's EpisodicLifeEnv)."""
    g, n = get_game(game), cfg.num_envs
    env, obs = make_vector_env(g, n, EnvConfig(sticky_action_prob=cfg.sticky_action_prob), env_seed(cfg, g))
    policy = RandomPolicy(env.single_action_space.n, policy_seeds(cfg, g))
    episode, step, fresh, out = list(range(n)), [0] * n, n, {}
    lives = [ale.lives() for ale in env.ales]
    try:
        while True:
            for i, ale in enumerate(env.ales):
                out[(episode[i], step[i])] = (obs[i].copy(), ale.getRAM().copy(), lives[i])
            if len(out) >= cfg.frames_per_game + n:
                return out
            obs, _, term, trunc, info = env.step(policy.act(obs))
            for i in range(n):
                step[i] += 1
                lost = info["lives"][i] < lives[i]
                if term[i] or trunc[i] or (lost and cfg.episode_end == "life"):
                    episode[i], step[i], fresh = fresh, 0, fresh + 1
                lives[i] = int(info["lives"][i])
    finally:
        env.close()


def _stat(dst: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(dst.iterdir())}


def test_collect_probes_end_to_end(tmp_path, capsys):
    dst = tmp_path / "probes"
    assert main(["collect-probes", str(dst), *ARGS]) == 0
    files = sorted(p.name for p in dst.iterdir())
    assert files == ["breakout.h5", "manifest.json", "pong.h5"]  # and no temporary files
    manifest = json.loads((dst / "manifest.json").read_text())
    cfg = load_config(ProbeDatasetConfig, DATASETS / "probes_demo.yaml", OVERRIDES)
    assert [e["game"] for e in manifest["files"]] == sorted(GAMES)
    assert (
        manifest["settings"]["frames_per_game"] == 400
        and manifest["settings"]["env"]["sticky_action_prob"] == 0.0
    )
    for entry in manifest["files"]:
        blob = (dst / entry["path"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(blob).hexdigest() and entry["bytes"] == len(blob)
        assert entry["length"] == 400

    for game in GAMES:
        with h5py.File(dst / f"{game}.h5", "r") as f:
            raw = {k: f[k][:] for k in ("obs", "ram", "labels", "split", "episode", "step", "lives")}
            attrs = dict(f.attrs)
        assert raw["obs"].shape == (400, 4, 84, 84) and raw["obs"].dtype == np.uint8
        assert raw["ram"].shape == (400, 128) and raw["labels"].shape == (400, len(variables(game)))
        assert attrs["game"] == game and json.loads(attrs["variables"]) == variables(game)
        assert json.loads(attrs["ram_indices"]) == ram_indices(game) and attrs["policy"] == "random"
        assert attrs["format_version"] == 2 and attrs["seed"] == 0
        np.testing.assert_array_equal(raw["labels"], raw["ram"][:, ram_indices(game)])
        # whole episodes per split; rows ordered by split, episode, step
        for e in np.unique(raw["episode"]):
            rows = np.flatnonzero(raw["episode"] == e)
            assert len(np.unique(raw["split"][rows])) == 1
            np.testing.assert_array_equal(np.diff(rows), 1)
            np.testing.assert_array_equal(np.diff(raw["step"][rows]), 1)
        assert (np.diff(raw["split"].astype(int)) >= 0).all() and set(raw["split"].tolist()) == {0, 1, 2}
        # the frames and RAM are those make_vector_env gives for the same seeds and actions
        # (the episode ids included, so they change exactly where the lives fell or the game ended)
        replay = _replay(game, cfg)
        for k in range(400):
            frame, ram, lives = replay[(int(raw["episode"][k]), int(raw["step"][k]))]
            np.testing.assert_array_equal(raw["obs"][k], frame)
            np.testing.assert_array_equal(raw["ram"][k], ram)
            assert raw["lives"][k] == lives
        if game == "breakout":  # 5 lives: most of its episodes end at a lost life, the game going on
            starts = [raw["lives"][raw["episode"] == e][0] for e in np.unique(raw["episode"])]
            assert len(starts) > 10 and sum(s < 5 for s in starts) > len(starts) / 2, starts
        for e in np.unique(raw["episode"]):  # no life is lost within an episode
            assert len(np.unique(raw["lives"][raw["episode"] == e])) == 1

        data = ProbeData(dst, game)
        assert data.variables == variables(game) and len(data) == 400
        got = [data.obs(s) for s in ("train", "val", "test")]
        assert sum(map(len, got)) == 400 and all(len(x) for x in got)
        np.testing.assert_array_equal(np.concatenate(got), raw["obs"])
        np.testing.assert_array_equal(data.labels("val"), raw["labels"][raw["split"] == 1])
        assert set(data.episodes("train").tolist()).isdisjoint(data.episodes("test").tolist())
        assert ProbeData(dst / f"{game}.h5", game).variables == variables(game)

    # a re-run skips the finished games; a new game with the same settings is added
    before = _stat(dst)
    assert main(["collect-probes", str(dst), *ARGS]) == 0
    assert _stat(dst) == before
    assert main(["collect-probes", str(dst), *ARGS, "--games", "freeway"]) == 0
    after = _stat(dst)
    assert "freeway.h5" in after and all(after[k] == before[k] for k in ("pong.h5", "breakout.h5"))
    assert ProbeData(dst, "freeway").labels("test").shape[1] == len(variables("freeway"))
    capsys.readouterr()

    # other settings in the same DST: refused in one line, nothing touched
    before = _stat(dst)
    assert main(["collect-probes", str(dst), *ARGS, "seed=3"]) == 2
    err = capsys.readouterr().err
    assert "other settings (different seed)" in err and err.count("\n") == 1
    assert _stat(dst) == before

    # a game without annotations (or unknown): exit 2, one line naming the annotated games, nothing written
    for bad in ("surround", "pongg"):
        assert main(["collect-probes", str(tmp_path / "nothing"), *ARGS, "--games", bad]) == 2
        err = capsys.readouterr().err
        assert f"'{bad}' has no AtariARI RAM annotations; annotated games: asteroids, berzerk" in err
        assert err.count("\n") == 1 and not (tmp_path / "nothing").exists()

    # a corrupted file: the reader names it
    broken = tmp_path / "broken"
    shutil.copytree(dst, broken)
    with open(broken / "pong.h5", "r+b") as f:
        f.seek(5000)
        byte = f.read(1)
        f.seek(5000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(DataError, match=r"broken/pong.h5: SHA-256 does not match"):
        ProbeData(broken, "pong")
    (broken / "breakout.h5").unlink()
    with pytest.raises(DataError, match=r"breakout.h5: missing"):
        ProbeData(broken, "breakout")


@pytest.mark.parametrize("episode_end", ["life", "game"])
def test_breakout_episodes_end_where_info_lives_falls(episode_end, tmp_path):
    """Breakout played at random (5 lives): with `life`, the episode id changes exactly where the env's
    info["lives"] fell since the step before, or the game ended; with `game`, only where the game ended."""
    cfg = ProbeDatasetConfig(games=["breakout"], frames_per_game=1000, num_envs=2, episode_end=episode_end)
    stream = play(get_game("breakout"), cfg, tmp_path / "obs.npy")
    replay = _replay("breakout", cfg)
    for k in range(len(stream.episode)):
        frame, ram, lives = replay[(int(stream.episode[k]), int(stream.step[k]))]
        np.testing.assert_array_equal(stream.obs[k], frame)
        np.testing.assert_array_equal(stream.ram[k], ram)
        assert stream.lives[k] == lives
    for env in range(2):  # rows are step-major, env-minor
        episode, lives = stream.episode[env::2], stream.lives[env::2]
        changed = np.diff(episode) != 0
        fell, restarted = np.diff(lives) < 0, np.diff(lives) > 0  # a game over restarts at 5 lives
        if episode_end == "life":
            np.testing.assert_array_equal(changed, fell | restarted)
            assert fell.sum() >= 4, lives
        else:
            np.testing.assert_array_equal(changed, restarted)
            assert fell.sum() >= 4 and set(lives[:20].tolist()) == {5}


def test_game_frames_size_games_apart(tmp_path):
    cfg = ProbeDatasetConfig(
        games=["pong", "freeway"], frames_per_game=64, num_envs=8, game_frames={"pong": 96}
    )
    assert [game_frames(cfg, get_game(g)) for g in cfg.games] == [96, 64]
    with pytest.raises(UsageError, match=r"game_frames.pong=4: at least num_envs \(8\)"):
        check_config(ProbeDatasetConfig(games=["pong"], game_frames={"pong": 4}, num_envs=8))
    with pytest.raises(UsageError, match="'surround' has no AtariARI RAM annotations"):
        check_config(ProbeDatasetConfig(games=["pong"], game_frames={"surround": 400}))
    with pytest.raises(UsageError, match="episode_end='death'; valid: life, game"):
        check_config(ProbeDatasetConfig(games=["pong"], episode_end="death"))


def test_env_is_the_projects_default():
    """The probe env is the project's env with the dataset's sticky actions (the env's default unless set)."""
    cfg = ProbeDatasetConfig()
    assert env_config(cfg) == EnvConfig()
    assert env_config(ProbeDatasetConfig(sticky_action_prob=0.25)).sticky_action_prob == 0.25
