"""Many independent vector envs (a fleet's agents: each its own game and seed) stepped in parallel by worker
processes. ALE holds Python's GIL while it emulates, so threads cannot overlap emulators; processes can.

    pool = EnvPool([(get_game("pong"), 1, cfg, 0), (get_game("breakout"), 1, cfg, 3)], workers=2)
    env = pool.member(0)                       # the first env's face: action space, state_dict, ...
    outcomes = pool.step([actions_0, actions_1])  # every env's (obs, reward, terminated, truncated, info)

Each env is made by `make_vector_env` inside its worker exactly as in one process (its emulators, seeds and
no-op draws are its own), so a pool changes the speed only. Workers are spawned (safe beside torch's and
ALE's threads, about a second to start); a daemonic process cannot start them (`can_spawn`).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from typing import Any

import numpy as np

from atari_pb.envs.atari import EnvConfig, make_vector_env
from atari_pb.envs.workers import Workers, serve
from atari_pb.games import Game


def can_spawn() -> bool:
    """Daemonic processes (a multiprocessing.Pool's workers) cannot have children."""
    return not multiprocessing.current_process().daemon


def _serve(conn, specs: list[tuple[Game, int, EnvConfig, int]]) -> None:
    def build():
        made = [make_vector_env(*spec) for spec in specs]
        ready = [(obs, int(env.single_action_space.n), hasattr(env, "state_dict")) for env, obs in made]
        return [env for env, _ in made], ready

    def handle(envs: list, command: str, data):
        if command == "step":
            return [env.step(actions) for env, actions in zip(envs, data, strict=True)]
        if command == "state":
            return envs[data].state_dict()
        index, state = data  # "load"
        return envs[index].load_state_dict(state)

    serve(conn, build, handle)


class EnvPool:
    """`make_vector_env(*spec)` for every spec, split over `workers` processes in contiguous shards."""

    def __init__(self, specs: Sequence[tuple[Game, int, EnvConfig, int]], workers: int):
        import gymnasium

        self.shards = [s for s in np.array_split(np.arange(len(specs)), min(workers, len(specs))) if len(s)]
        self.where = {int(i): (w, j) for w, shard in enumerate(self.shards) for j, i in enumerate(shard)}
        self.workers = Workers(_serve, [([specs[i] for i in shard],) for shard in self.shards])
        made = [m for part in self.workers.gather() for m in part]
        self.first_obs = [obs for obs, _, _ in made]
        self.action_spaces = [gymnasium.spaces.Discrete(n) for _, n, _ in made]
        self.can_save = [saves for _, _, saves in made]

    def _ask(self, index: int, command: str, data: Any) -> Any:
        return self.workers.ask(self.where[index][0], command, data)

    def step(self, actions: Sequence[np.ndarray]) -> list[tuple]:
        """Step every env with its actions, all workers at once; the outcomes in spec order."""
        self.workers.send_all([("step", [np.asarray(actions[i]) for i in shard]) for shard in self.shards])
        return [outcome for part in self.workers.gather() for outcome in part]

    def member(self, index: int) -> PooledEnv:
        return (SavablePooledEnv if self.can_save[index] else PooledEnv)(self, index)

    def close(self) -> None:
        self.workers.close()


class PooledEnv:
    """One env of a pool, as its run sees it; stepped by the pool (`EnvPool.step`), closed with it."""

    def __init__(self, pool: EnvPool, index: int):
        self.pool, self.index = pool, index
        self.single_action_space = pool.action_spaces[index]

    def step(self, actions: np.ndarray):
        raise RuntimeError("a pooled env is stepped with its pool (EnvPool.step)")

    def close(self) -> None:
        """The pool closes its workers."""


class SavablePooledEnv(PooledEnv):
    """A pooled env whose emulators can be saved (the released engine: ReleasedVectorEnv.state_dict)."""

    def state_dict(self) -> dict:
        return self.pool._ask(self.index, "state", self.pool.where[self.index][1])

    def load_state_dict(self, state: dict) -> None:
        self.pool._ask(self.index, "load", (self.pool.where[self.index][1], state))
