"""What data to build: the schema of `datasets/*.yaml` (games, runs, checkpoints, samples per checkpoint,
and how `collect` plays when the data is made locally)."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from atari_pb.data.collect import CollectConfig


@dataclass
class DatasetConfig:
    games: list[str] = MISSING  # game names or split names (id, near_ood, far_ood)
    runs: list[int] = MISSING  # DQN-Replay runs 1..5
    ckpts: list[int] = MISSING  # DQN-Replay checkpoints 0..50
    samples_per_ckpt: int | None = None  # the first N transitions of each checkpoint (ingest, download)
    # how `ingest` reads the source tree (replay_format.py: LAYOUTS): dqn_replay, or atari_pb_far_ood (the
    # released Far-OOD BC buffer dumps, <Game>/<field>_<run>_<ckpt>.gz)
    layout: str = "dqn_replay"
    collect: CollectConfig = field(default_factory=CollectConfig)
