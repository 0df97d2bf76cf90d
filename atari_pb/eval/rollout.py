"""Evaluation rollouts: many episodes in parallel on ale_py's C++ vector env, one batched policy call per
vector step, epsilon-greedy with per-env seeded generators, raw game scores.

    result = evaluate(policy, "pong", episodes=100, num_envs=16)   # policy: uint8 (N, 4, 84, 84) -> (N,)
    result.scores, result.mean

A policy is any callable mapping a uint8 (N, 4, 84, 84) tensor of frame stacks to an int64 (N,) tensor of
greedy actions (indices into the game's minimal action set), e.g. a fine-tuned agent's argmax. The
random-score baseline is `epsilon=1.0`: every action uniform, the policy never called.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from atari_pb.core.episodes import EpisodeTracker
from atari_pb.core.policies import EpsilonGreedy
from atari_pb.envs.atari import EnvConfig, make_vector_env
from atari_pb.errors import UsageError
from atari_pb.games import Game, get_game

Policy = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class EvalResult:
    scores: np.ndarray  # float64 (episodes,): raw game score of each counted episode, in evaluate's order
    lengths: np.ndarray  # int64 (episodes,): agent steps of each counted episode
    steps: int  # agent steps taken by all envs, including those past an env's quota
    seconds: float  # wall time of the whole evaluation, setup included
    setup_seconds: float = 0.0  # making and seeding the envs: a seeded reset costs ale_py ~0.1 s per env

    @property
    def mean(self) -> float:
        return float(self.scores.mean())


def quotas(episodes: int, num_envs: int) -> np.ndarray:
    """Episodes counted per env: ceil(episodes / num_envs) for the first envs, one fewer for the rest."""
    q = np.full(num_envs, episodes // num_envs, dtype=np.int64)
    q[: episodes % num_envs] += 1
    return q


def evaluate(
    policy: Policy,
    game: Game | str,
    *,
    episodes: int,
    num_envs: int,
    epsilon: float = 0.001,
    seed: int = 0,
    env: EnvConfig | None = None,
    device: str | torch.device = "cpu",
    num_threads: int = 0,
) -> EvalResult:
    """Play `episodes` evaluation episodes of `game` with `policy`, epsilon-greedy, on `num_envs` envs.

    Which episodes count: env i (emulator seed `seed + i`) contributes its *first* quota_i episodes, with
    quota_i = ceil(episodes / num_envs) for the first episodes % num_envs envs and floor for the rest
    (the same as taking every env's first ceil(episodes / num_envs) episodes and trimming round-robin).
    The set is fixed before any episode is played, so it is unbiased: "stop at the first `episodes`
    finished episodes" would over-sample short episodes (an env that dies fast finishes more of them, and
    the long ones still running are dropped), which biases scores in every game where length and score
    correlate. An env past its quota keeps stepping (the vector env steps all envs) but is no longer
    fed to the policy and its episodes are not counted. Scores come in round-robin order: every env's
    first episode (env 0, 1, ...), then every env's second, ...: deterministic for a given seed.

    Same seed, same scores: emulators are seeded with seed + i and the epsilon draws come from per-env
    generators seeded with (seed, i) (for a deterministic policy; a policy's own randomness is its own).
    `num_envs` is capped at `episodes`. `num_threads` 0 lets ALE choose its thread count.

    On a CPU policy, torch's OpenMP threads and ALE's worker threads take turns on the same cores, and
    OpenMP threads spin after each op: on a busy 2-core machine that made rollouts several times slower.
    There, run with torch.set_num_threads(1) or OMP_WAIT_POLICY=PASSIVE (set before torch is imported).
    """
    game = get_game(game) if isinstance(game, str) else game
    env = env or EnvConfig()
    if episodes < 1 or num_envs < 1:
        raise UsageError(f"episodes and num_envs must be >= 1 (got {episodes}, {num_envs})")
    if not 0.0 <= epsilon <= 1.0:
        raise UsageError(f"epsilon={epsilon}: must be in [0, 1]")
    if seed < 0:
        raise UsageError(f"seed={seed}: must be >= 0")
    n = min(num_envs, episodes)
    quota = quotas(episodes, n)
    scores = np.zeros((int(quota[0]), n), np.float64)  # [k, i]: env i's k-th episode
    lengths = np.zeros((int(quota[0]), n), np.int64)
    finished = np.zeros(n, np.int64)
    tracker = EpisodeTracker(n)
    order = np.arange(n)
    steps = 0

    t0 = time.perf_counter()
    vec, obs = make_vector_env(game, n, env, seed, num_threads)
    setup_seconds = time.perf_counter() - t0
    # env i's epsilon draws come from its own generator, seeded (seed, i)
    explorer = EpsilonGreedy(
        lambda rows: _act(policy, rows, device), int(vec.single_action_space.n), [[seed, i] for i in range(n)]
    )
    try:
        with torch.no_grad(), tqdm(total=episodes, desc=f"eval {game.name}", unit="ep", disable=None) as bar:
            while True:
                active = finished < quota
                if not active.any():
                    break
                actions = explorer.act(obs, epsilon, active)
                obs, reward, term, trunc, info = vec.step(actions)
                if not np.array_equal(info["env_id"], order):  # sync mode returns envs in order; be sure
                    perm = np.argsort(info["env_id"])
                    obs, reward, term, trunc = obs[perm], reward[perm], term[perm], trunc[perm]
                steps += n
                for i, score, length in tracker.step(reward, term | trunc):
                    if active[i]:
                        scores[finished[i], i], lengths[finished[i], i] = score, length
                        finished[i] += 1
                        bar.update(1)
    finally:
        vec.close()
    seconds = time.perf_counter() - t0
    counted = np.arange(int(quota[0]))[:, None] < quota[None, :]  # row-major: round-robin order
    return EvalResult(scores[counted], lengths[counted], steps, seconds, setup_seconds)


def _act(policy: Policy, obs: np.ndarray, device: str | torch.device) -> np.ndarray:
    out = policy(torch.from_numpy(obs).to(device))
    if out.shape != (len(obs),):
        raise ValueError(
            f"the policy returned shape {tuple(out.shape)} for {len(obs)} observations; expected ({len(obs)},)"
        )
    return out.to("cpu", torch.int64).numpy()
