"""ale-py's C++ `AtariVectorEnv` for the settings it can play (`noop="ale"`, `life_loss="none"`), with the
agent's action set mapped onto ale-py's minimal set and, for `resize="linear"`, the frames resized and
stacked here: ale-py resizes with INTER_AREA only, so it hands over max-pooled full-size screens.

With every option at ALE_VECTOR_SETTINGS this is exactly the env this project used before matching the
released Atari-PB env (and as fast: ale-py steps the envs on its own threads).
"""

from __future__ import annotations

import cv2
import numpy as np

from atari_pb.envs.atari import EnvConfig, screen_shape

OBS_SIZE = 84


class AleVectorEnv:
    """AtariVectorEnv (SameStep autoreset) whose actions index `indices` (positions in the minimal set),
    adding info["lost_life"] (lives fell since the last step, the episode goes on) and info["stack_reset"]
    (never: nothing is cleared at a lost life here)."""

    def __init__(self, game: str, num_envs: int, cfg: EnvConfig, indices: np.ndarray, num_threads: int = 0):
        import gymnasium
        from ale_py.vector_env import AtariVectorEnv

        self.cfg, self.num_envs, self.indices = cfg, num_envs, np.asarray(indices, np.int64)
        self.linear = cfg.resize == "linear"
        height, width = screen_shape(game)
        self.env = AtariVectorEnv(
            game,
            num_envs=num_envs,
            num_threads=num_threads,
            frameskip=cfg.frame_skip,
            stack_num=1 if self.linear else cfg.frames,
            maxpool=True,
            grayscale=True,
            img_height=height if self.linear else OBS_SIZE,  # the screen as is, max-pooled
            img_width=width if self.linear else OBS_SIZE,
            noop_max=cfg.noop_max,
            repeat_action_probability=cfg.sticky_action_prob,
            max_num_frames_per_episode=cfg.horizon * cfg.frame_skip,
            episodic_life=cfg.episodic_life,
            reward_clipping=False,
            use_fire_reset=cfg.fire_reset,
            autoreset_mode="SameStep",
        )
        self.obs = np.zeros((num_envs, cfg.frames, OBS_SIZE, OBS_SIZE), np.uint8)
        self.lives = np.zeros(num_envs, np.int32)
        self.single_action_space = gymnasium.spaces.Discrete(len(self.indices))
        self.action_space = gymnasium.vector.utils.batch_space(self.single_action_space, num_envs)
        self.single_observation_space = gymnasium.spaces.Box(0, 255, self.obs.shape[1:], np.uint8)
        self.observation_space = gymnasium.spaces.Box(0, 255, self.obs.shape, np.uint8)

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        self.lives = info["lives"].copy()
        if self.linear:
            self.obs[:] = 0
            obs = self._push(self.obs, obs)
        return obs, info

    def step(self, actions: np.ndarray):
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,) or actions.min() < 0 or actions.max() >= len(self.indices):
            raise ValueError(
                f"actions must be {self.num_envs} ints in [0, {len(self.indices)}); got {actions}"
            )
        obs, reward, terminated, truncated, info = self.env.step(self.indices[actions])
        ended = terminated | truncated
        info["lost_life"] = (info["lives"] < self.lives) & ~ended
        info["stack_reset"] = np.zeros(self.num_envs, bool)
        self.lives = info["lives"].copy()
        if self.linear:
            if ended.any():  # the last frame of an ended episode, pushed onto its stack
                info["final_obs"] = self._push(self.obs.copy(), info["final_obs"])
                self.obs[ended] = 0  # the next episode's stack starts from zeros
            obs = self._push(self.obs, obs)
        return obs, reward, terminated, truncated, info

    def _push(self, stacks: np.ndarray, screens: np.ndarray) -> np.ndarray:
        """Push resize(screens[:, -1]) onto `stacks` (in place); returns a copy."""
        stacks[:, :-1] = stacks[:, 1:].copy()
        for i in range(self.num_envs):
            stacks[i, -1] = cv2.resize(screens[i, -1], (OBS_SIZE, OBS_SIZE), interpolation=cv2.INTER_LINEAR)
        return stacks.copy()

    def close(self) -> None:
        self.env.close()
