"""What every fine-tuning protocol is: one module, one config dataclass, one YAML, one registry entry.

A protocol (offline BC, Rainbow, ...) is a class registered under its name with
  - `Config`: its dataclass, which finetune/<name>.yaml mirrors section by section;
  - `train(cfg, task) -> FinetuneResult`: fine-tune an agent on one game from one encoder, where the task
    says the game, the encoder, the seed, whether the backbone trains too (the `e2e` baseline: a
    parameter, never a changed config) and, for offline protocols, the shard directory;
  - what the sweep must check before any job runs: `needs_data` (a shard directory), `env_frames(cfg)`
    (the frame stacks it plays, which the encoder must take), `check(cfg)`;
  - optionally `can_save_agent` and `save_agent(result, game, path)`.
How a protocol is scored and which requests it takes are declarations the sweep and eval read:
  - `rollouts`: True (default): the sweep plays `result.agent` in the split's evaluation env (eval/<split>.yaml)
    and the record's score is the mean episode return; False: the protocol scores itself (the probe: test F1,
    the mean of its category means) and returns that in `FinetuneResult.score`; the record then has 0 episodes;
  - `score_scale`: "game" (default): raw game scores, which eval normalises (DQN / human); any other name is
    the protocol's own fixed scale (the probe's "f1", in [0, 1]), aggregated raw and tabulated apart;
  - `score_parts` / `score_parts_title`: sub-scores every record holds in `config["score_parts"]` (the probe's
    categories), which eval and the leaderboard tabulate per method;
  - `baselines`: baselines beyond `random` and `e2e` that `--encoder` may name for this protocol (the probe's
    `pixels`); `FinetuneTask.baseline` tells `train` which one it runs;
  - `select_games(cfg, split, games, explicit)`: the games it runs out of the requested ones (the probe: the
    annotated ones; an explicitly requested game it cannot run is an error);
  - `check_data(cfg, data, games)`: for `needs_data` protocols, the data checked before any job, returning
    the frames per stack of its observations (None: not known), which the encoder must take.
The sweep (finetune/run.py) knows no protocol by name: adding one is a module here and a YAML in finetune/.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from atari_pb.config import config_file, load_config
from atari_pb.core.timing import NO_TIMING, Sections
from atari_pb.errors import UsageError
from atari_pb.eval.scoring import GAME_SCALE as _GAME_SCALE
from atari_pb.eval.scoring import Scoring
from atari_pb.finetune.resume import JobCheckpoint
from atari_pb.games import Game
from atari_pb.models.encoder import Encoder

PROTOCOLS: dict[str, type[Protocol]] = {}
# Protocol.score_scale of protocols scored in game points (eval/scoring.py, which records carry)
GAME_SCALE = _GAME_SCALE

P = TypeVar("P", bound="type[Protocol]")


@dataclass
class FinetuneTask:
    """One (game, encoder, seed) to fine-tune."""

    game: Game
    encoder: Encoder  # only read: the agent copies its backbone
    seed: int
    train_backbone: bool = False  # the `e2e` baseline
    data: Path | None = None  # protocols with `needs_data`: their data directory (shards, probe data)
    progress: bool = True
    sections: Sections = field(default=NO_TIMING)  # timing hook for bench/
    baseline: str = ""  # the baseline the encoder stands for: random, e2e or one of Protocol.baselines
    checkpoint: JobCheckpoint | None = None  # resumable protocols save and continue the job there


@dataclass
class FinetuneResult:
    # rollout protocols: `agent.act(uint8 (B, F, 84, 84))` -> greedy actions (B,), for evaluation rollouts;
    # self-scoring ones: the trained model, if any, for inspection (the probe's has a `backbone` too)
    agent: Any
    gradient_steps: int
    env_steps: int  # agent steps in the environment while training (0 for offline protocols)
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)  # protocol-specific figures for the record
    score: float | None = None  # self-scoring protocols (`rollouts = False`): the run's score; else None


@dataclass(frozen=True)
class FleetFootprint:
    """One fleet agent's share of a fleet's memory, as its protocol declares it (finetune/sizing.py turns it
    into bytes with the model's shapes)."""

    host_bytes: int  # host memory beyond the shared backbone (Rainbow: its replay when full)
    rows: int  # its input rows in one shared backbone pass (offline BC: its batch; Rainbow: obs + next obs)
    outputs: int  # its head's outputs at most (18 actions; Rainbow: 18 x atoms)
    device: str  # the protocol's train.device setting (auto, cpu, cuda:N)


class Protocol:
    name: ClassVar[str]
    Config: ClassVar[type]
    needs_data: ClassVar[bool] = False
    can_save_agent: ClassVar[bool] = False
    rollouts: ClassVar[bool] = True
    resumable: ClassVar[bool] = False  # `train` saves and continues `task.checkpoint` (finetune/resume.py)
    fleet: ClassVar[bool] = False  # `train_fleet` trains many tasks on one frozen backbone (--fleet)
    score_scale: ClassVar[str] = GAME_SCALE
    score_parts: ClassVar[tuple[str, ...]] = ()
    score_parts_title: ClassVar[str] = "part"
    baselines: ClassVar[tuple[str, ...]] = ()

    @staticmethod
    def check(cfg: Any) -> None:
        """Refuse a configuration that cannot run (a UsageError naming the key)."""

    @staticmethod
    def select_games(cfg: Any, split: str, games: Sequence[str], explicit: bool) -> list[str]:
        """The games to run out of `games` (the split's, or the requested ones when `explicit`)."""
        return list(games)

    @staticmethod
    def check_data(cfg: Any, data: Path, games: Sequence[str]) -> int | None:
        """`needs_data` protocols: check `data` for `games` before any job (a UsageError for a wrong request,
        a DataError for bad data); the frames per stack of its observations, None when it does not say."""
        return None

    @staticmethod
    def env_frames(cfg: Any) -> int | None:
        """Frames per stack of the environment the protocol trains in (None: it plays none)."""
        return None

    @staticmethod
    def train(cfg: Any, task: FinetuneTask) -> FinetuneResult:
        raise NotImplementedError

    @classmethod
    def save_agent(cls, result: FinetuneResult, game: Game, path: Path) -> Path:
        raise UsageError(f"the {cls.name} protocol cannot save its agents")

    @staticmethod
    def fleet_footprint(cfg: Any) -> FleetFootprint:
        """`fleet` protocols: what one agent of a fleet holds beyond the shared backbone, which sizes fleets
        to the machine (finetune/sizing.py)."""
        raise UsageError("this protocol does not train fleets")

    @classmethod
    def train_fleet(
        cls,
        cfg: Any,
        tasks: list[FinetuneTask],
        progress: bool = True,
        checkpoint: JobCheckpoint | None = None,
    ) -> list[FinetuneResult]:
        """`fleet` protocols: train every task in lockstep on their one frozen backbone, one result each."""
        raise UsageError(f"the {cls.name} protocol does not train fleets")


def register(cls: P) -> P:
    if cls.name in PROTOCOLS and PROTOCOLS[cls.name] is not cls:
        raise UsageError(
            f"protocol {cls.name!r} is registered twice ({PROTOCOLS[cls.name].__module__} and {cls.__module__})"
        )
    PROTOCOLS[cls.name] = cls
    return cls


def protocol_scoring(cls: type[Protocol]) -> Scoring:
    """What eval needs to score the protocol's records, written into each of them."""
    return Scoring(cls.score_scale, tuple(cls.score_parts), cls.score_parts_title)


def protocol_names() -> list[str]:
    from atari_pb import finetune  # noqa: F401  (imports every protocol module, filling the registry)

    return sorted(PROTOCOLS)


def protocol_class(name: str) -> type[Protocol]:
    valid = protocol_names()
    if name not in PROTOCOLS:
        raise UsageError(f"unknown protocol {name!r}; valid protocols: {', '.join(valid)}")
    return PROTOCOLS[name]


def load_protocol_config(name: str, overrides: Sequence[str] = (), path: str | Path | None = None) -> Any:
    """finetune/<name>.yaml (or `path`) over the protocol's dataclass, then `key=value` overrides, checked."""
    cls = protocol_class(name)
    cfg = load_config(cls.Config, path or config_file("finetune", name), overrides)
    cls.check(cfg)
    return cfg
