"""Episode bookkeeping of a vector env: each env's running return and length, and the episodes that end."""

from __future__ import annotations

import numpy as np

from atari_pb.core.state import arrays_from_state, arrays_state


class EpisodeTracker:
    """Add every vector step's raw rewards and episode ends; get back the episodes that finished.

    tracker = EpisodeTracker(num_envs)
    for i, ret, length in tracker.step(reward, terminated | truncated): ...
    """

    def __init__(self, num_envs: int):
        self.returns = np.zeros(num_envs, np.float64)
        self.lengths = np.zeros(num_envs, np.int64)

    def state_dict(self) -> dict:
        return arrays_state({"returns": self.returns, "lengths": self.lengths})

    def load_state_dict(self, state: dict) -> None:
        arrays = arrays_from_state(state)
        self.returns[:], self.lengths[:] = arrays["returns"], arrays["lengths"]

    def step(self, reward: np.ndarray, ended: np.ndarray) -> list[tuple[int, float, int]]:
        """(env index, return, length) of each episode that ended with this step; those envs restart."""
        self.returns += reward
        self.lengths += 1
        finished = [(int(i), float(self.returns[i]), int(self.lengths[i])) for i in np.flatnonzero(ended)]
        self.returns[ended], self.lengths[ended] = 0.0, 0
        return finished
