"""The evaluation protocol of a split: eval/<split>.yaml (id, near_ood, far_ood) over `EvalConfig`.

split:     id | near_ood | far_ood (must match the file)
games:     the split's games to evaluate ([] = all of them); after loading always the explicit list
episodes:  counted evaluation episodes per game and seed
num_envs:  envs stepped in parallel (the paper uses 100)
epsilon:   evaluation epsilon-greedy (0.001)
env:       EnvConfig (atari_pb/envs/atari.py)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from atari_pb.config import config_file, load_config
from atari_pb.envs.atari import EnvConfig
from atari_pb.errors import UsageError
from atari_pb.games import SPLITS, get_game, split_games


@dataclass
class EvalConfig:
    split: str = "id"
    games: list[str] = field(default_factory=list)  # empty: every game of the split
    episodes: int = 100  # per game and seed; the paper runs 100 envs
    num_envs: int = 16  # the paper uses 100; 16 keeps a CPU machine responsive
    epsilon: float = 0.001
    env: EnvConfig = field(default_factory=EnvConfig)


def eval_yaml(split: str) -> Path:
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return config_file("eval", split)


def load_eval_config(split: str, overrides: Sequence[str] = ()) -> EvalConfig:
    """eval/<split>.yaml over EvalConfig's defaults, then `key=value` overrides; games resolved to the
    split's snake_case names (all of them when the list is empty) and checked to belong to it."""
    path = eval_yaml(split)
    cfg = load_config(EvalConfig, path, overrides)
    if cfg.split != split:
        raise UsageError(f"{path}: split {cfg.split!r} does not match the file's split {split!r}")
    valid = [g.name for g in split_games(split)]
    if not cfg.games:
        cfg.games = valid
    else:
        names = []
        for name in cfg.games:
            game = get_game(name)  # unknown names: a UsageError with close matches
            if game.split != split:
                raise UsageError(
                    f"game {game.name!r} is in split {game.split}, not {split}; {split} games: {', '.join(valid)}"
                )
            if game.name not in names:
                names.append(game.name)
        cfg.games = names
    if cfg.episodes < 1 or cfg.num_envs < 1:
        raise UsageError(f"{path}: episodes and num_envs must be >= 1 (got {cfg.episodes}, {cfg.num_envs})")
    if not 0.0 <= cfg.epsilon <= 1.0:
        raise UsageError(f"{path}: epsilon={cfg.epsilon} must be in [0, 1]")
    return cfg
