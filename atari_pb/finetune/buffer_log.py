"""A Rainbow agent's training buffer, logged the way the released Atari-PB code made its Far-OOD BC data.

The released data generator (configs/data_generation.yaml, configs/agent/rainbow_nature.yaml) trains a
Nature-CNN Rainbow for 2M steps and, every `save_buffer_every` = 1M steps, dumps its whole replay buffer
(src/agents/base.py:223-229, src/agents/buffers/per_buffer.py:224-246):

    <dir>/<Game>/{observation,action,reward,terminal}_<run>_<ckpt>.gz   (ckpt 1, 2, ...)

each a gzip'ed .npy of the buffer's `size` rows in ring order: the last frame of the stack the action was
chosen on (uint8 84x84), the action (an index into the released action set), the sign-clipped reward and
`done` (game over, the horizon, or a lost life), the three scalars float64 (np.zeros' dtype). The buffer
writes a transition `delay - 1` steps late (its n-step deque, per_buffer.py:106-111), so a dump lacks the
last `delay - 1` transitions and, before the ring first fills, ends in zero rows. `atari-pb ingest
--layout atari_pb_far_ood` reads these files (the released loader's selection: datasets/far_ood_released.yaml).

    log = BufferLog(cfg.buffer_log, game, run=seed + 1)
    log.add(frame, action, clipped_reward, done, step)   # every agent step of the one training env;
                                                         # writes ckpt k after k * every steps
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from atari_pb.core.state import arrays_from_state, arrays_state
from atari_pb.data.replay_format import FRAME_SHAPE, released_file, write_gz_npy
from atari_pb.errors import UsageError
from atari_pb.games import Game


@dataclass
class BufferLogConfig:
    """The `buffer_log:` section of finetune/rainbow.yaml: off unless `dir` is set."""

    dir: str = ""  # where the dumps go (<dir>/<Game>/...); empty: no logging
    every: int = 1_000_000  # agent steps between dumps (released save_buffer_every)
    size: int = 1_000_000  # rows of the logged buffer (released buffer.size); memory is committed as written
    delay: int = 10  # the released buffer's n-step deque length (max_n_step): rows are written delay-1 late


class BufferLog:
    """The released PERBuffer's storage and save_buffer, without its sampling."""

    def __init__(self, cfg: BufferLogConfig, game: Game, run: int):
        self.cfg, self.game, self.run = cfg, game, run
        self.frames = np.zeros((cfg.size, *FRAME_SHAPE), dtype=np.uint8)
        self.actions = np.zeros(cfg.size)
        self.rewards = np.zeros(cfg.size)
        self.dones = np.zeros(cfg.size)
        self.pending: deque[tuple[np.ndarray, int, float, bool]] = deque(maxlen=cfg.delay)
        self.written = 0  # rows written since the start (ring position = written % size)
        self.ckpt = 1  # the released buffer numbers its dumps from 1
        self.files: list[Path] = []

    def check_fresh(self) -> None:
        """A run that starts (not one that resumes) must not overwrite another run's dumps."""
        first = released_file(Path(self.cfg.dir), self.game.replay_name, self.run, "observation", 1)
        if first.exists():
            raise UsageError(
                f"buffer_log.dir: {first} already exists (a buffer logged before); choose another dir"
            )

    def add_step(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        dones: np.ndarray,
        step: int,
        first_dump: int,
    ) -> None:
        """`add` for a vector step of the one training env: its stack's last frame, the sign-clipped reward."""
        self.add(obs[0, -1], actions[0], np.sign(rewards[0]), dones[0], step, first_dump)

    def add(
        self, frame: np.ndarray, action: int, reward: float, done: bool, step: int, first_dump: int = 0
    ) -> None:
        """Log agent step `step` (1-based, as the released loop counts); dump after every `every` steps from
        step `first_dump` on (the released loop saves only once learning has started)."""
        self.pending.append((frame.copy(), int(action), float(reward), bool(done)))
        if len(self.pending) == self.cfg.delay:
            frame, action, reward, done = self.pending[0]
            row = self.written % self.cfg.size
            self.frames[row], self.actions[row], self.rewards[row], self.dones[row] = (
                frame,
                action,
                reward,
                done,
            )
            self.written += 1
        if step >= first_dump and step % self.cfg.every == 0:
            self.dump()

    def state_dict(self) -> dict:
        """All but the frames (a checkpoint mirrors those incrementally: slots_written_since)."""
        pending = [(torch.from_numpy(f), a, r, d) for f, a, r, d in self.pending]
        arrays = arrays_state({"actions": self.actions, "rewards": self.rewards, "dones": self.dones})
        return {"arrays": arrays, "pending": pending, "written": self.written, "ckpt": self.ckpt,
                "files": [str(f) for f in self.files]}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        arrays = arrays_from_state(state["arrays"])
        self.actions[:], self.rewards[:], self.dones[:] = (
            arrays["actions"],
            arrays["rewards"],
            arrays["dones"],
        )
        self.pending.clear()
        self.pending.extend((f.numpy(), a, r, d) for f, a, r, d in state["pending"])
        self.written, self.ckpt = int(state["written"]), int(state["ckpt"])
        self.files = [Path(f) for f in state["files"]]

    def slots_written_since(self, written: int) -> np.ndarray:
        count = min(self.written - written, self.cfg.size)
        return np.arange(self.written - count, self.written, dtype=np.int64) % self.cfg.size

    def dump(self) -> Path:
        arrays = {
            "observation": self.frames,
            "action": self.actions,
            "reward": self.rewards,
            "terminal": self.dones,
        }
        paths = {
            f: released_file(Path(self.cfg.dir), self.game.replay_name, self.run, f, self.ckpt)
            for f in arrays
        }
        paths["observation"].parent.mkdir(parents=True, exist_ok=True)
        for field, array in arrays.items():
            write_gz_npy(paths[field], array)
        self.files += paths.values()
        self.ckpt += 1
        return paths["observation"]
