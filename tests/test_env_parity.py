"""The fine-tuning and evaluation env equals the released Atari-PB env (dojeon-ai/Atari-PB src/envs/atari.py,
"atari.py:N") on real ALE games, and each EnvConfig option switches one difference back to ale-py's env."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest
from ale_py import Action, ALEInterface, LoggerMode, roms
from ale_py.vector_env import AtariVectorEnv

from atari_pb.envs.atari import (
    ALE_VECTOR_SETTINGS,
    RELEASED_NOOP_LESS_GAMES,
    EnvConfig,
    action_set,
    make_vector_env,
    minimal_action_set,
    minimal_indices,
    num_actions,
)
from atari_pb.envs.released import ReleasedVectorEnv, released_ale_seed
from atari_pb.envs.sharded import ShardedVectorEnv
from atari_pb.envs.vector import AleVectorEnv
from atari_pb.errors import UsageError
from atari_pb.finetune.replay import PrioritizedReplay
from atari_pb.games import all_games, get_game

ALE_VECTOR = EnvConfig(**ALE_VECTOR_SETTINGS)

# The released AtariEnv itself (src/envs/atari.py, unchanged but for two lines that adapt it to ale-py
# 0.12.1: setInt/setFloat with str keys, getMinimalActionSet as ints), with gym 0.25.2's seeding, envs
# seeded 0 and 1, horizon=120 (121-step episodes), actions default_rng(2024).integers(0, A, (300, 2)):
# sha256 of every observation stack (the first, then one per step, reset ones after a trajectory's end),
# the summed game_score, the lost lives (done without traj_done) and the trajectory ends.
RELEASED_DIGESTS = {
    "breakout": ("912f03925d4a2d3985d36f824a45b505", 0, 18, 4),
    "seaquest": ("e755099bf0d76b3e48166f63042c507d", 60, 2, 4),
    "pong": ("a68297b4e721b6b7640fe6ed5f1b6cb8", -8, 0, 4),
    "basic_math": ("81b5b810a123bc35956b07416637172c", 0, 0, 4),
}


def hand_ale(game: str, seed: int = 0) -> ALEInterface:
    ALEInterface.setLoggerMode(LoggerMode.Error)
    ale = ALEInterface()
    ale.setInt("random_seed", released_ale_seed(seed))
    ale.setFloat("repeat_action_probability", 0.0)
    ale.loadROM(roms.get_rom_path(game))
    return ale


def play(env, actions: np.ndarray):
    """Step `env` through actions (T, N); yields (obs, reward, terminated, truncated, info) per step."""
    for a in actions:
        yield env.step(a)


# ------------------------------------------------------------------------------------- the released env
@pytest.mark.parametrize("game", sorted(RELEASED_DIGESTS))
def test_observations_equal_the_released_env(game):
    digest, score, lost, ends = RELEASED_DIGESTS[game]
    env, obs = make_vector_env(get_game(game), 2, EnvConfig(horizon=121), seed=0)
    h = hashlib.sha256(obs.tobytes())
    acts = np.random.default_rng(2024).integers(0, num_actions(game), (300, 2))
    total, lives_lost, ended = 0.0, 0, 0
    for obs, reward, term, trunc, info in play(env, acts):
        h.update(obs.tobytes())
        total += reward.sum()
        lives_lost += info["lost_life"].sum()
        ended += (term | trunc).sum()
    env.close()
    assert (total, lives_lost, ended) == (score, lost, ends)
    assert h.hexdigest()[:32] == digest


def test_a_lost_life_clears_the_stack_plays_a_noop_and_the_game_goes_on():
    """Breakout: FIRE serves, then stand still until the ball is missed (atari.py:151-153, 208-217)."""
    env, obs = make_vector_env(get_game("breakout"), 1, EnvConfig(), seed=0)
    fire, noop = 1, 0  # breakout's action set: NOOP, FIRE, RIGHT, LEFT
    lives, events, since = 5, 0, 0
    frames = env.ales[0].getEpisodeFrameNumber()
    for t in range(600):
        obs, reward, term, trunc, info = env.step(np.array([fire if t % 50 == 0 else noop]))
        played = env.ales[0].getEpisodeFrameNumber() - frames
        frames += played
        assert not (term | trunc)[0] or info["lives"][0] == 0
        if info["lost_life"][0]:
            events += 1
            assert info["stack_reset"][0] and info["lives"][0] == lives - 1
            assert played == 4 + 1  # the frame skip and the NOOP frame whose reward is dropped
            assert not obs[0, :3].any() and obs[0, 3].any()  # the stack restarts from zeros
            lives, since = lives - 1, 0
        else:
            assert played == 4 and not info["stack_reset"][0]
            since += 1
            assert obs[0, 0].any() == (since >= 3)  # three steps after a loss the stack is full again
        if lives == 3:
            break
    assert events == 2
    env.close()


def test_noops_at_reset_are_one_plus_1_to_30_frames_drawn_as_the_released_env_draws():
    """atari.py:131-134: one NOOP frame, then randint(1, 31) NOOP frames from gym 0.25's np_random(seed)
    (= numpy's default_rng(seed)), whose first draw the constructor's own reset took."""
    n = 12
    env, obs = make_vector_env(get_game("pong"), n, EnvConfig(), seed=5)
    frames = np.array([ale.getEpisodeFrameNumber() for ale in env.ales])
    expected = [1 + np.random.default_rng(5 + i).integers(1, 31, size=2)[1] for i in range(n)]
    np.testing.assert_array_equal(frames, expected)
    assert ((frames >= 2) & (frames <= 31)).all() and len(set(frames)) > 4
    env.close()
    # ale-py's rule: d ~ U{0..noop_max-1} frames, its FIRE press counting as one of them
    env, _ = make_vector_env(get_game("pong"), n, ALE_VECTOR, seed=5)
    assert isinstance(env, AleVectorEnv)
    _, info = env.reset(seed=np.arange(5, 5 + n))
    frames = info["episode_frame_number"]
    assert ((frames >= 1) & (frames <= 29)).all() and len(set(frames)) > 4
    env.close()


def test_no_fire_at_reset():
    """Breakout waits for FIRE to serve: without it nothing happens; with fire_reset the ball is served and,
    standing still, the agent loses a life."""
    still = np.zeros((150, 1), np.int64)
    env, _ = make_vector_env(get_game("breakout"), 1, EnvConfig(), seed=0)
    assert not any(info["lost_life"][0] for *_, info in play(env, still))
    env, _ = make_vector_env(get_game("breakout"), 1, EnvConfig(fire_reset=True), seed=0)
    assert any(info["lost_life"][0] for *_, info in play(env, still))


def test_action_sets():
    """atari.py:86-89: the minimal set without its first action (NOOP) in seven games, two of them ours."""
    assert RELEASED_NOOP_LESS_GAMES & {g.name for g in all_games()} == {"basic_math", "othello"}
    for game, n in (("basic_math", 5), ("othello", 9)):
        ids = action_set(game)
        assert len(ids) == n == num_actions(game) and Action.NOOP.value not in ids
        assert list(ids) == list(minimal_action_set(game)[1:]) and num_actions(game, "minimal") == n + 1
        assert list(minimal_indices(game)) == list(range(1, n + 1))
        env, _ = make_vector_env(get_game(game), 1, EnvConfig(noop_max=0), seed=0)
        assert env.single_action_space.n == n
        env.close()
    for game in all_games():
        if game.name not in RELEASED_NOOP_LESS_GAMES:
            assert (
                list(action_set(game))
                == list(minimal_action_set(game.name))
                == list(action_set(game, "minimal"))
            )
            assert list(minimal_indices(game)) == list(range(num_actions(game)))
    with pytest.raises(UsageError, match="valid: released, minimal"):
        action_set("pong", "full")


def test_basic_math_action_k_plays_the_minimal_sets_k_plus_1():
    """Against a hand-stepped ALEInterface (noop_max=0: the constructor's reset and the episode's reset
    each play one NOOP frame)."""
    env, obs = make_vector_env(get_game("basic_math"), 1, EnvConfig(noop_max=0), seed=0)
    ale = hand_ale("basic_math")
    for _ in range(2):
        ale.reset_game()
        ale.act(Action.NOOP)
    for k in [0, 2, 2, 4, 1, 3, 0, 0, 4]:
        obs, *_ = env.step(np.array([k]))
        action = Action(minimal_action_set("basic_math")[k + 1])
        for _ in range(3):
            ale.act(action)
        before = ale.getScreenGrayscale()
        ale.act(action)
        frame = cv2.resize(
            np.maximum(before, ale.getScreenGrayscale()), (84, 84), interpolation=cv2.INTER_LINEAR
        )
        np.testing.assert_array_equal(obs[0, -1], frame)
    env.close()


@pytest.mark.parametrize("resize,interpolation", [("linear", cv2.INTER_LINEAR), ("area", cv2.INTER_AREA)])
def test_frames_are_the_max_pooled_screen_resized_by_cv2(resize, interpolation):
    """Pong, hand-stepped on an ALEInterface: max of the screens before and after a step's last frame,
    resized to 84x84 by cv2 (atari.py:147-150, 186-190), pushed onto a stack with zeros before the first."""
    env, obs = make_vector_env(get_game("pong"), 1, EnvConfig(noop_max=0, resize=resize), seed=0)
    ale = hand_ale("pong")
    for _ in range(2):  # the constructor's reset, then the first episode's (one NOOP frame each)
        ale.reset_game()
        ale.act(Action.NOOP)
    first = cv2.resize(ale.getScreenGrayscale(), (84, 84), interpolation=interpolation)
    np.testing.assert_array_equal(obs[0], np.stack([np.zeros_like(first)] * 3 + [first]))
    stack = [np.zeros_like(first)] * 3 + [first]
    pong = minimal_action_set("pong")
    for k in np.random.default_rng(0).integers(0, 6, 40):
        obs, *_ = env.step(np.array([k]))
        for _ in range(3):
            ale.act(Action(pong[k]))
        before = ale.getScreenGrayscale()
        ale.act(Action(pong[k]))
        stack.append(
            cv2.resize(np.maximum(before, ale.getScreenGrayscale()), (84, 84), interpolation=interpolation)
        )
        np.testing.assert_array_equal(obs[0], np.stack(stack[-4:]))
    env.close()


# ------------------------------------------------------------------------------ each option switched back
def ale_py_env(game: str, n: int, seed: int, noop_max: int = 30, **kw):
    """This project's env before the parity change: ale-py's vector env with its settings."""
    env = AtariVectorEnv(
        game,
        num_envs=n,
        frameskip=4,
        stack_num=4,
        maxpool=True,
        grayscale=True,
        img_height=84,
        img_width=84,
        noop_max=noop_max,
        repeat_action_probability=0.0,
        max_num_frames_per_episode=kw.get("horizon", 27_000) * 4,
        episodic_life=False,
        reward_clipping=False,
        use_fire_reset=True,
        autoreset_mode="SameStep",
    )
    return env, env.reset(seed=np.arange(seed, seed + n, dtype=np.int64))[0]


def test_all_options_switched_back_are_the_previous_env_exactly():
    new, obs = make_vector_env(
        get_game("breakout"), 2, EnvConfig(**{**ALE_VECTOR_SETTINGS, "horizon": 60}), 3
    )
    old, old_obs = ale_py_env("breakout", 2, 3, horizon=60)
    np.testing.assert_array_equal(obs, old_obs)
    for a in np.random.default_rng(1).integers(0, 4, (150, 2)):
        o1, r1, t1, u1, i1 = new.step(a)
        o2, r2, t2, u2, i2 = old.step(a)
        for x, y in ((o1, o2), (r1, r2), (t1, t2), (u1, u2), (i1["lives"], i2["lives"])):
            np.testing.assert_array_equal(x, y)
    new.close()
    old.close()


def test_each_released_rule_also_plays_ale_pys_rule():
    """The frame-by-frame engine with ALE_VECTOR_SETTINGS (no-op count 0, so no random draw differs) plays
    exactly what ale-py's vector env plays: FIRE at reset, nothing at a lost life, INTER_AREA, the minimal
    set; and the C++ engine's linear resize equals the frame-by-frame one."""
    cfg = EnvConfig(**{**ALE_VECTOR_SETTINGS, "noop_max": 0, "horizon": 80})
    seeds = [0, 1]
    mine = ReleasedVectorEnv("breakout", 2, cfg, action_set("breakout", "minimal"), seeds)
    old, old_obs = ale_py_env("breakout", 2, 0, noop_max=0, horizon=80)
    np.testing.assert_array_equal(mine.reset()[0], old_obs)
    linear = EnvConfig(**{**ALE_VECTOR_SETTINGS, "noop_max": 0, "horizon": 80, "resize": "linear"})
    cpp, cpp_obs = make_vector_env(get_game("breakout"), 2, linear, 0)
    frame_by_frame = ReleasedVectorEnv("breakout", 2, linear, action_set("breakout", "minimal"), seeds)
    np.testing.assert_array_equal(frame_by_frame.reset()[0], cpp_obs)
    lost = 0
    for a in np.random.default_rng(2).integers(0, 4, (200, 2)):
        o1, r1, t1, u1, i1 = mine.step(a)
        o2, r2, t2, u2, _ = old.step(a)
        o3, *_, i3 = cpp.step(a)
        o4, *_, i4 = frame_by_frame.step(a)
        for x, y in ((o1, o2), (r1, r2), (t1 | u1, t2 | u2), (o3, o4), (i3["lost_life"], i4["lost_life"])):
            np.testing.assert_array_equal(x, y)
        lost += i1["lost_life"].sum()
        assert not i1["stack_reset"].any()
    assert lost > 0
    for env in (mine, old, cpp, frame_by_frame):
        env.close()


def test_life_loss_none_keeps_the_stack():
    env, _ = make_vector_env(get_game("breakout"), 1, EnvConfig(life_loss="none", fire_reset=True), 0)
    seen = 0
    for obs, *_, info in play(env, np.zeros((300, 1), np.int64)):
        if info["lost_life"][0]:
            seen += 1
            assert obs[0, 0].any() and not info["stack_reset"][0]
    assert seen > 0


def test_bad_options_are_usage_errors():
    for bad in ({"noop": "gym"}, {"life_loss": "episodic"}, {"resize": "cubic"}, {"action_set": "full"}):
        with pytest.raises(UsageError, match="valid"):
            make_vector_env(get_game("pong"), 1, EnvConfig(**bad), 0)


# ------------------------------------------------------------------------------- what Rainbow learns from
def test_replay_stacks_equal_the_env_observations_across_lost_lives():
    """Rainbow's replay rebuilds, for every transition, exactly the stack the env showed, also after a lost
    life (where the released env restarts the stack from zeros) and across episode ends."""
    env, obs = make_vector_env(get_game("breakout"), 1, EnvConfig(horizon=200), seed=4)
    replay = PrioritizedReplay(capacity=2000, num_envs=1, n_step=3, frames=4)
    shown, slots, restarts = [], [], 0
    rng = np.random.default_rng(0)
    for _ in range(500):
        a = rng.integers(0, 4, 1)
        next_obs, reward, term, trunc, info = env.step(a)
        ended = term | trunc
        final = info["final_obs"][:, -1] if ended.any() else None
        slots.append(int(replay.cursor[0]))
        shown.append(obs[0].copy())
        replay.add(
            obs[:, -1], a, np.sign(reward), term | info["lost_life"], ended, final, info["stack_reset"]
        )
        restarts += int(info["stack_reset"][0])
        obs = next_obs
    assert restarts >= 3
    np.testing.assert_array_equal(replay.stack(np.array(slots)), np.stack(shown))
    env.close()


def test_worker_processes_play_exactly_what_one_process_plays():
    """num_threads > 1 splits the released engine's envs over processes: the speed changes, nothing else."""
    cfg, game = EnvConfig(horizon=40), get_game("breakout")
    one, obs1 = make_vector_env(game, 3, cfg, seed=2)
    two, obs2 = make_vector_env(game, 3, cfg, seed=2, num_threads=2)
    assert isinstance(two, ShardedVectorEnv) and two.single_action_space.n == 4
    np.testing.assert_array_equal(obs1, obs2)
    ended = 0
    try:
        for a in np.random.default_rng(3).integers(0, 4, (100, 3)):
            *out1, info1 = one.step(a)
            *out2, info2 = two.step(a)
            for x, y in zip(out1, out2):
                np.testing.assert_array_equal(x, y)
            assert info1.keys() == info2.keys()
            for key in info1:
                np.testing.assert_array_equal(info1[key], info2[key])
            ended += int((out1[2] | out1[3]).sum())
    finally:
        one.close()
        two.close()
    assert ended >= 6
