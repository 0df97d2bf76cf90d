"""Checkpoint files of every kind of run (pre-training, exploration, fine-tuning): one torch file written
atomically, stamped with a format and a `kind`, read back with torch's weights-only unpickler (tensors and
plain containers; no code executed). What a run puts in it is its own; `same_run` is the shared check that
a checkpoint continues the run it came from.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from atari_pb.errors import DataError, UsageError

CHECKPOINT_FORMAT = "atari-pb-checkpoint/1"


def save_checkpoint(path: str | Path, kind: str, state: Mapping[str, Any]) -> Path:
    """Write `state` to `path` atomically (a temporary file, fsync, rename): a kill leaves the old one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"format": CHECKPOINT_FORMAT, "kind": kind, **state}, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Read a checkpoint; with `kind`, one of another kind is a one-line error naming both."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds on a damaged file  # noqa: BLE001
        raise DataError(
            f"{path}: not a readable checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise DataError(f"{path}: not an atari-pb checkpoint (format {CHECKPOINT_FORMAT})")
    if kind is not None and state.get("kind") != kind:
        raise UsageError(f"{path} is a {state.get('kind')} checkpoint, not a {kind} one")
    return state


def kept_note(path: str | Path, step_key: str = "step") -> str:
    """For an error that stops a run: which checkpoint survives it (the file is never touched)."""
    path = Path(path)
    if not path.exists():
        return "no checkpoint was written yet"
    step = load_checkpoint(path)[step_key]
    return f"the last good checkpoint ({path}, {step_key.replace('_', ' ')} {step}) is kept"


def same_run(
    path: str | Path,
    saved: Mapping[str, Any],
    now: Mapping[str, Any],
    sections: Iterable[str],
    keys: Iterable[str] = (),
) -> None:
    """A checkpoint continues only the run it came from: every config `section` (a top-level key of the
    config dicts) and every dotted `key` (section.field) must be what the checkpoint was made with. Budgets
    and intervals are left out by the caller, so a run may be continued for longer."""
    for section in sections:
        was, is_ = saved.get(section), now.get(section)
        if was != is_:
            while isinstance(was, Mapping) and isinstance(is_, Mapping):  # name the deepest differing key
                key = next(k for k in (*was, *is_) if was.get(k) != is_.get(k))
                section, was, is_ = f"{section}.{key}", was.get(key), is_.get(key)
            raise UsageError(f"{path}: the run was made with {section}={was}, not {is_}")
    for key in keys:
        section, name = key.split(".", 1)
        was, is_ = saved.get(section, {}).get(name), now.get(section, {}).get(name)
        if was != is_:
            raise UsageError(f"{path}: the run was made with {key}={was}, not {is_}")
