"""Action choice shared by collection, fine-tuning and evaluation: uniform-random actions and epsilon-greedy
exploration, with one generator per env (or per collected run), so that env i's actions depend only on its
own seed and not on how many envs run beside it. Draws are made in blocks: a step costs an index, not a loop
over envs' generators.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from atari_pb.core.state import arrays_from_state, arrays_state, generator_state, set_generator_state

BLOCK = 256  # draws made per generator at a time


class PerEnvDraws:
    """Per-env streams of uniform numbers in [0, 1) and of uniform actions in [0, num_actions)."""

    def __init__(self, num_actions: int, seeds: Sequence[int | Sequence[int]]):
        self.num_actions = num_actions
        self.rngs = [np.random.default_rng(s) for s in seeds]
        self._t = BLOCK

    def state_dict(self) -> dict:
        block = {"u": self._u, "a": self._a} if self._t < BLOCK else {}
        return {"rngs": [generator_state(r) for r in self.rngs], "t": self._t, "block": arrays_state(block)}

    def load_state_dict(self, state: dict) -> None:
        for rng, st in zip(self.rngs, state["rngs"], strict=True):
            set_generator_state(rng, st)
        self._t = int(state["t"])
        if self._t < BLOCK:
            block = arrays_from_state(state["block"])
            self._u, self._a = block["u"], block["a"]

    def draw(self) -> tuple[np.ndarray, np.ndarray]:
        """(u (N,) float64 in [0, 1), random actions (N,) int64) for the next step."""
        if self._t == BLOCK:
            self._u = np.stack([r.random(BLOCK) for r in self.rngs], axis=1)
            self._a = np.stack([r.integers(0, self.num_actions, BLOCK) for r in self.rngs], axis=1)
            self._t = 0
        t, self._t = self._t, self._t + 1
        return self._u[t], self._a[t]


class RandomPolicy:
    """Uniform over `num_actions`, one generator per seed: `act(obs)` -> (N,) int64 actions."""

    def __init__(self, num_actions: int, seeds: Sequence[int | Sequence[int]]):
        self.draws = PerEnvDraws(num_actions, seeds)

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.draws.draw()[1]


class EpsilonGreedy:
    """With probability epsilon a uniform action, else `greedy(obs, rows)`'s, per env; `greedy` is asked only
    for the rows that need it (rows is None when all do), so a network runs on no more than it must."""

    def __init__(
        self,
        greedy: Callable[[np.ndarray], np.ndarray],
        num_actions: int,
        seeds: Sequence[int | Sequence[int]],
        epsilon: float = 0.0,
    ):
        self.greedy = greedy
        self.draws = PerEnvDraws(num_actions, seeds)
        self.epsilon = epsilon  # when `act` is given none

    def act(
        self, obs: np.ndarray, epsilon: float | None = None, active: np.ndarray | None = None
    ) -> np.ndarray:
        """Actions (N,) int64; envs outside `active` (a bool mask) get their random action, unasked."""
        use_greedy, actions = self.explore(epsilon)
        if active is not None:
            use_greedy &= active
        if use_greedy.all():
            return np.asarray(self.greedy(obs), dtype=np.int64)
        if use_greedy.any():
            rows = np.flatnonzero(use_greedy)
            actions = actions.copy()
            actions[rows] = self.greedy(obs[rows])
        return actions

    def explore(self, epsilon: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """This step's draws, for a caller that computes the greedy actions itself (a fleet, in one pass over
        its agents): (bool (N,): the envs that act greedily, (N,) int64: the random actions of the others)."""
        epsilon = self.epsilon if epsilon is None else epsilon
        u, actions = self.draws.draw()
        return u >= epsilon, actions
