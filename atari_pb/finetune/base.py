"""What every fine-tuning protocol is: one module, one config dataclass, one YAML, one registry entry.

A protocol (offline BC, Rainbow, ...) is a class registered under its name with
  - `Config`: its dataclass, which finetune/<name>.yaml mirrors section by section;
  - `train(cfg, task) -> FinetuneResult`: fine-tune an agent on one game from one encoder, where the task
    says the game, the encoder, the seed, whether the backbone trains too (the `e2e` baseline: a
    parameter, never a changed config) and, for offline protocols, the shard directory;
  - what the sweep must check before any job runs: `needs_data` (a shard directory), `env_frames(cfg)`
    (the frame stacks it plays, which the encoder must take), `check(cfg)`;
  - optionally `can_save_agent` and `save_agent(result, game, path)`.
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
from atari_pb.games import Game
from atari_pb.models.encoder import Encoder

PROTOCOLS: dict[str, type[Protocol]] = {}

P = TypeVar("P", bound="type[Protocol]")


@dataclass
class FinetuneTask:
    """One (game, encoder, seed) to fine-tune."""

    game: Game
    encoder: Encoder  # only read: the agent copies its backbone
    seed: int
    train_backbone: bool = False  # the `e2e` baseline
    data: Path | None = None  # offline protocols: the shard directory of the game's logged data
    progress: bool = True
    sections: Sections = field(default=NO_TIMING)  # timing hook for bench/


@dataclass
class FinetuneResult:
    agent: Any  # `agent.act(uint8 (B, F, 84, 84))` -> greedy actions (B,), for evaluation rollouts
    gradient_steps: int
    env_steps: int  # agent steps in the environment while training (0 for offline protocols)
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)  # protocol-specific figures for the record


class Protocol:
    name: ClassVar[str]
    Config: ClassVar[type]
    needs_data: ClassVar[bool] = False
    can_save_agent: ClassVar[bool] = False

    @staticmethod
    def check(cfg: Any) -> None:
        """Refuse a configuration that cannot run (a UsageError naming the key)."""

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


def register(cls: P) -> P:
    if cls.name in PROTOCOLS and PROTOCOLS[cls.name] is not cls:
        raise UsageError(
            f"protocol {cls.name!r} is registered twice ({PROTOCOLS[cls.name].__module__} and {cls.__module__})"
        )
    PROTOCOLS[cls.name] = cls
    return cls


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
