"""Training checkpoints: model (with EMA targets), optimiser, scheduler, step and RNG state, in one file
written atomically. The data stream and every per-step random number derive from (seed, step), so the step
is the sampler's whole state. Loading uses torch's weights-only unpickler: tensors and plain containers,
no code executed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from atari_pb.errors import DataError

CHECKPOINT_FORMAT = "atari-pb-pretrain/1"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds on a damaged file  # noqa: BLE001
        raise DataError(
            f"{path}: not a readable checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise DataError(f"{path}: not an atari-pb pre-training checkpoint")
    return state


def kept_note(path: Path, step_key: str = "step") -> str:
    """For an error that stops a run: which checkpoint survives it (the file is never touched)."""
    path = Path(path)
    if not path.exists():
        return "no checkpoint was written yet"
    step = load_checkpoint(path)[step_key]
    return f"the last good checkpoint ({path}, {step_key.replace('_', ' ')} {step}) is kept"
