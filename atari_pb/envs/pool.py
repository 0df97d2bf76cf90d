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
import traceback
from collections.abc import Sequence
from typing import Any

import numpy as np

from atari_pb.envs.atari import EnvConfig, make_vector_env
from atari_pb.games import Game


def can_spawn() -> bool:
    """Daemonic processes (a multiprocessing.Pool's workers) cannot have children."""
    return not multiprocessing.current_process().daemon


def _serve(conn, specs: list[tuple[Game, int, EnvConfig, int]]) -> None:
    try:
        made = [make_vector_env(*spec) for spec in specs]
        envs = [env for env, _ in made]
        conn.send(
            ("ok", [(obs, int(env.single_action_space.n), hasattr(env, "state_dict")) for env, obs in made])
        )
        while True:
            command, data = conn.recv()
            if command == "close":
                break
            if command == "step":
                reply = [env.step(actions) for env, actions in zip(envs, data, strict=True)]
            elif command == "state":
                reply = envs[data].state_dict()
            else:  # "load"
                index, state = data
                reply = envs[index].load_state_dict(state)
            conn.send(("ok", reply))
        for env in envs:
            env.close()
    except (EOFError, KeyboardInterrupt):
        pass
    except Exception:  # the parent raises it
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


class EnvPool:
    """`make_vector_env(*spec)` for every spec, split over `workers` processes in contiguous shards."""

    def __init__(self, specs: Sequence[tuple[Game, int, EnvConfig, int]], workers: int):
        import gymnasium

        ctx = multiprocessing.get_context("spawn")
        self.shards = [s for s in np.array_split(np.arange(len(specs)), min(workers, len(specs))) if len(s)]
        self.where = {int(i): (w, j) for w, shard in enumerate(self.shards) for j, i in enumerate(shard)}
        self.conns, self.procs = [], []
        for shard in self.shards:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(child, [specs[i] for i in shard]), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
        made = [m for part in self._gather(self.conns) for m in part]
        self.first_obs = [obs for obs, _, _ in made]
        self.action_spaces = [gymnasium.spaces.Discrete(n) for _, n, _ in made]
        self.can_save = [saves for _, _, saves in made]

    def _gather(self, conns) -> list:
        out = []
        for conn in conns:
            status, value = conn.recv()
            if status == "error":
                self.close()
                raise RuntimeError(f"an env worker failed:\n{value}")
            out.append(value)
        return out

    def _ask(self, index: int, command: str, data: Any) -> Any:
        worker, _ = self.where[index]
        self.conns[worker].send((command, data))
        return self._gather([self.conns[worker]])[0]

    def step(self, actions: Sequence[np.ndarray]) -> list[tuple]:
        """Step every env with its actions, all workers at once; the outcomes in spec order."""
        for conn, shard in zip(self.conns, self.shards, strict=True):
            conn.send(("step", [np.asarray(actions[i]) for i in shard]))
        return [outcome for part in self._gather(self.conns) for outcome in part]

    def member(self, index: int) -> PooledEnv:
        return (SavablePooledEnv if self.can_save[index] else PooledEnv)(self, index)

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
        for conn in self.conns:
            conn.close()
        self.conns, self.procs = [], []


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
