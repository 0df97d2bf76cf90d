"""Pre-training checkpoints: the shared checkpoint file (atari_pb.core.checkpoint) of kind `pretrain`,
holding the objective (with its EMA targets), optimiser, scheduler, step and RNG state. The data stream and
every per-step random number derive from (seed, step), so the step is the sampler's whole state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from atari_pb.core import checkpoint as _checkpoint
from atari_pb.core.checkpoint import kept_note, load_checkpoint

KIND = "pretrain"

__all__ = ["KIND", "kept_note", "load_checkpoint", "save_checkpoint"]


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    return _checkpoint.save_checkpoint(path, KIND, state)
