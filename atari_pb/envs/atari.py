"""Atari environments for fine-tuning and evaluation: ale_py's C++ `AtariVectorEnv` with the protocol's
settings (frame skip 4 with max-pool over the last two frames, 84x84 grayscale, 4-frame stacks, up to 30
no-ops at reset, no sticky actions, the 27,000-step (108k-frame) horizon, no life-loss episode ends).

Observations are uint8 (N, 4, 84, 84) stacks, actions index the game's minimal action set (as in
DQN-Replay), rewards are raw game scores: learners clip them themselves, so evaluation sees true scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atari_pb.games import Game


@dataclass
class EnvConfig:
    """The `env:` section of finetune/*.yaml and eval/*.yaml."""

    frame_skip: int = 4
    frames: int = 4  # stacked frames
    noop_max: int = 30
    sticky_action_prob: float = 0.0  # the protocol fine-tunes and evaluates without sticky actions
    horizon: int = 27_000  # agent steps per episode (108k frames)
    episodic_life: bool = False  # an episode ends at game over, not at a lost life
    fire_reset: bool = True  # press FIRE at reset in games that need it to start


def make_vector_env(game: Game, num_envs: int, cfg: EnvConfig, seed: int, num_threads: int = 0):
    """`num_envs` copies of `game`, reset with seeds seed, seed+1, ...: returns (env, first observations).
    Autoreset happens on the same step, so the observation after an episode's last step is the next
    episode's first (`info["final_obs"]` holds the last one)."""
    from ale_py.vector_env import AtariVectorEnv

    env = AtariVectorEnv(
        game.name,
        num_envs=num_envs,
        num_threads=num_threads,
        frameskip=cfg.frame_skip,
        stack_num=cfg.frames,
        maxpool=True,
        grayscale=True,
        img_height=84,
        img_width=84,
        noop_max=cfg.noop_max,
        repeat_action_probability=cfg.sticky_action_prob,
        max_num_frames_per_episode=cfg.horizon * cfg.frame_skip,
        episodic_life=cfg.episodic_life,
        reward_clipping=False,
        use_fire_reset=cfg.fire_reset,
        autoreset_mode="SameStep",
    )
    obs, _ = env.reset(seed=np.arange(seed, seed + num_envs, dtype=np.int64) % (1 << 31))
    return env, obs


def num_actions(game: Game) -> int:
    """The size of the game's minimal action set."""
    from ale_py import ALEInterface, LoggerMode, roms

    ALEInterface.setLoggerMode(LoggerMode.Error)  # ALE's banner and "Sending Reset..." would go to stdout
    ale = ALEInterface()
    ale.loadROM(roms.get_rom_path(game.name))
    return len(ale.getMinimalActionSet())
