"""Evaluation rollouts: many episodes in parallel on ale_py's C++ vector env, one batched policy call per
vector step, epsilon-greedy with per-env seeded generators, raw game scores.

    result = evaluate(policy, "pong", episodes=100, num_envs=16)   # policy: uint8 (N, 4, 84, 84) -> (N,)
    result.scores, result.mean

A policy is any callable mapping a uint8 (N, 4, 84, 84) tensor of frame stacks to an int64 (N,) tensor of
greedy actions (indices into the game's minimal action set), e.g. a fine-tuned agent's argmax.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from atari_pb.envs.atari import EnvConfig, make_vector_env
from atari_pb.errors import UsageError
from atari_pb.games import Game, get_game

Policy = Callable[[torch.Tensor], torch.Tensor]

_BLOCK = 256  # epsilon draws made per env at a time: one generator call per env every _BLOCK steps


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


class RandomPolicy:
    """Uniformly random actions from its own seeded generator: the random-score baseline."""

    def __init__(self, num_actions: int, seed: int = 0):
        self.num_actions = num_actions
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.rng.integers(0, self.num_actions, len(obs), dtype=np.int64)).to(
            obs.device
        )


@dataclass
class _Explorer:
    """Per-env epsilon draws. Each env has its own generator seeded from (seed, env index), so env i's
    trajectory depends only on its emulator seed, its draws and the policy: not on how many envs run
    beside it. Draws are made in blocks so that a step costs vectorised indexing, not a loop over envs."""

    num_envs: int
    num_actions: int
    epsilon: float
    seed: int
    _rngs: list = field(init=False)
    _t: int = field(init=False, default=_BLOCK)

    def __post_init__(self) -> None:
        self._rngs = [np.random.default_rng([self.seed, i]) for i in range(self.num_envs)]

    def draw(self) -> tuple[np.ndarray, np.ndarray]:
        """(explore (N,) bool, random actions (N,) int64) for the next step."""
        if self._t == _BLOCK:
            self._u = np.stack([r.random(_BLOCK) for r in self._rngs], axis=1)
            self._a = np.stack([r.integers(0, self.num_actions, _BLOCK) for r in self._rngs], axis=1)
            self._t = 0
        t, self._t = self._t, self._t + 1
        return self._u[t] < self.epsilon, self._a[t]


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
    running = np.zeros(n, np.float64)
    running_len = np.zeros(n, np.int64)
    order = np.arange(n)
    steps = 0

    t0 = time.perf_counter()
    vec, obs = make_vector_env(game, n, env, seed, num_threads)
    setup_seconds = time.perf_counter() - t0
    explorer = _Explorer(n, int(vec.single_action_space.n), epsilon, seed)
    try:
        with torch.no_grad(), tqdm(total=episodes, desc=f"eval {game.name}", unit="ep", disable=None) as bar:
            while True:
                active = finished < quota
                if not active.any():
                    break
                explore, actions = explorer.draw()
                greedy = active & ~explore
                if greedy.all():
                    actions = _act(policy, obs, device, n)
                elif greedy.any():
                    rows = np.flatnonzero(greedy)
                    actions = actions.copy()
                    actions[rows] = _act(policy, obs[rows], device, len(rows))
                obs, reward, term, trunc, info = vec.step(actions)
                if not np.array_equal(info["env_id"], order):  # sync mode returns envs in order; be sure
                    perm = np.argsort(info["env_id"])
                    obs, reward, term, trunc = obs[perm], reward[perm], term[perm], trunc[perm]
                steps += n
                running += reward
                running_len += 1
                ended = term | trunc
                if ended.any():
                    for i in np.flatnonzero(ended & active):  # a few envs per step at most
                        scores[finished[i], i] = running[i]
                        lengths[finished[i], i] = running_len[i]
                        finished[i] += 1
                        bar.update(1)
                    running[ended] = 0.0
                    running_len[ended] = 0
    finally:
        vec.close()
    seconds = time.perf_counter() - t0
    counted = np.arange(int(quota[0]))[:, None] < quota[None, :]  # row-major: round-robin order
    return EvalResult(scores[counted], lengths[counted], steps, seconds, setup_seconds)


def _act(policy: Policy, obs: np.ndarray, device: str | torch.device, n: int) -> np.ndarray:
    out = policy(torch.from_numpy(obs).to(device))
    if out.shape != (n,):
        raise ValueError(
            f"the policy returned shape {tuple(out.shape)} for {n} observations; expected ({n},)"
        )
    return out.to("cpu", torch.int64).numpy()
