"""RL Unplugged files for the tests, written without atari_pb's reader: the `tfrecord` package's
`TFRecordWriter` (its own compiled tf.train.Example schema and its own CRC32C, from the `crc32c` package),
Pillow's PNG encoder, and Python's gzip, in RLU's exact layout `<Game>/run_<r>-<ckpt:05d>-of-<N:05d>`.

An episode is given as the steps a DQN agent logged: L observations with the action taken at each and the
(clipped) reward after it, and a last step whose action and reward are padding (RLU's terminal state).
`expected` turns a file's episodes into the DQN-Replay transitions a shard must hold, from the rule as
stated in the parity document, not from atari_pb's code.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tfrecord.writer import TFRecordWriter


@dataclass
class Episode:
    frames: np.ndarray  # (L, 84, 84) uint8
    actions: np.ndarray  # (L,) int
    rewards: np.ndarray  # (L,) clipped, float
    terminal: bool  # last discount 0 (the game ended) or 1 (the episode was cut)
    episode_idx: int = 0

    def datum(self, ckpt: int) -> dict:
        pngs = []
        for frame in self.frames:
            buf = io.BytesIO()
            Image.fromarray(frame, mode="L").save(buf, format="PNG")
            pngs.append(buf.getvalue())
        discounts = np.ones(len(self.actions), np.float32)
        if self.terminal:
            discounts[-1] = 0.0
        rewards = [float(r) for r in self.rewards]
        return {
            "checkpoint_idx": (ckpt, "int"),
            "episode_idx": (self.episode_idx, "int"),
            "episode_return": (float(sum(rewards)), "float"),
            "clipped_episode_return": (float(sum(rewards)), "float"),
            "observations": (pngs, "byte"),
            "actions": ([int(a) for a in self.actions], "int"),
            "unclipped_rewards": (rewards, "float"),
            "clipped_rewards": (rewards, "float"),
            "discounts": ([float(d) for d in discounts], "float"),
        }


def write_rlu_file(path: Path, episodes: list[Episode], ckpt: int, datums: list[dict] | None = None) -> Path:
    """One GZIP TFRecord file, a record per episode (or per given datum), as RLU stores a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.with_name(path.name + ".raw")
    writer = TFRecordWriter(str(raw))
    for datum in datums if datums is not None else [e.datum(ckpt) for e in episodes]:
        writer.write(datum)
    writer.close()
    with open(path, "wb") as out:
        out.write(gzip.compress(raw.read_bytes(), mtime=0))
    raw.unlink()
    return path


def make_episodes(frames: np.ndarray, actions: np.ndarray, rewards: np.ndarray, plan, start_idx: int = 0):
    """Cut real frames into episodes of the planned (length, terminal) shapes, in order."""
    episodes, at = [], 0
    for i, (length, terminal) in enumerate(plan):
        sl = slice(at, at + length)
        episodes.append(Episode(frames[sl], actions[sl], rewards[sl], terminal, start_idx + i))
        at += length
    return episodes


def expected(episodes: list[Episode], samples: int) -> dict[str, np.ndarray]:
    """The first `samples` DQN-Replay transitions: each episode's steps but its last (the observation after
    the last action, which DQN-Replay never stores), terminal = 1 on the last kept step of every episode
    that ends inside the prefix (Dopamine marks every episode end so)."""
    obs, act, rew, term = [], [], [], []
    for e in episodes:
        k = len(e.actions) - 1
        obs.append(e.frames[:k])
        act.append(e.actions[:k])
        rew.append(e.rewards[:k])
        t = np.zeros(k, np.uint8)
        if k:
            t[-1] = 1
        term.append(t)
    out = {
        "observation": np.concatenate(obs)[:samples],
        "action": np.concatenate(act)[:samples].astype(np.int32),
        "reward": np.concatenate(rew)[:samples].astype(np.float32),
        "terminal": np.concatenate(term)[:samples],
    }
    assert len(out["action"]) == samples, "the planned episodes are shorter than the prefix"
    return out
