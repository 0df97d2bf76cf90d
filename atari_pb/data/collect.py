"""Play Atari games through ale-py and log them in the DQN-Replay on-disk format.

Each requested run of a game is one environment of an `AtariVectorEnv`, stepped in lock-step with the
others; each checkpoint is the next `transitions_per_ckpt` transitions of that run's stream, so a checkpoint
may start mid-episode, as a real one does. Transition i holds the frame the action was chosen on
(observation[i]), the action, the reward received and terminal[i] = 1 when the episode ended with it
(game over or the 27,000-step horizon), exactly as Dopamine logged DQN-Replay. Like DQN-Replay, the
logging environment uses sticky actions (p = 0.25 by default) and no no-op starts.

The reward is stored clipped to [-1, 1] by default (`collect.reward: clipped`), as in DQN-Replay: Dopamine's
Runner clips the game's reward (`np.clip(reward, -1, 1)`, `clip_rewards=True`) before the agent's
`_store_transition` logs it, so the published `$store$_reward` arrays hold -1, 0 and 1 (ALE rewards are
whole points). `collect.reward: raw` stores the game's own score increments instead; the choice
is kept in the run's collect.json.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from atari_pb.core.policies import EpsilonGreedy, RandomPolicy
from atari_pb.data.dataset import CollectConfig
from atari_pb.data.replay_format import FRAME_SHAPE, GzipNpyWriter, replay_file, run_dir, write_gz_npy
from atari_pb.envs.atari import minimal_indices
from atari_pb.errors import DataError, UsageError
from atari_pb.games import Game

log = logging.getLogger(__name__)

POLICIES = ("random", "eps-greedy:<agent.safetensors>")
REWARDS = ("clipped", "raw")  # collect.reward: DQN-Replay's clipped rewards, or the game's own
STACK_SIZE = 4  # Dopamine's replay stack size, for the invalid range
UPDATE_HORIZON = 1  # Dopamine's default update horizon, for the invalid range
_WRITE_BLOCK = 1024  # frames buffered before a compress call


def invalid_range(cursor: int, capacity: int) -> np.ndarray:
    """Dopamine's invalid range: indices whose stacks or next states straddle the write cursor."""
    return np.array(
        [(cursor - UPDATE_HORIZON + i) % capacity for i in range(STACK_SIZE + UPDATE_HORIZON)], dtype=np.int64
    )


def make_policy(cfg: CollectConfig, game: Game, num_actions: int, seeds: Sequence[int]):
    """The policy of `collect.policy`, one generator per run (each run reproducible on its own); its
    `act(obs)` gives the runs' actions."""
    if cfg.policy == "random":
        return RandomPolicy(num_actions, seeds)
    if cfg.policy.startswith("eps-greedy:"):
        return _agent_policy(agent_file(cfg.policy, game), game, num_actions, cfg.epsilon, seeds)
    raise UsageError(f"unknown policy {cfg.policy!r}; valid policies: {', '.join(POLICIES)}")


def _agent_policy(path: str, game: Game, num_actions: int, epsilon: float, seeds: Sequence[int]):
    """A saved agent's greedy action with probability 1 - epsilon, else uniform."""
    import torch

    from atari_pb.models.agent import load_agent

    agent, trained_on = load_agent(path)
    if trained_on.name != game.name:
        raise UsageError(f"agent {path} was trained on {trained_on.name}, not {game.name}")
    if agent.num_actions != num_actions:
        raise DataError(f"agent {path} has {agent.num_actions} actions; {game.name} has {num_actions}")
    return EpsilonGreedy(lambda obs: agent.act(torch.from_numpy(obs)).numpy(), num_actions, seeds, epsilon)


def check_policy(cfg: CollectConfig, games: Sequence[Game]) -> None:
    """Fail before anything is played: an unknown policy, an agent file that cannot be read, or an agent
    trained on another game than the one collected."""
    if cfg.policy == "random":
        return
    if not cfg.policy.startswith("eps-greedy:"):
        raise UsageError(f"unknown policy {cfg.policy!r}; valid policies: {', '.join(POLICIES)}")
    if not 0.0 <= cfg.epsilon <= 1.0:
        raise UsageError(f"epsilon={cfg.epsilon}: must be within [0, 1]")
    from atari_pb.models.agent import load_agent

    for game in games:
        path = agent_file(cfg.policy, game)
        _, trained_on = load_agent(path)
        if trained_on.name != game.name:
            raise UsageError(
                f"agent {path} plays {trained_on.name}, not {game.name}: one agent per game "
                "(write {game} in the path to pick each game's agent)"
            )


def agent_file(policy: str, game: Game) -> str:
    """The agent file of `eps-greedy:<path>` for `game`; `{game}` in the path stands for its name."""
    return policy.split(":", 1)[1].replace("{game}", game.name)


def run_seed(seed: int, game: Game, run: int) -> int:
    """A seed for (seed, game, run) that does not depend on which other games or runs are collected."""
    return zlib.crc32(f"{seed}/{game.name}/{run}".encode()) % (1 << 31)  # ALE takes int32 seeds


def collect_game(
    out_root: Path,
    game: Game,
    runs: Sequence[int],
    ckpts: Sequence[int],
    cfg: CollectConfig,
    progress: tqdm | None = None,
) -> None:
    from ale_py.vector_env import AtariVectorEnv  # imported here: only collection needs the emulator

    runs, ckpts = list(runs), sorted(ckpts)
    n = cfg.transitions_per_ckpt
    env = AtariVectorEnv(
        game.name,
        num_envs=len(runs),
        num_threads=cfg.num_threads,
        stack_num=STACK_SIZE,
        repeat_action_probability=cfg.sticky_action_prob,
        noop_max=0,
        use_fire_reset=False,
        reward_clipping=False,
        episodic_life=False,
        autoreset_mode="SameStep",
    )
    try:
        seeds = [run_seed(cfg.seed, game, r) for r in runs]
        # actions are logged as indices into Atari-PB's action set (the minimal set, as in DQN-Replay, but
        # without NOOP in basic_math and othello, as the released Far-OOD data and env): action k plays the
        # vector env's minimal-set action to_env[k]
        to_env = minimal_indices(game, "released")
        policy = make_policy(cfg, game, len(to_env), seeds)
        obs, _ = env.reset(seed=np.array(seeds, dtype=np.int64))
        for run in runs:
            replay_file(out_root, game.replay_name, run, "observation", 0).parent.mkdir(
                parents=True, exist_ok=True
            )
        for ckpt in ckpts:
            writers = [
                GzipNpyWriter(
                    replay_file(out_root, game.replay_name, r, "observation", ckpt),
                    np.uint8,
                    (n, *FRAME_SHAPE),
                    cfg.compress_level,
                )
                for r in runs
            ]
            frames = np.empty((len(runs), _WRITE_BLOCK, *FRAME_SHAPE), np.uint8)
            action = np.empty((len(runs), n), np.int32)
            reward = np.empty((len(runs), n), np.float32)
            terminal = np.empty((len(runs), n), np.uint8)
            try:
                for i in range(n):
                    frames[:, i % _WRITE_BLOCK] = obs[:, -1]
                    a = policy.act(obs).astype(np.int32)
                    obs, r, term, trunc, _ = env.step(to_env[a])
                    action[:, i], terminal[:, i] = a, term | trunc
                    reward[:, i] = r if cfg.reward == "raw" else np.clip(r, -1.0, 1.0)  # DQN-Replay clips
                    if (i + 1) % _WRITE_BLOCK == 0 or i + 1 == n:
                        for w, block in zip(writers, frames):
                            w.write(block[: i % _WRITE_BLOCK + 1])
                        if progress is not None:
                            progress.update(len(runs) * (i % _WRITE_BLOCK + 1))
                for w in writers:
                    w.close()
            except BaseException:
                for w in writers:
                    w.abort()
                raise
            for k, run in enumerate(runs):
                arrays = {
                    "action": action[k],
                    "reward": reward[k],
                    "terminal": terminal[k],
                    # The buffer is full and its cursor sits at 0, as in the published checkpoints.
                    "invalid_range": invalid_range(0, n),
                    "add_count": np.array((ckpt + 1) * n, dtype=np.int64),
                }
                for field, array in arrays.items():
                    path = replay_file(out_root, game.replay_name, run, field, ckpt)
                    write_gz_npy(path, array, cfg.compress_level)
            log.info("collected %s runs %s ckpt %d (%d transitions each)", game.name, runs, ckpt, n)
    finally:
        env.close()
    for run in runs:  # written last: a run with a record is complete
        record = run_dir(out_root, game.replay_name, run).parent / RECORD_NAME
        record.write_text(json.dumps(_record(ckpts, cfg), indent=1) + "\n")


RECORD_NAME = "collect.json"  # beside replay_logs/: what was collected there, and how


def _record(ckpts: Sequence[int], cfg: CollectConfig) -> dict:
    settings = asdict(cfg)
    settings.pop("num_threads")  # does not change the data
    if settings["policy"] == "random":
        settings.pop("epsilon")  # unused
    return {"ckpts": sorted(ckpts), "config": settings}


def runs_to_collect(
    out_root: Path, game: Game, runs: Sequence[int], ckpts: Sequence[int], cfg: CollectConfig
) -> list[int]:
    """The runs not yet collected; a run collected with other settings is an error, never overwritten."""
    todo = []
    for run in runs:
        record = run_dir(out_root, game.replay_name, run).parent / RECORD_NAME
        if not record.exists():
            todo.append(run)
            continue
        try:
            done = json.loads(record.read_text())
        except ValueError:
            done = None
        if done != _record(ckpts, cfg):
            raise UsageError(
                f"{record.parent} was collected with other settings ({record}); collect into another directory"
            )
    return todo


def collect(
    out_root: Path, games: Sequence[Game], runs: Sequence[int], ckpts: Sequence[int], cfg: CollectConfig
) -> None:
    """Collect every (game, run, checkpoint) into `out_root` in DQN-Replay layout."""
    if cfg.transitions_per_ckpt < STACK_SIZE + UPDATE_HORIZON:
        raise UsageError(
            f"transitions_per_ckpt={cfg.transitions_per_ckpt}: must be at least {STACK_SIZE + 1}"
        )
    check_policy(cfg, games)
    if cfg.reward not in REWARDS:
        raise UsageError(f"reward={cfg.reward!r}: must be one of {', '.join(REWARDS)}")
    if not 0.0 <= cfg.sticky_action_prob <= 1.0:
        raise UsageError(f"sticky_action_prob={cfg.sticky_action_prob}: must be within [0, 1]")
    check_ids("runs", runs, 1)
    check_ids("ckpts", ckpts, 0)
    out_root = Path(out_root)
    if out_root.exists() and not out_root.is_dir():
        raise UsageError(f"{out_root} is a file; collect needs a directory")
    todo = {game.name: runs_to_collect(out_root, game, runs, ckpts, cfg) for game in games}
    total = sum(map(len, todo.values())) * len(ckpts) * cfg.transitions_per_ckpt
    with tqdm(total=total, unit="transition", unit_scale=True, desc="collect", disable=None) as bar:
        for game in games:
            if todo[game.name]:
                collect_game(out_root, game, todo[game.name], ckpts, cfg, bar)
            else:
                log.info("%s runs %s: already collected", game.name, list(runs))


def check_ids(what: str, values: Sequence[int], lowest: int) -> None:
    if not values:
        raise UsageError(f"no {what} given")
    bad = [v for v in values if v < lowest]
    if bad or len(set(values)) != len(values):
        raise UsageError(f"{what} {list(values)}: must be distinct integers >= {lowest}")
