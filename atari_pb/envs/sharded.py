"""The released engine (atari_pb/envs/released.py) on several cores: the envs split into contiguous shards,
each a `ReleasedVectorEnv` in a worker process of its own. ALE holds Python's GIL while it emulates, so
threads cannot run emulators in parallel; processes can. Every env plays exactly what it plays in one
process (its emulator, seed and no-op draws are its own), so sharding changes the speed only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from atari_pb.envs.atari import EnvConfig
from atari_pb.envs.released import ReleasedVectorEnv
from atari_pb.envs.workers import Workers, serve


def _serve(conn, game: str, cfg: EnvConfig, actions: list[int], seeds: list[int]) -> None:
    def handle(envs: list, command: str, data):
        return envs[0].step(data) if command == "step" else envs[0].reset(seed=data)

    serve(conn, lambda: ([ReleasedVectorEnv(game, len(seeds), cfg, actions, seeds)], None), handle)


class ShardedVectorEnv:
    """`ReleasedVectorEnv`'s interface over `workers` processes (spawned: safe beside torch's and ALE's
    threads, about a second to start; a calling script needs its `if __name__ == "__main__":` guard, and a
    daemonic process cannot start them)."""

    def __init__(
        self,
        game: str,
        num_envs: int,
        cfg: EnvConfig,
        actions: Sequence[int],
        seeds: Sequence[int],
        workers: int,
    ):
        import gymnasium

        self.num_envs = num_envs
        self.shards = [s for s in np.array_split(np.arange(num_envs), min(workers, num_envs)) if len(s)]
        args = [
            (game, cfg, [int(a) for a in actions], [int(seeds[i]) for i in shard]) for shard in self.shards
        ]
        self.workers = Workers(_serve, args)
        self.workers.gather()
        self.single_action_space = gymnasium.spaces.Discrete(len(actions))
        self.action_space = gymnasium.vector.utils.batch_space(self.single_action_space, num_envs)
        shape = (cfg.frames, 84, 84)
        self.single_observation_space = gymnasium.spaces.Box(0, 255, shape, np.uint8)
        self.observation_space = gymnasium.spaces.Box(0, 255, (num_envs, *shape), np.uint8)

    def reset(self, *, seed: np.ndarray | int | None = None, options: dict | None = None):
        seeds = None if seed is None else np.asarray(seed, np.int64) + np.zeros(self.num_envs, np.int64)
        if seeds is not None and np.ndim(seed) == 0:
            seeds = seeds + np.arange(self.num_envs)
        self.workers.send_all([("reset", None if seeds is None else seeds[shard]) for shard in self.shards])
        parts = self.workers.gather()
        return np.concatenate([obs for obs, _ in parts]), self._merge([info for _, info in parts], parts)

    def step(self, actions: np.ndarray):
        actions = np.asarray(actions)
        if (
            actions.shape != (self.num_envs,)
            or actions.min() < 0
            or actions.max() >= self.single_action_space.n
        ):
            raise ValueError(
                f"actions must be {self.num_envs} ints in [0, {self.single_action_space.n}); got {actions}"
            )
        self.workers.send_all([("step", actions[shard]) for shard in self.shards])
        parts = self.workers.gather()
        obs, reward, terminated, truncated = (np.concatenate([p[k] for p in parts]) for k in range(4))
        return obs, reward, terminated, truncated, self._merge([p[4] for p in parts], parts)

    def _merge(self, infos: list[dict], parts: list) -> dict:
        merged = {key: np.concatenate([i[key] for i in infos]) for key in infos[0] if key != "final_obs"}
        merged["env_id"] = np.arange(self.num_envs, dtype=np.int32)
        if any("final_obs" in i for i in infos):  # shards where nothing ended: the observation as is
            merged["final_obs"] = np.concatenate([i.get("final_obs", p[0]) for i, p in zip(infos, parts)])
        return merged

    def close(self) -> None:
        self.workers.close()
