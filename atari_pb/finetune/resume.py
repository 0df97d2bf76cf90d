"""Resumable fine-tuning jobs: one checkpoint directory per (method, protocol, game, seed) job.

    ckpt = JobCheckpoint(root / "curl/rainbow/pong/seed0", "finetune-rainbow", identity, every=5000)
    state = ckpt.load()          # None: start from scratch (nothing there, or a corrupt file set aside)
    ...
    if ckpt.due(updates):
        ckpt.save(updates, {...})  # atomic: a kill leaves the previous checkpoint
    ckpt.remove()                # the job's record is written: nothing left to resume

`identity` is what the job was made with (its protocol config, encoder hash, game, seed, ...): a
checkpoint from another job or configuration is refused with one line naming the first differing key. A
checkpoint that cannot be read is renamed `state.pt.corrupt-<n>` (never deleted) and the job starts over
with a warning.

Large frame rings (Rainbow's replay, up to 100k frames) are not rewritten whole at every checkpoint:
`FrameMirror` keeps a copy in `<name>.u8` beside the checkpoint and each checkpoint carries only the slots
written since the previous one, which are applied to the mirror after the checkpoint is saved (and again
when it is loaded, so a kill between the two loses nothing).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atari_pb.core.checkpoint import load_checkpoint, same_run, save_checkpoint
from atari_pb.errors import DataError

log = logging.getLogger(__name__)
STATE_FILE = "state.pt"


class JobCheckpoint:
    def __init__(self, directory: str | Path, kind: str, identity: Mapping[str, Any], every: int):
        self.dir, self.kind, self.identity, self.every = Path(directory), kind, dict(identity), every
        self.path = self.dir / STATE_FILE
        self.last = 0  # the step of the last checkpoint saved or loaded

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        try:
            state = load_checkpoint(self.path, self.kind)
        except DataError as err:
            self._set_aside(str(err))
            return None
        same_run(self.path, state["identity"], self.identity, sections=list(self.identity))
        self.last = int(state["step"])
        log.info("%s: resuming from %s at step %d", self.kind, self.path, self.last)
        return state

    def _set_aside(self, why: str) -> None:
        n = 1
        while (aside := self.path.with_name(f"{STATE_FILE}.corrupt-{n}")).exists():
            n += 1
        self.path.rename(aside)
        for mirror in self.dir.glob("*.u8"):  # its frames belong to the unreadable state
            mirror.rename(mirror.with_name(f"{mirror.name}.corrupt-{n}"))
        log.warning("%s; set aside as %s, the job starts over", why, aside)

    def due(self, step: int) -> bool:
        """`every` steps (updates) or more since the last checkpoint."""
        return self.every > 0 and step - self.last >= self.every

    def save(self, step: int, state: Mapping[str, Any]) -> None:
        save_checkpoint(self.path, self.kind, {"identity": self.identity, "step": step, **state})
        self.last = step

    def remove(self) -> None:
        remove_checkpoint(self.dir)


class FrameMirror:
    """A uint8 frame array (N, H, W) mirrored incrementally to `<dir>/<name>.u8`."""

    def __init__(self, directory: Path, name: str, frames: np.ndarray):
        self.frames = frames
        self.path = Path(directory) / f"{name}.u8"

    def delta(self, slots: np.ndarray) -> dict[str, torch.Tensor]:
        """The checkpoint's share: the frames of `slots` (written since the last checkpoint)."""
        slots = np.unique(slots)
        return {
            "slots": torch.from_numpy(slots.astype(np.int64)),
            "frames": torch.from_numpy(self.frames[slots]),
        }

    def apply(self, delta: Mapping[str, torch.Tensor]) -> None:
        """Write a saved delta into the mirror file (after its checkpoint is on disk; idempotent)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mode = "r+" if self.path.exists() else "w+"
        mirror = np.memmap(self.path, np.uint8, mode, shape=self.frames.shape)
        mirror[delta["slots"].numpy()] = delta["frames"].numpy()
        mirror.flush()
        del mirror

    def restore(self, delta: Mapping[str, torch.Tensor]) -> None:
        """Fill the live array from the mirror, then from the checkpoint's own delta."""
        if self.path.exists():
            self.frames[:] = np.memmap(self.path, np.uint8, "r", shape=self.frames.shape)
        self.frames[delta["slots"].numpy()] = delta["frames"].numpy()
        self.apply(delta)


def remove_checkpoint(directory: str | Path) -> None:
    """Delete a job's checkpoint and its mirrors; files set aside as corrupt stay (and so does the folder)."""
    directory = Path(directory)
    for path in [directory / STATE_FILE, *directory.glob("*.u8")]:
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # missing, or not empty: something set aside is kept
        directory.rmdir()
