"""The diagnostics the PreND paper reports, as metrics and PNG plots.

1. Collapse: the mean and variance of the raw intrinsic reward of each rollout over training (written by
   the runner as `intrinsic/raw_mean`, `intrinsic/raw_var`). A reward whose mean and variance shrink to
   zero no longer tells states apart.

2. Does the reward track novelty? A fixed probe set of frame stacks, gathered once before training by a
   random agent in its own environments (seed `diagnostics.probe_seed`) and kept in the checkpoint, is
   scored at each diagnostic interval by
     - its intrinsic reward r(x) (raw: the normalisation is one positive scale, no effect on correlation);
     - its novelty in the target's embedding space:

           novelty(x) = (1/k) * sum_{j=1..k} || f(x) - m_(j)(x) ||_2

       where f is the target network (PreND: the frozen encoder; RND: the random CNN on the normalised last
       frame, with the current statistics) and m_(1)(x), ..., m_(k)(x) are the k nearest neighbours of f(x),
       in Euclidean distance, among a reservoir sample (Vitter's algorithm R, `diagnostics.reservoir`
       entries, uniform over everything visited so far) of the target embeddings of the next observations
       of every rollout, each stored as computed when it was visited. With fewer than k entries, all count.
   and the Pearson and Spearman correlations between r and novelty over the probe set are reported.
   A reward that measures novelty correlates positively; PreND's claim is that a pre-trained target's
   embedding distances are meaningful, so its reward should track them better than RND's.

3. Plots (matplotlib, Agg) in the run directory: intrinsic_reward.png, correlation.png, episode_return.png
   (only the last without an intrinsic reward), re-drawn from metrics.jsonl at every checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from atari_pb.envs.atari import EnvConfig, make_vector_env
from atari_pb.games import Game

PLOTS = ("intrinsic_reward.png", "correlation.png", "episode_return.png")


# ------------------------------------------------------------------------------------------------ math
def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing the mean of their ranks."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1, dtype=np.float64)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's correlation; NaN when either side is constant."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    dx, dy = x - x.mean(), y - y.mean()
    denom = np.sqrt((dx * dx).sum() * (dy * dy).sum())
    return float((dx * dy).sum() / denom) if denom > 0 else float("nan")


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation: Pearson's on the (tie-averaged) ranks."""
    return pearson(rankdata(x), rankdata(y))


def knn_novelty(queries: torch.Tensor, memory: torch.Tensor, k: int) -> torch.Tensor:
    """(P,) mean Euclidean distance of each query (P, D) to its k nearest rows of memory (M, D)."""
    k = min(k, memory.shape[0])
    dist = torch.cdist(queries.double(), memory.double())
    return dist.topk(k, dim=1, largest=False).values.mean(1)


# ------------------------------------------------------------------------------------------ reservoir
class Reservoir:
    """A uniform sample of at most `capacity` embeddings from a stream (Vitter's algorithm R)."""

    def __init__(self, capacity: int, dim: int):
        self.capacity = capacity
        self.data = torch.zeros(capacity, dim)
        self.seen = 0  # stream items offered so far

    @property
    def size(self) -> int:
        return min(self.seen, self.capacity)

    def add(self, items: torch.Tensor, rng: np.random.Generator) -> None:
        items = items.detach().float().cpu()
        n = items.shape[0]
        index = self.seen + np.arange(n)  # each item's position in the stream
        # item number i (0-based) enters slot i while the reservoir fills, then slot j ~ U{0..i} if j fits
        slot = np.where(index < self.capacity, index, rng.integers(0, index + 1))
        for i in np.flatnonzero(slot < self.capacity):  # in order: a later item may replace an earlier one
            self.data[slot[i]] = items[i]
        self.seen += n

    def state_dict(self) -> dict:
        return {"data": self.data[: self.size].clone(), "seen": self.seen, "capacity": self.capacity}

    def load_state_dict(self, state: dict) -> None:
        self.capacity, self.seen = int(state["capacity"]), int(state["seen"])
        self.data = torch.zeros(self.capacity, state["data"].shape[1])
        self.data[: state["data"].shape[0]] = state["data"]


# ------------------------------------------------------------------------------------------ probe set
def collect_probes(game: Game, env_cfg: EnvConfig, size: int, seed: int, stride: int) -> torch.Tensor:
    """uint8 (size, F, 84, 84): a random agent's frame stacks, one every `stride` steps, from 4 envs of its
    own (seeded with `seed`, as are its actions), so the set is the same for every run with that seed."""
    n = min(4, size)
    env, obs = make_vector_env(game, n, env_cfg, seed)
    rng = np.random.default_rng(seed)
    num_actions = int(env.single_action_space.n)
    frames: list[np.ndarray] = []
    try:
        while len(frames) * n < size:
            for _ in range(stride):
                obs, *_ = env.step(rng.integers(num_actions, size=n))
            frames.append(obs.copy())
    finally:
        env.close()
    return torch.from_numpy(np.concatenate(frames)[:size])


# ----------------------------------------------------------------------------------------------- plots
def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None and np.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def write_plots(metrics: Path, out: Path, title: str = "") -> list[Path]:
    """Draw the three diagnostic figures from metrics.jsonl into `out`; returns the files written."""
    from matplotlib.figure import Figure  # the object API: no pyplot state, the Agg canvas by default

    rows = [json.loads(line) for line in Path(metrics).read_text().splitlines() if line.strip()]
    written = []
    if any("intrinsic/raw_mean" in r for r in rows):  # PPO without an intrinsic reward has only returns
        written += _intrinsic_plots(rows, out, title)

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    ax.plot(*_series(rows, "episode_return"), marker=".", lw=0.8)
    ax.set_xlabel("env steps")
    ax.set_ylabel("extrinsic episode return (raw score)")
    ax.grid(alpha=0.3)
    fig.suptitle(f"{title} episode return (mean of episodes ending in each rollout)")
    written.append(_save(fig, out / PLOTS[2]))
    return written


def _intrinsic_plots(rows: list[dict], out: Path, title: str) -> list[Path]:
    from matplotlib.figure import Figure

    written = []
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_mean, ax_var = fig.subplots(1, 2)
    for ax, key, label in (
        (ax_mean, "intrinsic/raw_mean", "mean"),
        (ax_var, "intrinsic/raw_var", "variance"),
    ):
        ax.plot(*_series(rows, key), marker=".")
        ax.set_xlabel("env steps")
        ax.set_ylabel(f"raw intrinsic reward {label}")
        ax.grid(alpha=0.3)
    if any(v > 0 for v in _series(rows, "intrinsic/raw_var")[1]):
        ax_var.set_yscale("log")  # collapse spans orders of magnitude
    fig.suptitle(f"{title} intrinsic reward per rollout (collapse: both fall to 0)")
    written.append(_save(fig, out / PLOTS[0]))

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    for key, label in (("diag/pearson", "Pearson"), ("diag/spearman", "Spearman")):
        ax.plot(*_series(rows, key), marker="o", label=label)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("env steps")
    ax.set_ylabel("corr(intrinsic reward, k-NN novelty)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.suptitle(f"{title} probe set: reward vs target-embedding novelty")
    written.append(_save(fig, out / PLOTS[1]))
    return written


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=90, format="png")
    tmp.replace(path)
    return path
