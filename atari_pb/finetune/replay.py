"""Prioritised n-step replay for Rainbow, fed by a stream from `num_envs` parallel environments.

Memory: the buffer stores one 84x84 frame per step, not the 4-frame stack the agent saw (7 KB instead
of 28 KB a transition), and rebuilds stacks when it samples, with zeros before a stack's first frame:
an episode's first, or the first after a lost life where the env restarted its stack from zeros (the
released Atari-PB env, life_loss="released"). So the stacks learned from are exactly the ones the env
showed.

Layout: the capacity is split into one ring per environment, so each environment's steps lie in
consecutive slots and "the frame k steps earlier" or "the reward k steps later" is index arithmetic
inside its ring, the same for a whole batch. When an episode ends, one extra slot holds the frame that
followed its last step (the env's `final_obs`): a truncated episode's n-step target bootstraps from it.
That slot is never sampled itself.

Validity lives in the priorities: a slot's sum-tree priority is 0 until its transition can be sampled,
that is once the slot its n-step target bootstraps from has been written, and goes back to 0 when the
ring is about to overwrite the frames its stack needs. So sampling (proportional to priority) can never
return a transition whose n-step future is missing or overwritten.

Prioritisation (Schaul et al. 2016, proportional variant): P(i) = p_i^omega / sum_k p_k^omega, new
transitions enter with the largest p^omega seen so far, importance weights (N P(i))^-beta / max over the
batch, N = number of sampleable transitions. Sampling is stratified (one draw per equal segment of the
total priority) and descends the sum tree for the whole batch at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atari_pb.core.state import arrays_from_state, arrays_state, generator_state, set_generator_state


class SumTree:
    """A complete binary tree over `capacity` leaves whose inner nodes hold the sums of their children.
    Node 1 is the root, node i has children 2i and 2i + 1, leaf j is node size + j."""

    def __init__(self, capacity: int):
        self.size = 1 << max(0, (capacity - 1).bit_length())
        self.depth = self.size.bit_length() - 1
        self.nodes = np.zeros(2 * self.size, dtype=np.float64)

    @property
    def total(self) -> float:
        return float(self.nodes[1])

    def get(self, leaves: np.ndarray) -> np.ndarray:
        return self.nodes[self.size + np.asarray(leaves)]

    def set(self, leaves: np.ndarray, values: np.ndarray) -> None:
        """Set leaves (duplicates: the last value wins) and recompute their ancestors level by level."""
        nodes = self.size + np.asarray(leaves, dtype=np.int64)
        self.nodes[nodes] = values
        nodes = np.unique(nodes // 2)
        while nodes[0] >= 1:
            self.nodes[nodes] = self.nodes[2 * nodes] + self.nodes[2 * nodes + 1]
            if nodes[0] == 1:
                break
            nodes = np.unique(nodes // 2)

    def find(self, mass: np.ndarray) -> np.ndarray:
        """The leaf whose cumulative-priority interval contains each value of `mass` (in [0, total))."""
        nodes = np.ones(len(mass), dtype=np.int64)
        mass = np.array(mass, dtype=np.float64)
        for _ in range(self.depth):
            left = self.nodes[2 * nodes]
            right = mass >= left  # ">=": a zero-mass left subtree is never entered
            mass -= np.where(right, left, 0.0)
            nodes = 2 * nodes + right
        return nodes - self.size


@dataclass
class ReplayBatch:
    """A sampled batch. obs and next_obs are uint8 (B, frames, H, W) stacks; `returns` is the discounted
    sum of rewards up to n steps or to the episode's end, `discounts` gamma^k for the bootstrap from
    next_obs (0 where the episode terminated inside the window); `weights` the importance weights."""

    indices: np.ndarray  # (B,) slots, for update_priorities
    obs: np.ndarray
    actions: np.ndarray  # (B,) int64
    returns: np.ndarray  # (B,) float32
    discounts: np.ndarray  # (B,) float32
    next_obs: np.ndarray
    weights: np.ndarray  # (B,) float32


class PrioritizedReplay:
    """Prioritised n-step replay over single frames from `num_envs` parallel streams (see module doc)."""

    def __init__(
        self,
        capacity: int,
        num_envs: int = 1,
        n_step: int = 10,
        gamma: float = 0.99,
        priority_exponent: float = 0.5,
        frames: int = 4,
        frame_shape: tuple[int, int] = (84, 84),
        seed: int = 0,
    ):
        self.seg = capacity // num_envs  # ring length per environment
        if self.seg < 2 * (n_step + frames):
            raise ValueError(f"capacity {capacity} is too small for {num_envs} envs and n_step {n_step}")
        self.capacity = self.seg * num_envs
        self.num_envs, self.n_step, self.gamma = num_envs, n_step, gamma
        self.omega, self.frames = priority_exponent, frames
        # np.zeros is lazily committed: memory grows with what is written, not with the capacity
        self.frame = np.zeros((self.capacity, *frame_shape), dtype=np.uint8)
        self.action = np.zeros(self.capacity, dtype=np.int64)
        self.reward = np.zeros(self.capacity, dtype=np.float32)
        self.terminal = np.zeros(self.capacity, dtype=bool)  # no bootstrap past this step
        self.last = np.zeros(self.capacity, dtype=bool)  # the episode ended with this step
        self.first = np.zeros(self.capacity, dtype=bool)  # a stack's first frame: stacks stop here
        self.ends = np.zeros(self.capacity, dtype=bool)  # terminal | last: n-step windows stop here
        self.valid = np.zeros(self.capacity, dtype=bool)  # sampleable
        self.tree = SumTree(self.capacity)
        self.max_priority = 1.0  # in p^omega units, as stored in the tree
        self.rng = np.random.default_rng(seed)
        self.cursor = np.zeros(num_envs, dtype=np.int64)  # next position in each ring
        self.written = np.zeros(num_envs, dtype=np.int64)  # slots ever written per ring
        self.new_episode = np.ones(num_envs, dtype=bool)  # the next slot starts a stack (an episode's or not)
        self.pending: list[list[int]] = [[] for _ in range(num_envs)]  # slots awaiting their future

    @staticmethod
    def slot_bytes(frame_shape: tuple[int, int] = (84, 84)) -> int:
        """Memory of one slot once written: its frame, action, reward, six flags and two sum-tree nodes."""
        return int(np.prod(frame_shape)) + 8 + 4 + 6 + 2 * 8

    # ------------------------------------------------------------------ checkpoints
    STATE_ARRAYS = ("action", "reward", "terminal", "last", "first", "ends", "valid", "cursor", "written")

    def state_dict(self) -> dict:
        """Everything but the frames (see `slots_written_since`: a checkpoint carries only the new ones)."""
        arrays = {k: getattr(self, k) for k in self.STATE_ARRAYS}
        return {
            "arrays": arrays_state({**arrays, "new_episode": self.new_episode, "tree": self.tree.nodes}),
            "pending": [list(p) for p in self.pending],
            "max_priority": self.max_priority,
            "rng": generator_state(self.rng),
        }

    def load_state_dict(self, state: dict) -> None:
        arrays = arrays_from_state(state["arrays"])
        for k in self.STATE_ARRAYS:
            getattr(self, k)[:] = arrays[k]
        self.new_episode[:] = arrays["new_episode"]
        self.tree.nodes[:] = arrays["tree"]
        self.pending = [list(p) for p in state["pending"]]
        self.max_priority = float(state["max_priority"])
        set_generator_state(self.rng, state["rng"])

    def slots_written_since(self, written: np.ndarray) -> np.ndarray:
        """The slots written since each ring's write count was `written` (at most the whole ring)."""
        slots = []
        for env in range(self.num_envs):
            count = min(int(self.written[env] - written[env]), self.seg)
            positions = np.arange(int(self.written[env]) - count, int(self.written[env]))
            slots.append(self._slot(env, positions))
        return np.concatenate(slots).astype(np.int64)

    def __len__(self) -> int:
        """The number of transitions that can be sampled now."""
        return int(self.valid.sum())

    def _slot(self, env: np.ndarray, pos: np.ndarray) -> np.ndarray:
        return env * self.seg + pos % self.seg

    # ------------------------------------------------------------------ writing
    def add(
        self,
        frames: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminals: np.ndarray,
        episode_ends: np.ndarray,
        final_frames: np.ndarray | None = None,
        stack_restarts: np.ndarray | None = None,
    ) -> None:
        """One step of every environment. frames (N, H, W): the newest frame of the observation each env
        acted on (obs[:, -1]); actions, rewards (as learned from: clip them first); terminals: no
        bootstrap past this step (game over, or a lost life when those count as terminal); episode_ends:
        the episode ended with this step (terminated or truncated: the next `add` starts a new one);
        final_frames (N, H, W): the newest frame of the observation after the last step, where
        episode_ends (the env's info["final_obs"][:, -1]); stack_restarts: the observation after this
        step restarted its stack from zeros while the episode goes on (the env's info["stack_reset"]: a
        lost life in the released env), so stacks from the next frame on look no further back."""
        for env in range(self.num_envs):
            self._write(env, frames[env], actions[env], rewards[env], terminals[env], episode_ends[env])
            if episode_ends[env]:
                if final_frames is None:
                    raise ValueError("an episode ended: add needs final_frames")
                self._write(env, final_frames[env], 0, 0.0, False, False, is_transition=False)
                self.new_episode[env] = True
            elif stack_restarts is not None and stack_restarts[env]:
                self.new_episode[env] = True

    def _write(
        self,
        env: int,
        frame: np.ndarray,
        action: int,
        reward: float,
        terminal: bool,
        last: bool,
        is_transition: bool = True,
    ) -> None:
        slot = int(self._slot(env, self.cursor[env]))
        # the ring's oldest slots lose the frames their stacks look back to: retire them first
        retire = self._slot(env, self.cursor[env] + np.arange(self.frames))
        self._set_priority(retire, np.zeros(len(retire)), force=True)

        self.frame[slot] = frame
        self.action[slot], self.reward[slot] = action, reward
        self.terminal[slot], self.last[slot] = terminal, last
        self.ends[slot] = terminal or last
        self.first[slot] = self.new_episode[env]
        self.new_episode[env] = False

        # transitions whose bootstrap slot is this one are now complete: every pending one when the
        # previous slot ended a window (terminal or episode end), else the one n steps back
        pending = self.pending[env]
        if pending:
            prev = int(self._slot(env, self.cursor[env] - 1))
            if self.ends[prev]:
                done, self.pending[env] = pending, []
            elif self.written[env] - pending[0] >= self.n_step:
                done, self.pending[env] = pending[:1], pending[1:]
            else:
                done = []
            if done:
                slots = self._slot(env, np.array(done))
                self.valid[slots] = True
                self._set_priority(slots, np.full(len(slots), self.max_priority))
        if is_transition:
            self.pending[env].append(int(self.written[env]))  # by stream position: survives wrap-around
        self.cursor[env] = (self.cursor[env] + 1) % self.seg
        self.written[env] += 1

    def _set_priority(self, slots: np.ndarray, values: np.ndarray, force: bool = False) -> None:
        if force:
            self.valid[slots] = False
        self.tree.set(slots, np.where(self.valid[slots], values, 0.0))

    def update_priorities(self, indices: np.ndarray, priorities: np.ndarray) -> None:
        """Priorities p >= 0 (e.g. each sample's loss) for sampled slots; stored as p^omega. A slot that
        stopped being sampleable since it was sampled stays at 0."""
        values = np.power(np.asarray(priorities, dtype=np.float64), self.omega)
        self._set_priority(np.asarray(indices), values)
        if len(values):
            self.max_priority = max(self.max_priority, float(values.max()))

    def probabilities(self) -> np.ndarray:
        """P(i) for every slot (for tests and diagnostics)."""
        return self.tree.get(np.arange(self.capacity)) / self.tree.total

    # ------------------------------------------------------------------ sampling
    def sample(self, batch_size: int, beta: float) -> ReplayBatch:
        total = self.tree.total
        if total <= 0:
            raise ValueError("no transition can be sampled yet")
        # stratified: one uniform draw inside each of batch_size equal segments of the total mass
        mass = (np.arange(batch_size) + self.rng.random(batch_size)) * (total / batch_size)
        idx = self.tree.find(np.minimum(mass, np.nextafter(total, 0.0)))
        bad = self.tree.get(idx) <= 0  # rounding in the descent can end on an empty leaf: redraw
        while bad.any():
            idx[bad] = self.tree.find(self.rng.random(int(bad.sum())) * total)
            bad = self.tree.get(idx) <= 0
        return self.gather(idx, beta)

    def gather(self, idx: np.ndarray, beta: float = 1.0) -> ReplayBatch:
        """The batch for slots `idx` (which must be sampleable)."""
        env, pos = idx // self.seg, idx % self.seg
        n = self.n_step
        ahead = self._slot(env[:, None], pos[:, None] + np.arange(n))  # (B, n) this step and n-1 after
        ends = self.ends[ahead]
        stop = np.where(ends.any(1), ends.argmax(1), n - 1)  # the window's last step
        inside = np.arange(n) <= stop[:, None]
        returns = (self.reward[ahead] * inside * self.gamma ** np.arange(n)).sum(1)
        terminated = self.terminal[ahead[np.arange(len(idx)), stop]]
        discounts = np.where(terminated, 0.0, self.gamma ** (stop + 1.0))
        next_idx = self._slot(env, pos + stop + 1)

        probs = self.tree.get(idx) / self.tree.total
        weights = (len(self) * probs) ** -beta
        return ReplayBatch(
            indices=idx,
            obs=self.stack(idx),
            actions=self.action[idx],
            returns=returns.astype(np.float32),
            discounts=discounts.astype(np.float32),
            next_obs=self.stack(next_idx),
            weights=(weights / weights.max()).astype(np.float32),
        )

    def stack(self, idx: np.ndarray) -> np.ndarray:
        """(B, frames, H, W) stacks ending at slots `idx`, zero before each stack's first frame."""
        env, pos = idx[:, None] // self.seg, idx[:, None] % self.seg
        back = np.arange(self.frames - 1, -1, -1)  # oldest frame first
        slots = self._slot(env, pos - back)  # (B, frames)
        # a frame is kept unless a first frame lies after it (and at or before the stack's end)
        first_after = np.cumsum(self.first[slots][:, ::-1], axis=1)[:, ::-1]  # firsts in slots[j:]
        keep = (first_after - self.first[slots]) == 0
        out = self.frame[slots]
        out[~keep] = 0
        return out
