"""The released Atari-PB env (dojeon-ai/Atari-PB `src/envs/atari.py`, "atari.py:N" below) for N games at
once: one `ale_py.ALEInterface` per env, stepped frame by frame as the released `AtariEnv.step` does, with
the frame work (max-pool, resize, stacking) batched over envs in numpy and cv2.

The released env's step, for frame skip 4: act 3 frames; keep the screen (raw1); act the 4th frame; if a
life was lost, act one NOOP frame (reward dropped) and clear the stack and raw1; read the screen (raw2);
push resize(max(raw1, raw2)) onto the stack (atari.py:141-160, 186-217). Its reset: reset_game, one NOOP
frame, then U{1..30} NOOP frames, the stack cleared and the screen pushed (atari.py:127-139).

Autoreset is same-step, as in ale-py's vector env with autoreset_mode="SameStep" (the released VecEnv
worker resets right after the step that ended a trajectory, src/envs/vec_env.py:13-16). Every option of
`EnvConfig` is honoured, so this engine also plays ale-py's rules where they are asked for (`noop="ale"`,
`life_loss="none"`, `resize="area"`), with its own random draws.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import cv2
import numpy as np

from atari_pb.core.state import (
    arrays_from_state,
    arrays_state,
    bytes_from_state,
    bytes_state,
    generator_state,
    set_generator_state,
)
from atari_pb.envs.atari import EnvConfig, screen_shape

OBS_SIZE = 84  # atari.py:60 imagesize


def released_ale_seed(seed: int) -> int:
    """The emulator seed the released env derives from its seed (atari.py:115-125, gym 0.25's seeding):
    hash_seed(seed + 1) % 2**31, hash_seed being the first 8 bytes of sha512(str(seed)), little-endian."""
    digest = hashlib.sha512(str(seed + 1).encode("utf8")).digest()
    return int.from_bytes(digest[:8], "little") % (1 << 31)


class ReleasedVectorEnv:
    """`num_envs` copies of one game with the `step` / `reset` interface of ale-py's AtariVectorEnv
    (SameStep autoreset, info["final_obs"] when an episode ended). `actions`: the ALE action ids that the
    agent's actions index; `seeds`: one per env, as the released env's `seed` argument."""

    def __init__(
        self, game: str, num_envs: int, cfg: EnvConfig, actions: Sequence[int], seeds: Sequence[int]
    ):
        import gymnasium
        from ale_py import Action, ALEInterface, LoggerMode, roms

        ALEInterface.setLoggerMode(LoggerMode.Error)
        self.cfg, self.num_envs, self.rom = cfg, num_envs, roms.get_rom_path(game)
        self.ales = [ALEInterface() for _ in range(num_envs)]
        self.actions = [Action(int(a)) for a in actions]
        self.noop, self.fire = Action.NOOP, Action.FIRE
        self.interpolation = cv2.INTER_LINEAR if cfg.resize == "linear" else cv2.INTER_AREA
        self.rngs: list[np.random.Generator] = []
        h, w = screen_shape(game)
        self.raw1 = np.zeros((num_envs, h, w), np.uint8)  # the screen before the last frame of a step
        self.raw2 = np.zeros((num_envs, h, w), np.uint8)  # the screen after it
        self.maxed = np.zeros((num_envs, h, w), np.uint8)
        self.obs = np.zeros((num_envs, cfg.frames, OBS_SIZE, OBS_SIZE), np.uint8)
        self.lives = np.zeros(num_envs, np.int64)  # released: the count at the last reset or lost life
        self.steps = np.zeros(num_envs, np.int64)
        self.env_id = np.arange(num_envs, dtype=np.int32)
        self.single_action_space = gymnasium.spaces.Discrete(len(self.actions))
        self.action_space = gymnasium.vector.utils.batch_space(self.single_action_space, num_envs)
        self.single_observation_space = gymnasium.spaces.Box(0, 255, self.obs.shape[1:], np.uint8)
        self.observation_space = gymnasium.spaces.Box(0, 255, self.obs.shape, np.uint8)
        self._load(np.asarray(seeds, np.int64))

    def _load(self, seeds: np.ndarray) -> None:
        """(Re)load the ROM of every env with its seed: the emulator's (sticky actions only: without them
        ALE plays the same whatever the seed) and the no-op draws' generator."""
        self.has_fire = False
        self.rngs = []
        for ale, seed in zip(self.ales, seeds):
            ale.setInt("random_seed", released_ale_seed(int(seed)))
            ale.setFloat("repeat_action_probability", float(self.cfg.sticky_action_prob))
            ale.loadROM(self.rom)
            self.has_fire = self.cfg.fire_reset and self.fire in ale.getMinimalActionSet()
            # gym 0.25's np_random(seed) is Generator(PCG64(SeedSequence(seed))) (atari.py:115-119)
            self.rngs.append(np.random.default_rng(int(seed)))
        if self.cfg.noop == "released":
            # the released constructor resets once (atari.py:113) before the reset that starts the first
            # episode: that takes the generator's first draw and leaves the emulator where ALE's next
            # reset_game starts from (a reset does not erase all of the console's state)
            for i in range(self.num_envs):
                self._reset_one(i)

    # ---------------------------------------------------------------------------------------- reset
    def reset(self, *, seed: np.ndarray | int | None = None, options: dict | None = None):
        """Reset every env (reseeded with `seed`: an int seeds env i with seed + i)."""
        if seed is not None:
            seeds = np.asarray(seed, dtype=np.int64)
            self._load(seeds + np.arange(self.num_envs) if seeds.ndim == 0 else seeds)
        for i in range(self.num_envs):
            self._reset_one(i)
        return self.obs.copy(), self._info()

    def _reset_one(self, i: int) -> None:
        ale = self.ales[i]
        ale.reset_game()
        self.obs[i] = 0  # atari.py:130, 202-206
        self.raw1[i] = 0
        if self.has_fire:
            ale.act(self.fire)
        if self.cfg.noop == "released":
            self._life_reset(i)  # atari.py:131: one NOOP frame, and the lives to compare with
            if self.cfg.noop_max > 0:
                for _ in range(int(self.rngs[i].integers(1, self.cfg.noop_max + 1))):  # atari.py:132-134
                    ale.act(self.noop)
                    if self._check_life(i):  # atari.py:135-136: a life lost in the no-ops resets again
                        self._reset_one(i)  # (and the outer no-ops go on: the released recursion)
        else:  # ale-py's PreprocessedEnv::reset: d ~ U{0..noop_max-1} frames, FIRE counting as one
            frames = int(self.rngs[i].integers(0, self.cfg.noop_max)) if self.cfg.noop_max > 0 else 0
            for _ in range(frames - int(self.has_fire)):
                ale.act(self.noop)
                if ale.game_over():
                    ale.reset_game()
            self.lives[i] = ale.lives()
        ale.getScreenGrayscale(self.raw2[i])
        self._push(np.array([i]))  # atari.py:137
        self.steps[i] = 0

    def _life_reset(self, i: int) -> None:
        self.ales[i].act(self.noop)  # atari.py:215-217: the reward of this frame is dropped
        self.lives[i] = self.ales[i].lives()

    def _check_life(self, i: int) -> bool:
        """atari.py:208-213: lives fell below the count kept at the last reset or lost life (a bonus life
        does not raise that count) and the game is not over."""
        lives = self.ales[i].lives()
        lost = 0 < lives < self.lives[i]
        if lost:
            self._life_reset(i)
        return bool(lost)

    # ----------------------------------------------------------------------------------------- step
    def step(self, actions: np.ndarray):
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,) or actions.min() < 0 or actions.max() >= len(self.actions):
            raise ValueError(
                f"actions must be {self.num_envs} ints in [0, {len(self.actions)}); got {actions}"
            )
        n = self.num_envs
        reward = np.zeros(n, np.int32)
        lost = np.zeros(n, bool)
        over = np.zeros(n, bool)
        for i in range(n):
            reward[i], lost[i], over[i] = self._act(i, self.actions[actions[i]])
        cleared = lost if self.cfg.life_loss == "released" else np.zeros(n, bool)
        self.obs[cleared] = 0  # atari.py:152-153
        self._push(np.arange(n))
        self.steps += 1
        terminated = over | (self.cfg.episodic_life & lost)
        truncated = (self.steps >= self.cfg.horizon) & ~terminated
        ended = terminated | truncated
        obs = self.obs.copy()
        info = {}
        if ended.any():
            info["final_obs"] = obs.copy()
            for i in np.flatnonzero(ended):
                self._reset_one(i)
            obs = self.obs.copy()
        info.update(self._info(), lost_life=lost & ~ended, stack_reset=cleared & ~ended)
        return obs, reward, terminated, truncated, info

    def _act(self, i: int, action) -> tuple[int, bool, bool]:
        """One agent step of env i (atari.py:146-151): (reward, lost a life, game over)."""
        ale = self.ales[i]
        reward = 0
        for _ in range(self.cfg.frame_skip - 1):
            reward += ale.act(action)
        ale.getScreenGrayscale(self.raw1[i])
        reward += ale.act(action)
        if self.cfg.life_loss == "released":
            lost = self._check_life(i)
            if lost:
                self.raw1[i] = 0  # atari.py:153, 205
        else:
            lives = ale.lives()
            lost = bool(lives < self.lives[i])
            self.lives[i] = lives
        ale.getScreenGrayscale(self.raw2[i])
        return reward, lost, ale.game_over()

    def _push(self, envs: np.ndarray) -> None:
        """Max-pool the last two screens, resize, and push onto the stacks of `envs` (atari.py:186-200)."""
        np.maximum(self.raw1[envs], self.raw2[envs], out=self.maxed[: len(envs)])
        stacks = self.obs[envs]
        stacks[:, :-1] = stacks[:, 1:].copy()
        for k in range(len(envs)):
            stacks[k, -1] = cv2.resize(self.maxed[k], (OBS_SIZE, OBS_SIZE), interpolation=self.interpolation)
        self.obs[envs] = stacks

    def _info(self) -> dict[str, np.ndarray]:
        return {
            "env_id": self.env_id.copy(),
            "lives": np.array([ale.lives() for ale in self.ales], np.int32),
            "episode_frame_number": np.array([ale.getEpisodeFrameNumber() for ale in self.ales], np.int32),
        }

    # ----------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue exactly: each emulator's state with its random
        generator (ALE's cloneState), the no-op generators, the screens, stacks, lives and step counts."""
        arrays = {
            "raw1": self.raw1,
            "raw2": self.raw2,
            "obs": self.obs,
            "lives": self.lives,
            "steps": self.steps,
        }
        return {
            "ales": [bytes_state(ale.cloneState(include_rng=True).__getstate__()) for ale in self.ales],
            "rngs": [generator_state(r) for r in self.rngs],
            "arrays": arrays_state(arrays),
            "has_fire": self.has_fire,
        }

    def load_state_dict(self, state: dict) -> None:
        from ale_py import ALEState

        for ale, saved in zip(self.ales, state["ales"], strict=True):
            emulator = ALEState.__new__(ALEState)
            emulator.__setstate__(bytes_from_state(saved))  # ALE's own serialisation; no pickle is read
            ale.restoreState(emulator)
        for rng, saved in zip(self.rngs, state["rngs"], strict=True):
            set_generator_state(rng, saved)
        for key, value in arrays_from_state(state["arrays"]).items():
            getattr(self, key)[:] = value
        self.has_fire = bool(state["has_fire"])

    def close(self) -> None:
        self.ales = []
