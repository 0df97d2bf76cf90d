"""Evaluation rollouts on real ALE games, the eval/*.yaml protocols, and that every game's env builds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atari_pb.core.policies import EpsilonGreedy, RandomPolicy
from atari_pb.envs.atari import EnvConfig, make_vector_env, num_actions
from atari_pb.errors import UsageError
from atari_pb.eval.protocol import load_eval_config
from atari_pb.eval.rollout import EvalResult, evaluate, quotas
from atari_pb.games import SPLITS, all_games, split_games


def hash_policy(n: int):
    """Deterministic and batch-invariant: each row's action depends on its observation alone. In numpy:
    a torch reduction would start OpenMP threads that spin beside ALE's on a small machine."""
    return lambda obs: torch.from_numpy(obs.numpy().reshape(len(obs), -1).sum(1, dtype=np.int64) % n)


def constant(action: int):
    return lambda obs: torch.full((len(obs),), action, dtype=torch.int64)


def test_random_pong_scores_in_range():
    r = evaluate(constant(0), "pong", episodes=4, num_envs=4, epsilon=1.0)  # random play
    assert isinstance(r, EvalResult) and r.scores.dtype == np.float64 and len(r.scores) == 4
    assert ((r.scores >= -21) & (r.scores <= 21)).all()
    assert r.mean <= -15  # random play loses almost every point
    assert (r.lengths > 0).all() and r.steps >= r.lengths.sum()


def test_counting_is_exact_deterministic_and_per_env():
    policy = hash_policy(4)
    a = evaluate(policy, "breakout", episodes=6, num_envs=3, epsilon=0.05, seed=3)
    assert len(a.scores) == 6 and len(a.lengths) == 6
    # env i's episodes depend on (seed, i) alone, and each env contributes its first episodes in
    # round-robin order: [env0 ep0, env1 ep0, env2 ep0, env0 ep1, ...]
    one = evaluate(policy, "breakout", episodes=2, num_envs=1, epsilon=0.05, seed=3)
    np.testing.assert_array_equal(one.lengths, a.lengths[[0, 3]])
    np.testing.assert_array_equal(one.scores, a.scores[[0, 3]])
    # trimming to 5: env 2 (the last) gives up its second episode, whatever the episodes' lengths
    # (and a second run with the same seed repeats the first: determinism)
    five = evaluate(policy, "breakout", episodes=5, num_envs=3, epsilon=0.05, seed=3)
    np.testing.assert_array_equal(five.lengths, a.lengths[:5])
    np.testing.assert_array_equal(five.scores, a.scores[:5])
    other = evaluate(policy, "breakout", episodes=6, num_envs=3, epsilon=0.05, seed=4)
    assert not np.array_equal(other.lengths, a.lengths)


def test_quotas_split_episodes_round_robin():
    assert quotas(5, 3).tolist() == [2, 2, 1]
    assert quotas(6, 3).tolist() == [2, 2, 2]
    assert quotas(100, 16).sum() == 100 and quotas(100, 16).max() == 7


def test_more_envs_than_episodes_and_truncation():
    r = evaluate(constant(0), "pong", episodes=2, num_envs=8, epsilon=0.0, env=EnvConfig(horizon=40))
    assert r.lengths.tolist() == [40, 40] and r.steps == 80  # capped at 2 envs, cut at the horizon


def test_freeway_always_up_scores():
    env = EnvConfig(horizon=1000)
    up = evaluate(constant(1), "freeway", episodes=1, num_envs=1, epsilon=0.0, env=env)  # [NOOP, UP, DOWN]
    assert up.scores[0] >= 5  # a crossing takes ~ 70 steps of UP
    stay = evaluate(constant(0), "freeway", episodes=1, num_envs=1, epsilon=0.0, env=EnvConfig(horizon=200))
    assert stay.scores[0] == 0


def test_epsilon_one_never_calls_the_policy():
    def refuse(obs):
        raise AssertionError("the policy was called with epsilon=1")

    env = EnvConfig(horizon=300)
    r = evaluate(refuse, "freeway", episodes=2, num_envs=2, epsilon=1.0, env=env)
    again = evaluate(refuse, "freeway", episodes=2, num_envs=2, epsilon=1.0, env=env)
    np.testing.assert_array_equal(r.scores, again.scores)  # the random draws are seeded too
    up = evaluate(constant(1), "freeway", episodes=2, num_envs=2, epsilon=0.0, env=env)
    assert r.mean < up.mean


def test_policy_contract_errors():
    with pytest.raises(ValueError, match="shape"):
        evaluate(lambda obs: torch.zeros(1, dtype=torch.int64), "pong", episodes=2, num_envs=2, epsilon=0.0)
    with pytest.raises(UsageError, match="epsilon"):
        evaluate(constant(0), "pong", episodes=1, num_envs=1, epsilon=2.0)


def test_random_policy_draws_per_env_and_repeats():
    """The shared random / epsilon-greedy draws: env i's actions come from its own seed only."""
    three = RandomPolicy(3, seeds=[[1, 0], [1, 1], [1, 2]])
    one = RandomPolicy(3, seeds=[[1, 1]])
    a = np.stack([three.act(None) for _ in range(300)])  # across a block boundary (256 draws)
    b = np.stack([one.act(None) for _ in range(300)])
    assert a.dtype == np.int64 and a.shape == (300, 3) and ((a >= 0) & (a < 3)).all()
    np.testing.assert_array_equal(a[:, 1], b[:, 0])
    assert set(np.unique(a)) == {0, 1, 2}
    calls = []
    greedy = EpsilonGreedy(
        lambda obs: calls.append(len(obs)) or np.full(len(obs), 7), 3, [[0, i] for i in range(4)]
    )
    acts = np.stack([greedy.act(np.zeros((4, 1)), 0.5) for _ in range(400)])
    assert 0.4 < (acts == 7).mean() < 0.6 and sum(calls) == (acts == 7).sum()  # asked only for greedy rows


def test_every_game_builds_and_steps():
    cfg = EnvConfig(noop_max=0)
    for game in all_games():
        env, obs = make_vector_env(game, 1, cfg, seed=0, num_threads=1)
        try:
            assert obs.shape == (1, 4, 84, 84) and obs.dtype == np.uint8, game.name
            assert 2 <= env.single_action_space.n <= 18, game.name
            obs, reward, term, trunc, _ = env.step(np.zeros(1, np.int64))
            assert obs.shape == (1, 4, 84, 84) and reward.shape == (1,), game.name
        finally:
            env.close()
    assert len(all_games()) == 65
    assert num_actions(all_games()[0]) == make_vector_env(all_games()[0], 1, cfg, 0)[0].single_action_space.n


@pytest.mark.parametrize("split,count", [("id", 50), ("near_ood", 10), ("far_ood", 5)])
def test_eval_yaml_games(split, count):
    cfg = load_eval_config(split)
    assert cfg.split == split and len(cfg.games) == count
    assert cfg.games == [g.name for g in split_games(split)]
    assert cfg.epsilon == 0.001 and cfg.episodes == 100 and cfg.env == EnvConfig()  # the released env:
    assert cfg.env.horizon == 27_001 and cfg.env.sticky_action_prob == 0.0 and not cfg.env.episodic_life
    assert (cfg.env.noop, cfg.env.fire_reset, cfg.env.life_loss) == ("released", False, "released")
    assert (cfg.env.resize, cfg.env.action_set) == ("linear", "released")


def test_eval_config_errors_and_overrides():
    cfg = load_eval_config("near_ood", ["games=[Pong,seaquest]", "num_envs=4"])
    assert cfg.games == ["pong", "seaquest"] and cfg.num_envs == 4
    with pytest.raises(UsageError, match="valid splits: " + ", ".join(SPLITS)):
        load_eval_config("ood")
    with pytest.raises(UsageError, match=r"'pong' is in split near_ood.*id games: air_raid"):
        load_eval_config("id", ["games=[pong]"])
    with pytest.raises(UsageError, match="unknown key"):
        load_eval_config("far_ood", ["episode=3"])
