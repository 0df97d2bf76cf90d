"""AtariARI linear probes on one game: how well a frozen encoder's features decode the game's annotated RAM
state (Anand et al., "Unsupervised State Representation Learning in Atari", NeurIPS 2019). Read top to bottom.

    probe data (`atari-pb collect-probes`: frame stacks with their RAM, an episode per life, split by episode)
      -> labels: the RAM bytes of the annotation table (`data.annotations`: AtariARI's HEAD or its paper's)
      -> AtariARI's filtering (`data:`): episodes of <= 64 frames dropped, variables whose label entropy over
         the kept frames is below 0.6 nats not probed, test frames equal to a train or val frame dropped; a
         game whose test split then keeps fewer than `min_test_episodes` (10) episodes is refused
      -> features, computed once per frame for every split (`features:`): the frozen backbone's (C, 6, 6) map
         average-pooled to pool x pool (6, the default: the whole map, C*36 features; 1: global), coarser
         where that exceeds `max_features` (resnet50: 2x2, 8,192), standardised with the train split's
         mean and std (`standardise`; AtariARI feeds raw features). The site was chosen by measurement:
         docs/parity.md, "Probes (AtariARI)"
      -> every variable's linear probe trained at once (`train:`): one (D, K) weight holding all variables'
         classes, one forward for all of them, Adam with a learning rate per variable, per-variable early
         stopping on the validation accuracy (the best weights kept) and per-variable ReduceLROnPlateau
      -> on the test split, per variable: weighted F1 (scikit-learn's average="weighted") and accuracy; per
         category (agent / small object / other localization, score-clock-lives-display, misc) their means,
         and the mean of the category means ("across_categories_avg", AtariARI's headline number): the game's
         score, what eval aggregates. The mean F1 over the probed variables is kept beside it (`mean_f1`).

Defaults (finetune/probe.yaml) are AtariARI's, from atariari/benchmark/probe.py (ProbeTrainer) and utils.py
(EarlyStopping) of github.com/mila-iqia/atari-representation-learning: a linear layer per variable (256 byte
values), Adam lr 3e-4 (scripts/run_probe.py passes atariari/methods/utils.py's --probe-lr default; the
class's own default, 5e-4, is not what its paper ran) and eps 1e-5, batches of 64 frames each drawn from an
episode picked uniformly, up to 100 epochs, early stopping with patience 15 on the validation accuracy (only a strictly better accuracy resets
it), ReduceLROnPlateau(mode="max", patience=5, factor=0.2, min_lr=1e-5) on the same accuracy, weighted F1;
the data filters are get_episodes' (atariari/benchmark/episodes.py: min_episode_length=64,
entropy_threshold=0.6, remove_duplicates).

Baselines (`--encoder` names, finetune/run.py):
  random  the frozen backbone of a freshly initialised encoder (`--preset`): AtariARI's RANDOM-CNN row;
  pixels  no network: the last frame of each stack average-pooled 4x4 (84x84 -> 21x21 = 441 features),
          standardised, under the same probe. AtariARI's tables have no raw-pixel row (their floors are the
          majority classifier and the random CNN); this one shows what a linear read of the screen alone
          gets, at a size (441) between the tiny preset's 256 and resnet50's 8,192 pooled features. The
          majority-class F1 is in every record's summary (`majority_mean_f1`) as the chance floor;
  e2e     AtariARI's SUPERVISED row: the backbone trained end to end with all the game's variable heads at
          once (AtariARI trains a copy of the encoder per variable), early stopping and ReduceLROnPlateau on
          the mean validation accuracy over the variables, the same optimiser settings.

Where this deviates from AtariARI, on purpose:
  - classes: a variable's probe tells apart the byte values of its train split (`train.classes: seen`), not
    all 256. A value absent from the train split cannot be learnt by either (its logit only ever gets pushed
    down), and the layer shrinks from V x 256 to the few values each byte takes; `classes: all` restores 256;
  - validation and test read every frame once (AtariARI draws them with replacement, as for training);
  - the best validation weights are restored (AtariARI saves them but tests the last ones; `keep_best`);
  - the representation is the backbone's pooled map: the encoder's neck is Atari-PB's per-game adapter, which
    every fine-tuning protocol replaces too;
  - the features are standardised (`features.standardise`): one probe learning rate then suits every encoder,
    whatever the scale of its features (a ResNet's post-ReLU map and a random CNN's differ by orders of
    magnitude); measured on the random tiny backbone, docs/parity.md "Probes (AtariARI)";
  - the frames are this project's 84x84 4-frame stacks (AtariARI: single 210x160 frames).
Every difference, with what it changes where measured: docs/parity.md, "Probes (AtariARI)".

Registered as the `probe` protocol (finetune/probe.yaml): self-scoring (`rollouts = False`, no environment),
on the "f1" scale, its records carrying the category means as `score_parts`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from atari_pb.core.device import pick_device
from atari_pb.errors import DataError, UsageError
from atari_pb.finetune.base import FinetuneResult, FinetuneTask, Protocol, register
from atari_pb.probes.annotations import (
    ANNOTATIONS,
    CATEGORY_NAMES,
    TABLES,
    annotated_games,
    categories,
    check_annotated,
    ram_indices,
    variables,
)

log = logging.getLogger(__name__)

PIXELS = "pixels"  # the probe's own baseline (module docstring)
F1_SCALE = "f1"
SAMPLINGS = ("episode", "uniform")
CLASS_SETS = ("seen", "all")
NUM_VALUES = 256  # a RAM byte's values
SPLIT_NAMES = ("train", "val", "test")
_CHUNK = 4096  # frames per forward when validating and testing cached features


# ------------------------------------------------------------------------------------------- config
@dataclass
class ProbeDataConfig:
    """The `data:` section: AtariARI's filtering of the collected frames (episodes.py get_episodes)."""

    min_episode_length: int = 64  # episodes of at most this many frames are dropped
    entropy_threshold: float = 0.6  # variables with a lower label entropy (nats, all kept frames): not probed
    dedup_test: bool = True  # test frames equal to a train or val frame are dropped (remove_duplicates)
    annotations: str = "head"  # head: AtariARI's HEAD table | paper: the paper's (probes/annotations.py)
    min_test_episodes: int = 10  # a game whose test split keeps fewer episodes is refused; 0: never


@dataclass
class ProbeFeaturesConfig:
    """The `features:` section: what the probes read."""

    pool: int = 6  # adaptive average pooling of the backbone's 6x6 map: 1 global, 2 -> C*4 features, 6 all
    # a map pooled to more features than this is pooled coarser (3, then 2, then 1): resnet50 (2,048
    # channels) is read at 2x2, 8,192 features, where its 3x3 and 6x6 maps probed no better (docs/parity.md)
    # at 2.25 and 9 times the memory; 0: no bound
    max_features: int = 8192
    standardise: bool = True  # features scaled by the train split's mean and std (AtariARI: raw features)
    pixels_pool: int = 4  # the pixels baseline: k x k average pooling of the last 84x84 frame (4: 441)
    batch_size: int = 256  # frames per forward of the frozen backbone


@dataclass
class ProbeTrainConfig:
    """The `train:` section: AtariARI's ProbeTrainer and EarlyStopping."""

    lr: float = 3e-4  # run_probe.py's --probe-lr default (ProbeTrainer's own is 5e-4)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # torch's Adam default, as AtariARI
    eps: float = 1e-5
    batch_size: int = 64
    epochs: int = 100  # at most; every variable stops on its own
    patience: int = 15  # epochs without a strictly better validation accuracy before a variable stops
    plateau_patience: int = 5  # ReduceLROnPlateau(mode="max"): epochs without improvement before ...
    plateau_factor: float = 0.2  # ... the variable's learning rate is multiplied by this
    plateau_threshold: float = 1e-4  # torch's default (relative): an improvement beats best x (1 + this)
    min_lr: float = 1e-5
    sampling: str = "episode"  # episode: an episode uniformly, then a frame of it (AtariARI) | uniform
    classes: str = "seen"  # seen: the byte values of the train split | all: 256 (module docstring)
    keep_best: bool = True  # restore each variable's weights of its best validation accuracy
    device: str = "auto"


@dataclass
class ProbeConfig:
    """finetune/probe.yaml, one section per dataclass."""

    data: ProbeDataConfig = field(default_factory=ProbeDataConfig)
    features: ProbeFeaturesConfig = field(default_factory=ProbeFeaturesConfig)
    train: ProbeTrainConfig = field(default_factory=ProbeTrainConfig)


def check(cfg: ProbeConfig) -> None:
    d, f, t = cfg.data, cfg.features, cfg.train
    problems = [
        (not 1 <= f.pool <= 6, f"features.pool={f.pool}: 1 (global average) to 6 (the whole 6x6 map)"),
        (f.max_features < 0, f"features.max_features={f.max_features}: must be >= 0 (0: no bound)"),
        (f.pixels_pool < 1 or 84 % f.pixels_pool != 0, f"features.pixels_pool={f.pixels_pool}: must divide 84"),
        (min(f.batch_size, t.batch_size, t.epochs, t.patience) < 1 or t.plateau_patience < 0,
         "features.batch_size, train.batch_size, train.epochs and train.patience must be >= 1, "
         "train.plateau_patience >= 0"),
        (t.lr <= 0 or t.eps <= 0 or t.min_lr < 0, "train.lr and train.eps must be > 0, train.min_lr >= 0"),
        (not 0 < t.plateau_factor < 1, f"train.plateau_factor={t.plateau_factor}: must be in (0, 1)"),
        (len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas), f"train.betas={t.betas}: two in [0, 1)"),
        (t.sampling not in SAMPLINGS, f"train.sampling={t.sampling!r}; valid: {', '.join(SAMPLINGS)}"),
        (t.classes not in CLASS_SETS, f"train.classes={t.classes!r}; valid: {', '.join(CLASS_SETS)}"),
        (d.min_episode_length < 0 or d.entropy_threshold < 0 or d.min_test_episodes < 0,
         "data.min_episode_length, data.entropy_threshold and data.min_test_episodes must be >= 0"),
        (d.annotations not in TABLES, f"data.annotations={d.annotations!r}; valid: {', '.join(TABLES)}"),
    ]  # fmt: skip
    for bad, message in problems:
        if bad:
            raise UsageError(message)


# ------------------------------------------------------------------------------------------- metrics
def weighted_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """scikit-learn's `f1_score(y_true, y_pred, average="weighted")`, AtariARI's test metric: each class's
    F1 = 2 TP / (2 TP + FP + FN), averaged with the class's count in `y_true` as weight (a class that is
    only predicted weighs 0; a true class never predicted right has F1 0)."""
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    if len(y_true) == 0 or len(y_true) != len(y_pred):
        raise ValueError(f"weighted_f1: {len(y_true)} labels and {len(y_pred)} predictions")
    values, codes = np.unique(np.concatenate([y_true, y_pred]), return_inverse=True)
    truth, pred = codes[: len(y_true)], codes[len(y_true) :]
    support = np.bincount(truth, minlength=len(values))
    predicted = np.bincount(pred, minlength=len(values))
    hits = np.bincount(truth[truth == pred], minlength=len(values))
    f1 = 2.0 * hits / np.maximum(support + predicted, 1)
    return float((f1 * support).sum() / support.sum())


def label_entropy(labels: np.ndarray) -> np.ndarray:
    """Entropy in nats of each column's values (AtariARI's compute_entropy: scipy's entropy of the counts)."""
    out = np.zeros(labels.shape[1])
    for v in range(labels.shape[1]):
        counts = np.bincount(labels[:, v], minlength=NUM_VALUES)
        p = counts[counts > 0] / len(labels)
        out[v] = float(-(p * np.log(p)).sum())
    return out


def category_means(names: list[str], values: np.ndarray, category: dict[str, str]) -> dict[str, float]:
    """Mean of `values` (one per variable) over each category's variables, in CATEGORY_NAMES order; a
    category without variables is left out (AtariARI's compute_category_avgs)."""
    out = {}
    for name in CATEGORY_NAMES:
        picked = [float(x) for v, x in zip(names, values) if category[v] == name]
        if picked:
            out[name] = float(np.mean(picked))
    return out


def headline(category_values: dict[str, float]) -> float:
    """A game's score: the mean of its category means (AtariARI's across_categories_avg, probe.py:250-262,
    what its paper's tables report), so that a category of many variables does not outweigh the others."""
    return float(np.mean(list(category_values.values())))


# ------------------------------------------------------------------------------------------- data
@dataclass
class ProbeSplit:
    obs: np.ndarray | None  # (N, F, 84, 84) uint8; released once the features are computed
    labels: np.ndarray  # (N, V) uint8, the probed variables' columns
    episodes: np.ndarray  # (N,) episode ids


@dataclass
class ProbeInputs:
    splits: dict[str, ProbeSplit]
    variables: list[str]  # the probed ones, in `variables(game, table)` order
    dropped: dict[str, float]  # variable -> its label entropy, below the threshold: not probed
    short_episodes: int  # episodes dropped for being too short
    test_duplicates: int  # test frames dropped (equal to a train or val frame, or left alone in an episode)
    categories: dict[str, str] = field(default_factory=dict)  # variable -> category, of the chosen table


def _drop_short(split: ProbeSplit, min_length: int) -> tuple[ProbeSplit, int]:
    ids, counts = np.unique(split.episodes, return_counts=True)
    short = ids[counts <= min_length]
    if len(short) == 0:
        return split, 0
    keep = ~np.isin(split.episodes, short)
    return ProbeSplit(split.obs[keep], split.labels[keep], split.episodes[keep]), len(short)


def _frame_keys(obs: np.ndarray) -> list[bytes]:
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in obs]


def _drop_test_duplicates(splits: dict[str, ProbeSplit]) -> int:
    """AtariARI's remove_duplicates on whole frame stacks, then its drop of test episodes left with one frame."""
    seen = set(_frame_keys(splits["train"].obs)) | set(_frame_keys(splits["val"].obs))
    test = splits["test"]
    keep = np.array([k not in seen for k in _frame_keys(test.obs)], dtype=bool)
    ids, counts = np.unique(test.episodes[keep], return_counts=True)
    keep &= np.isin(test.episodes, ids[counts > 1])
    if not keep.all():
        splits["test"] = ProbeSplit(test.obs[keep], test.labels[keep], test.episodes[keep])
    return int((~keep).sum())


def long_episodes(episodes: np.ndarray, min_length: int) -> int:
    """How many of the episodes (one id per frame) hold more than `min_length` frames."""
    return int((np.unique(episodes, return_counts=True)[1] > min_length).sum())


def check_test_size(game: str, episodes: int, cfg: ProbeDataConfig) -> None:
    """Refuse a game whose test split is too small to mean something (`data.min_test_episodes`)."""
    if episodes < cfg.min_test_episodes:
        raise UsageError(
            f"{game}: its test split holds {episodes} episodes of more than {cfg.min_episode_length} frames, "
            f"fewer than data.min_test_episodes={cfg.min_test_episodes}; collect more frames or envs "
            "(frames_per_game, num_envs), or set data.min_test_episodes=0 for a smoke test"
        )


def load_inputs(data, cfg: ProbeDataConfig) -> ProbeInputs:
    """A game's frames and labels (`data`: a ProbeData) after AtariARI's filtering, in its order: short
    episodes, then the entropy of the labels over every kept frame, then test duplicates. The labels are
    the RAM bytes of `cfg.annotations`' table."""
    indices = ram_indices(data.game, cfg.annotations)
    splits, short = {}, 0
    for name in SPLIT_NAMES:
        raw = ProbeSplit(data.obs(name), data.ram(name)[:, indices], data.episodes(name))
        splits[name], n = _drop_short(raw, cfg.min_episode_length)
        short += n
    entropy = label_entropy(np.concatenate([s.labels for s in splits.values()]))
    keep = entropy >= cfg.entropy_threshold
    if not keep.any():
        raise DataError(
            f"{data.path}: every variable's label entropy is below data.entropy_threshold="
            f"{cfg.entropy_threshold} (at most {entropy.max():.3f} nats): nothing to probe"
        )
    duplicates = _drop_test_duplicates(splits) if cfg.dedup_test else 0
    check_test_size(data.game, long_episodes(splits["test"].episodes, 0), cfg)
    empty = [name for name, s in splits.items() if len(s.labels) == 0]
    if empty:
        raise DataError(
            f"{data.path}: no {' or '.join(empty)} frames left after dropping episodes of <= "
            f"{cfg.min_episode_length} frames (data.min_episode_length) and test frames seen in train or val"
        )
    for s in splits.values():
        s.labels = np.ascontiguousarray(s.labels[:, keep])
    names = variables(data.game, cfg.annotations)
    probed = [v for v, k in zip(names, keep) if k]
    dropped = {v: float(e) for v, e, k in zip(names, entropy, keep) if not k}
    return ProbeInputs(splits, probed, dropped, short, duplicates, categories(data.game, cfg.annotations))


class EpisodeSampler:
    """An epoch's batches of row indices: `episode` as AtariARI's generate_batch (as many draws as rows,
    each an episode picked uniformly with replacement, then one of its frames uniformly; the last partial
    batch dropped), `uniform` a permutation of the rows."""

    def __init__(self, episodes: np.ndarray, batch_size: int, sampling: str):
        self.n, self.sampling = len(episodes), sampling
        self.size = min(batch_size, self.n)
        self.batches = max(1, self.n // batch_size)
        self.order = np.argsort(episodes, kind="stable")
        _, self.starts, self.lengths = np.unique(episodes[self.order], return_index=True, return_counts=True)

    def epoch(self, rng: np.random.Generator) -> np.ndarray:
        total = self.batches * self.size
        if self.sampling == "uniform":
            return rng.permutation(self.n)[:total].reshape(self.batches, self.size)
        e = rng.integers(len(self.lengths), size=total)
        t = (rng.random(total) * self.lengths[e]).astype(np.int64)
        return self.order[self.starts[e] + t].reshape(self.batches, self.size)


# ------------------------------------------------------------------------------------------- features
def pooled(fmap: torch.Tensor, pool: int) -> torch.Tensor:
    return F.adaptive_avg_pool2d(fmap, pool).flatten(1)


def site_pool(cfg: ProbeFeaturesConfig, channels: int) -> int:
    """The pooling the probe reads a map of `channels` at: `cfg.pool`, coarsened to 3, 2, then 1 (bins of
    equal size on the 6x6 map) while it gives more than `cfg.max_features` features."""
    pool = cfg.pool
    while cfg.max_features and pool > 1 and channels * pool * pool > cfg.max_features:
        pool = max(p for p in (1, 2, 3) if p < pool)
    return pool


def pixels(obs: torch.Tensor, pool: int) -> torch.Tensor:
    """The pixels baseline's features: the stack's last frame, k x k average-pooled, in [0, 1]."""
    last = obs[:, -1:].float() / 255.0
    return F.avg_pool2d(last, pool).flatten(1)


@torch.no_grad()
def compute_features(extract, obs: np.ndarray, batch_size: int, device: torch.device) -> torch.Tensor:
    """(N, D) float32 on `device`: `extract(uint8 batch)` over `obs`, batch by batch, without gradients."""
    chunks = [
        extract(torch.from_numpy(np.ascontiguousarray(obs[start : start + batch_size])).to(device)).float()
        for start in range(0, len(obs), batch_size)
    ]
    return torch.cat(chunks)


def standardiser(train: torch.Tensor, standardise: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The train split's per-feature mean and std (1 where a feature is constant); with `standardise`
    false, 0 and 1 (the features as they are, as AtariARI probes them)."""
    if not standardise:
        return train.new_zeros(train.shape[1]), train.new_ones(train.shape[1])
    mean, std = train.mean(0), train.std(0, unbiased=False)
    return mean, torch.where(std > 1e-6, std, torch.ones_like(std))


# ------------------------------------------------------------------------------------------- the probes
class Classes:
    """The byte values each variable's probe tells apart, as one flat output of K columns: variable v owns
    `owner == v`. `padded` turns flat logits (B, K) into (B, V, Kmax), -inf where a variable has fewer
    classes, so one softmax / argmax over the last axis serves every variable at once."""

    def __init__(self, values: list[np.ndarray], device: torch.device):
        self.values = [np.asarray(v, dtype=np.int64) for v in values]
        sizes = np.array([len(v) for v in self.values])
        self.num_vars, self.kmax, self.size = len(sizes), int(sizes.max()), int(sizes.sum())
        slots = np.concatenate([v * self.kmax + np.arange(n) for v, n in enumerate(sizes)])
        gather = np.full(self.num_vars * self.kmax, self.size)  # padded slot -> column (size: the -inf one)
        gather[slots] = np.arange(self.size)
        lookup = np.full((self.num_vars, NUM_VALUES), -1)  # byte value -> class index, -1: not a class
        table = np.zeros((self.num_vars, self.kmax), np.uint8)  # class index -> byte value
        for v, vals in enumerate(self.values):
            lookup[v, vals] = np.arange(len(vals))
            table[v, : len(vals)] = vals
        as_tensor = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
        self.owner = as_tensor(np.repeat(np.arange(self.num_vars), sizes))
        self.slots, self.gather = as_tensor(slots), as_tensor(gather)
        self.lookup, self.table = as_tensor(lookup), as_tensor(table)
        self.rows = torch.arange(self.num_vars, device=device)

    @classmethod
    def from_labels(cls, labels: np.ndarray, which: str, device: torch.device) -> Classes:
        if which == "all":
            return cls([np.arange(NUM_VALUES)] * labels.shape[1], device)
        return cls([np.unique(labels[:, v]) for v in range(labels.shape[1])], device)

    def targets(self, labels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(N, V) class indices of byte labels; -1 for a value that is no class of its variable."""
        labels = torch.as_tensor(labels).to(self.lookup.device).long()
        return self.lookup[self.rows, labels]

    def padded(self, flat: torch.Tensor) -> torch.Tensor:
        pad = flat.new_full((len(flat), 1), float("-inf"))
        return (
            torch.cat([flat, pad], 1).index_select(1, self.gather).view(len(flat), self.num_vars, self.kmax)
        )

    def decode(self, index: torch.Tensor) -> torch.Tensor:
        """(N, V) class indices -> byte values."""
        return self.table[self.rows, index]


def probe_gradients(
    x: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, classes: Classes
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the sum over variables of each one's batch-mean cross-entropy, by hand (softmax minus
    one-hot): each column's gradient is its own variable's, as if every probe had its own loss."""
    p = torch.softmax(classes.padded(torch.addmm(bias, x, weight)), -1)
    p.scatter_add_(2, targets.unsqueeze(-1), torch.full_like(p[..., :1], -1.0))
    g = p.view(len(x), -1).index_select(1, classes.slots) / len(x)
    return x.T @ g, g.sum(0)


class ColumnAdam:
    """torch.optim.Adam (no weight decay, no AMSGrad) over (D, K) weights and (K,) biases with a learning
    rate per column: each variable's probe keeps its own rate. Updates in place, into buffers of its own."""

    def __init__(self, params: list[torch.Tensor], betas: list[float], eps: float, t: int = 0):
        self.params, self.betas, self.eps, self.t = params, tuple(betas), eps, t
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self._buffers = [(torch.empty_like(p), torch.empty_like(p)) for p in params]

    def step(self, grads: tuple[torch.Tensor, ...], column_lr: torch.Tensor) -> None:
        self.t += 1
        b1, b2 = self.betas
        c1, root_c2 = 1 - b1**self.t, math.sqrt(1 - b2**self.t)
        step = column_lr / c1
        for p, g, m, v, (num, den) in zip(self.params, grads, self.m, self.v, self._buffers):
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            torch.sqrt(v, out=den).div_(root_c2).add_(self.eps)
            p.addcdiv_(torch.mul(m, step, out=num), den, value=-1.0)

    def select(self, params: list[torch.Tensor], columns: torch.Tensor) -> ColumnAdam:
        """The same optimiser over `params`, which hold only `columns` (the last axis) of its own."""
        out = ColumnAdam(params, list(self.betas), self.eps, self.t)
        out.m = [m[..., columns].contiguous() for m in self.m]
        out.v = [v[..., columns].contiguous() for v in self.v]
        return out


class ProbeSchedule:
    """Per variable, fed each epoch's validation accuracies: AtariARI's EarlyStopping (a strictly better
    accuracy is the new best and resets the counter; `patience` epochs without one stop the variable) and
    torch's ReduceLROnPlateau(mode="max", threshold_mode="rel", cooldown=0), stepped for the variables
    still training, as AtariARI does; vectorised over the variables."""

    def __init__(self, n: int, cfg: ProbeTrainConfig):
        self.cfg = cfg
        self.best = np.full(n, -np.inf)
        self.counter = np.zeros(n, np.int64)
        self.stopped = np.zeros(n, bool)
        self.epochs = np.zeros(n, np.int64)
        self.plateau_best = np.full(n, -np.inf)
        self.bad = np.zeros(n, np.int64)
        self.lr = np.full(n, cfg.lr)

    def update(self, accuracy: np.ndarray) -> np.ndarray:
        """Record one epoch; returns the variables whose weights are now their best."""
        c = self.cfg
        active = ~self.stopped
        self.epochs[active] += 1
        improved = active & (accuracy > self.best)
        self.best[improved], self.counter[improved] = accuracy[improved], 0
        self.counter[active & ~improved] += 1
        self.stopped |= active & (self.counter >= c.patience)
        live = ~self.stopped
        better = live & (accuracy > self.plateau_best * (1 + c.plateau_threshold))
        self.plateau_best[better], self.bad[better] = accuracy[better], 0
        self.bad[live & ~better] += 1
        reduce = live & (self.bad > c.plateau_patience)
        lowered = np.maximum(self.lr * c.plateau_factor, c.min_lr)
        change = reduce & (self.lr - lowered > 1e-8)  # torch's eps
        self.lr[change] = lowered[change]
        self.bad[reduce] = 0
        return improved


@dataclass
class ProbeFit:
    weight: torch.Tensor  # (D, K)
    bias: torch.Tensor  # (K,)
    epochs: np.ndarray  # (V,) epochs each variable trained
    val_accuracy: np.ndarray  # (V,) its best validation accuracy
    lr: np.ndarray  # (V,) its last learning rate
    steps: int  # batches (a step of every training variable's optimiser each)


@torch.no_grad()
def _indices(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, classes: Classes) -> torch.Tensor:
    """(N, V) predicted class indices, `_CHUNK` rows at a time."""
    return torch.cat(
        [
            classes.padded(torch.addmm(bias, x[s : s + _CHUNK], weight)).argmax(-1)
            for s in range(0, len(x), _CHUNK)
        ]
    )


def probe_accuracy(x, targets, weight, bias, classes: Classes) -> np.ndarray:
    """(V,) share of rows whose class each variable's probe gets right."""
    return (_indices(x, weight, bias, classes) == targets).double().mean(0).cpu().numpy()


def predict_values(x, weight, bias, classes: Classes) -> np.ndarray:
    """(N, V) uint8: each variable's predicted byte value."""
    return classes.decode(_indices(x, weight, bias, classes)).cpu().numpy()


def init_linear(dim: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """nn.Linear's default initialisation (AtariARI's probes): weights and biases U(+-1/sqrt(dim))."""
    bound = 1.0 / math.sqrt(dim)
    weight = (torch.rand(dim, size, generator=generator) * 2 - 1) * bound
    return weight, (torch.rand(size, generator=generator) * 2 - 1) * bound


class _Live:
    """The probes still training, packed: only their columns take part in the forward, the gradients and
    Adam. Variables stop one by one; each time some do, `drop` packs the others again (exact: the probes
    never interact), writing every live column's weights back into the full layout first."""

    def __init__(self, classes: Classes, weight, bias, targets, val_targets, cfg: ProbeTrainConfig):
        self.values, self.weight, self.bias = classes.values, weight, bias  # the full layout
        self.variables = np.arange(classes.num_vars)
        self.columns = torch.arange(classes.size, device=weight.device)  # the live ones, in the full layout
        self.classes, self.w, self.b = classes, weight.clone(), bias.clone()
        self.targets, self.val_targets = targets, val_targets
        self.adam = ColumnAdam([self.w, self.b], cfg.betas, cfg.eps)

    def drop(self, stopped: np.ndarray) -> None:
        """Keep the variables that have not `stopped` (a mask over all), the others' weights written back."""
        keep = ~stopped[self.variables]
        if keep.all():
            return
        self.weight[:, self.columns], self.bias[self.columns] = self.w, self.b
        device = self.w.device
        columns = torch.from_numpy(keep).to(device)[self.classes.owner]
        self.variables, self.columns = self.variables[keep], self.columns[columns]
        self.w, self.b = self.w[:, columns].contiguous(), self.b[columns].contiguous()
        self.adam = self.adam.select([self.w, self.b], columns)
        rows = torch.from_numpy(keep).to(device)
        self.targets, self.val_targets = self.targets[:, rows], self.val_targets[:, rows]
        if len(self.variables):
            self.classes = Classes([self.values[v] for v in self.variables], device)


def fit_probes(
    train_x: torch.Tensor,
    train_y: np.ndarray,
    val_x: torch.Tensor,
    val_y: np.ndarray,
    classes: Classes,
    cfg: ProbeTrainConfig,
    seed: int,
    episodes: np.ndarray | None = None,
    progress: bool = False,
) -> ProbeFit:
    """Every variable's linear probe on fixed features (N, D) at once (module docstring). `episodes`
    (train rows' episode ids) shapes `train.sampling: episode`; without them every row is its own."""
    device = train_x.device
    weight, bias = init_linear(train_x.shape[1], classes.size, torch.Generator().manual_seed(seed))
    weight, bias = weight.to(device), bias.to(device)
    best = [weight.clone(), bias.clone()]
    live = _Live(classes, weight, bias, classes.targets(train_y), classes.targets(val_y), cfg)
    schedule = ProbeSchedule(classes.num_vars, cfg)
    rows = np.arange(len(train_x)) if episodes is None else episodes
    sampler = EpisodeSampler(rows, cfg.batch_size, cfg.sampling)
    rng, steps = np.random.default_rng([seed, 1]), 0
    bar = tqdm(total=cfg.epochs, unit="epoch", desc="probe", disable=None if progress else True)
    for _ in range(cfg.epochs):
        lr = torch.from_numpy(schedule.lr[live.variables]).to(device, weight.dtype)[live.classes.owner]
        for idx in torch.from_numpy(sampler.epoch(rng)).to(device):
            live.adam.step(probe_gradients(train_x[idx], live.targets[idx], live.w, live.b, live.classes), lr)
            steps += 1
        accuracy = np.full(classes.num_vars, -np.inf)
        accuracy[live.variables] = probe_accuracy(val_x, live.val_targets, live.w, live.b, live.classes)
        improved = torch.from_numpy(schedule.update(accuracy)[live.variables]).to(device)[live.classes.owner]
        best[0][:, live.columns[improved]] = live.w[:, improved]
        best[1][live.columns[improved]] = live.b[improved]
        bar.update()
        bar.set_postfix(
            val_acc=f"{accuracy[live.variables].mean():.3f}", training=int((~schedule.stopped).sum())
        )
        live.drop(schedule.stopped)
        if not len(live.variables):
            break
    bar.close()
    live.drop(np.ones(classes.num_vars, bool))  # writes back the last weights of those still training
    if cfg.keep_best:
        weight, bias = best
    return ProbeFit(weight, bias, schedule.epochs.copy(), schedule.best.copy(), schedule.lr.copy(), steps)


class ProbeModel(nn.Module):
    """One game's trained probes: uint8 frame stacks -> each variable's predicted byte value.

    features (the backbone's pooled map, or the pixels baseline's pooled last frame when `backbone` is
    None) -> standardised with the train split's statistics -> one linear layer over all variables' classes.
    """

    def __init__(
        self, backbone, cfg: ProbeFeaturesConfig, classes: Classes, mean, std, weight, bias, variables
    ):
        super().__init__()
        self.backbone, self.pool, self.pixels_pool = backbone, cfg.pool, cfg.pixels_pool
        self.classes, self.variables = classes, list(variables)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        if self.backbone is None:
            return pixels(obs, self.pixels_pool)
        return pooled(self.backbone(obs), self.pool)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, V, Kmax) logits, -inf past each variable's classes."""
        x = (self.features(obs) - self.mean) / self.std
        return self.classes.padded(torch.addmm(self.bias, x, self.weight))

    @torch.no_grad()
    def predict(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, V) uint8: each variable's predicted byte value."""
        return self.classes.decode(self(torch.as_tensor(obs).to(self.weight.device)).argmax(-1))


# ------------------------------------------------------------------------------------------- e2e
@torch.no_grad()
def model_indices(model: ProbeModel, obs: np.ndarray, batch_size: int) -> torch.Tensor:
    model.eval()
    device = model.weight.device
    out = [
        model(torch.from_numpy(np.ascontiguousarray(obs[s : s + batch_size])).to(device)).argmax(-1)
        for s in range(0, len(obs), batch_size)
    ]
    model.train()
    return torch.cat(out)


def _e2e_epoch(
    model: ProbeModel, optimizer, obs: np.ndarray, targets: torch.Tensor, batches: np.ndarray
) -> None:
    device = model.weight.device
    for idx in batches:
        logits = model(torch.from_numpy(obs[idx]).to(device))
        loss = F.cross_entropy(
            logits.flatten(0, 1), targets[torch.from_numpy(idx)].flatten(), reduction="none"
        )
        optimizer.zero_grad(set_to_none=True)
        loss.view(len(idx), -1).mean(0).sum().backward()  # each variable's batch mean, summed
        optimizer.step()


def train_e2e(
    model: ProbeModel, inputs: ProbeInputs, cfg: ProbeConfig, seed: int, progress: bool
) -> tuple[int, int, float]:
    """AtariARI's SUPERVISED row with one shared backbone: backbone and every variable's head trained
    together on the sum of the variables' cross-entropies; Adam, ReduceLROnPlateau and early stopping on
    the mean validation accuracy over the variables (the best weights restored with `keep_best`).
    Returns (epochs, steps, best mean validation accuracy)."""
    t = cfg.train
    train, val = inputs.splits["train"], inputs.splits["val"]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=t.lr, betas=tuple(t.betas), eps=t.eps)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode="max",
        factor=t.plateau_factor,
        patience=t.plateau_patience,
        threshold=t.plateau_threshold,
        min_lr=t.min_lr,
    )
    targets, val_targets = model.classes.targets(train.labels), model.classes.targets(val.labels)
    sampler, rng = EpisodeSampler(train.episodes, t.batch_size, t.sampling), np.random.default_rng([seed, 1])
    best, state, counter, epochs = -math.inf, copy.deepcopy(model.state_dict()), 0, 0
    bar = tqdm(total=t.epochs, unit="epoch", desc="probe e2e", disable=None if progress else True)
    while epochs < t.epochs and counter < t.patience:
        _e2e_epoch(model, optimizer, train.obs, targets, sampler.epoch(rng))
        epochs += 1
        index = model_indices(model, val.obs, cfg.features.batch_size)
        accuracy = (index == val_targets).double().mean().item()
        if accuracy > best:
            best, state, counter = accuracy, copy.deepcopy(model.state_dict()), 0
        else:
            counter += 1
        if counter < t.patience:  # AtariARI steps the schedulers of the variables still training
            plateau.step(accuracy)
        bar.update()
        bar.set_postfix(val_acc=f"{accuracy:.3f}")
    bar.close()
    if t.keep_best:
        model.load_state_dict(state)
    return epochs, epochs * sampler.batches, best


# ------------------------------------------------------------------------------------------- one game
def _frozen(cfg: ProbeConfig, task: FinetuneTask, inputs: ProbeInputs, device: torch.device):
    """Features once per frame, then every probe at once. Returns (model, test predictions (N, V) uint8,
    gradient steps, per-variable figures for the summary)."""
    f = cfg.features
    backbone = None
    if task.baseline == PIXELS:
        extract = lambda obs: pixels(obs, f.pixels_pool)  # noqa: E731
    else:
        backbone = copy.deepcopy(task.encoder.backbone).to(device).eval().requires_grad_(False)
        f = dataclasses.replace(f, pool=site_pool(f, backbone.out_channels))
        extract = lambda obs: pooled(backbone(obs), f.pool)  # noqa: E731
    with task.sections("features"):
        feats = {}
        for name, split in inputs.splits.items():
            feats[name], split.obs = compute_features(extract, split.obs, f.batch_size, device), None
    mean, std = standardiser(feats["train"], f.standardise)
    x = {name: (value - mean) / std for name, value in feats.items()}
    train, val = inputs.splits["train"], inputs.splits["val"]
    classes = Classes.from_labels(train.labels, cfg.train.classes, device)
    with task.sections("fit"):
        fit = fit_probes(
            x["train"],
            train.labels,
            x["val"],
            val.labels,
            classes,
            cfg.train,
            task.seed,
            train.episodes,
            task.progress,
        )
    model = ProbeModel(backbone, f, classes, mean, std, fit.weight, fit.bias, inputs.variables)
    predictions = predict_values(x["test"], fit.weight, fit.bias, classes)
    extra = {"epochs": fit.epochs, "val_accuracy": fit.val_accuracy, "feature_dim": int(mean.numel())}
    extra["pool"] = None if backbone is None else f.pool
    return model, predictions, fit.steps, extra


def _e2e(cfg: ProbeConfig, task: FinetuneTask, inputs: ProbeInputs, device: torch.device):
    """The e2e baseline: the backbone trained with the heads. Returns what `_frozen` does."""
    f, train = cfg.features, inputs.splits["train"]
    backbone = copy.deepcopy(task.encoder.backbone).to(device).requires_grad_(True)
    f = dataclasses.replace(f, pool=site_pool(f, backbone.out_channels))
    first = compute_features(lambda obs: pooled(backbone(obs), f.pool), train.obs, f.batch_size, device)
    mean, std = standardiser(first, f.standardise)
    classes = Classes.from_labels(train.labels, cfg.train.classes, device)
    weight, bias = init_linear(len(mean), classes.size, torch.Generator().manual_seed(task.seed))
    model = ProbeModel(backbone, f, classes, mean, std, weight.to(device), bias.to(device), inputs.variables)
    with task.sections("fit"):
        epochs, steps, best = train_e2e(model, inputs, cfg, task.seed, task.progress)
    index = model_indices(model, inputs.splits["test"].obs, f.batch_size)
    n = classes.num_vars
    extra = {"epochs": np.full(n, epochs), "val_accuracy": np.full(n, best), "feature_dim": int(mean.numel())}
    extra["pool"] = f.pool
    return model.eval(), classes.decode(index).cpu().numpy(), steps, extra


def summarize(game: str, inputs: ProbeInputs, predictions: np.ndarray, extra: dict) -> dict:
    """The record's figures: per variable, per category, the game's means and AtariARI's headline number."""
    train, test = inputs.splits["train"].labels, inputs.splits["test"].labels
    names, category = inputs.variables, inputs.categories
    f1 = np.array([weighted_f1(test[:, v], predictions[:, v]) for v in range(len(names))])
    accuracy = (predictions == test).mean(0)
    majority = [np.bincount(train[:, v], minlength=NUM_VALUES).argmax() for v in range(len(names))]
    floor = np.array([weighted_f1(test[:, v], np.full(len(test), m)) for v, m in enumerate(majority)])
    category_f1 = category_means(names, f1, category)
    category_accuracy = category_means(names, accuracy, category)
    per_variable = {
        name: {
            "category": category[name],
            "f1": float(f1[v]),
            "accuracy": float(accuracy[v]),
            "majority_f1": float(floor[v]),
            "val_accuracy": float(extra["val_accuracy"][v]),
            "epochs": int(extra["epochs"][v]),
        }
        for v, name in enumerate(names)
    }
    return {
        "score_parts": category_f1,  # eval's per-category tables (Protocol.score_parts)
        "across_categories_f1": headline(category_f1),  # the record's score
        "mean_f1": float(f1.mean()),  # the mean over the variables, beside it
        "mean_accuracy": float(accuracy.mean()),
        "across_categories_accuracy": headline(category_accuracy),
        "majority_mean_f1": float(floor.mean()),
        "category_f1": category_f1,
        "category_accuracy": category_accuracy,
        "variables": per_variable,
        "dropped_variables": inputs.dropped,
        "frames": {name: int(len(s.labels)) for name, s in inputs.splits.items()},
        "episodes": {name: long_episodes(s.episodes, 0) for name, s in inputs.splits.items()},
        "short_episodes_dropped": inputs.short_episodes,
        "test_frames_dropped": inputs.test_duplicates,
        "feature_dim": extra["feature_dim"],
        "pool": extra.get("pool"),  # the map's pooling read (features.pool within max_features); None: pixels
    }


def train_probe(cfg: ProbeConfig, task: FinetuneTask) -> FinetuneResult:
    """Probe one game (module docstring); the result's score is the mean of its category means."""
    from atari_pb.probes.data import ProbeData

    start = time.perf_counter()
    device = pick_device(cfg.train.device, "train.device")
    game = check_annotated(task.game.name)
    if task.data is None:
        raise UsageError("the probe protocol needs --data: a probe data directory (atari-pb collect-probes)")
    data = ProbeData(task.data, game)  # a DataError if the file does not match the manifest's SHA-256
    with task.sections("load"):
        inputs = load_inputs(data, cfg.data)
    frames = inputs.splits["train"].obs.shape[1]
    if task.baseline != PIXELS and task.encoder.cfg.frames != frames:
        raise UsageError(
            f"the encoder takes {task.encoder.cfg.frames}-frame stacks; {data.path} holds {frames}"
        )
    torch.manual_seed(task.seed)
    run = _e2e if task.train_backbone else _frozen
    model, predictions, steps, extra = run(cfg, task, inputs, device)
    summary = summarize(game, inputs, predictions, extra)
    summary["data"] = str(data.path)
    log.info(
        "probe %s seed %d: F1 %.3f across categories (over variables %.3f, majority class %.3f), %d variables",
        game,
        task.seed,
        summary["across_categories_f1"],
        summary["mean_f1"],
        summary["majority_mean_f1"],
        len(inputs.variables),
    )
    seconds = time.perf_counter() - start
    return FinetuneResult(
        model, steps, env_steps=0, seconds=seconds, summary=summary, score=summary["across_categories_f1"]
    )


# ------------------------------------------------------------------------------------------- the protocol
def probe_frames(data: Path, games: list[str], cfg: ProbeDataConfig | None = None) -> int:
    """Check the probe data of `games` in `data` (listed, SHA-256 as in the manifest, this atari-pb's
    annotations; with `cfg`, test splits large enough before the test duplicates go) and return the frames
    per stack it holds."""
    import h5py

    from atari_pb.probes.data import MANIFEST_NAME, ProbeData, read_manifest

    _, files = read_manifest(data)
    missing = [g for g in games if g not in files]
    if missing:
        raise UsageError(
            f"{data}: no probe data for {', '.join(missing)} ({MANIFEST_NAME} lists "
            f"{', '.join(sorted(files)) or 'no game'}); collect it with `atari-pb collect-probes {data}`"
        )
    frames = set()
    for game in games:
        probe = ProbeData(data, game)
        if cfg is not None:
            check_test_size(game, long_episodes(probe.episodes("test"), cfg.min_episode_length), cfg)
        with h5py.File(probe.path, "r") as f:
            frames.add(int(f["obs"].shape[1]))
    if len(frames) != 1:
        raise DataError(f"{data}: the games' frame stacks differ in length ({sorted(frames)})")
    return frames.pop()


@register
class Probe(Protocol):
    """AtariARI's linear probes of the annotated RAM state (self-scoring: per game, the mean of its category
    means of the test F1)."""

    name = "probe"
    Config = ProbeConfig
    needs_data = True
    rollouts = False
    score_scale = F1_SCALE
    score_parts = CATEGORY_NAMES
    score_parts_title = "category"
    baselines = (PIXELS,)

    @staticmethod
    def check(cfg: ProbeConfig) -> None:
        check(cfg)

    @staticmethod
    def select_games(cfg: ProbeConfig, split: str, games, explicit: bool) -> list[str]:
        """The annotated games; a requested game without annotations is an error naming the annotated."""
        if explicit:
            for game in games:
                check_annotated(game)
        chosen = [g for g in games if g in ANNOTATIONS]
        if not chosen:
            raise UsageError(
                f"split {split} has no game with AtariARI RAM annotations; annotated games: "
                f"{', '.join(annotated_games())}"
            )
        return chosen

    @staticmethod
    def check_data(cfg: ProbeConfig, data: Path, games) -> int:
        return probe_frames(Path(data), list(games), cfg.data)

    @staticmethod
    def train(cfg: ProbeConfig, task: FinetuneTask) -> FinetuneResult:
        return train_probe(cfg, task)
