"""What data to build: the schema of `datasets/*.yaml` (games, runs, checkpoints, samples per checkpoint,
and how `collect` plays when the data is made locally)."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING


@dataclass
class CollectConfig:
    """How `atari-pb collect` plays (the `collect:` section of datasets/*.yaml; collect.py plays). Here, not
    in collect.py, so that the data commands read a dataset file without importing the env and torch."""

    transitions_per_ckpt: int = 2500
    policy: str = (
        "random"  # random | eps-greedy:<agent file from `finetune --save-agent`; {game} = each game>
    )
    epsilon: float = 0.01  # eps-greedy only: DQN-Replay's agents logged with their final epsilon, 0.01
    sticky_action_prob: float = 0.25
    seed: int = 0
    compress_level: int = 6
    num_threads: int = 0  # ALE vector-env threads; 0 = one per core
    reward: str = "clipped"  # clipped: np.clip(r, -1, 1), as DQN-Replay stores it | raw: the score change


@dataclass
class DatasetConfig:
    games: list[str] = MISSING  # game names or split names (id, near_ood, far_ood)
    runs: list[int] = MISSING  # DQN-Replay runs 1..5
    ckpts: list[int] = MISSING  # DQN-Replay checkpoints 0..50
    samples_per_ckpt: int | None = None  # the first N transitions of each checkpoint (ingest, download)
    # how `ingest` reads the source tree and `download` fetches it (replay_format.py: LAYOUTS): dqn_replay,
    # rlu (RL Unplugged, <Game>/run_<r>-<ckpt>-of-<N>), or atari_pb_far_ood (the released Far-OOD BC buffer
    # dumps, <Game>/<field>_<run>_<ckpt>.gz)
    layout: str = "dqn_replay"
    collect: CollectConfig = field(default_factory=CollectConfig)
