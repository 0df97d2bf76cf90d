"""Aggregates over runs x games with rliable: IQM, median, mean, optimality gap with 95% stratified-bootstrap
confidence intervals, performance profiles and probability of improvement.

Reproducibility: rliable 1.2's bootstraps draw their indices from NumPy's *global* generator
(`np.random.choice` in `StratifiedBootstrap.update_indices`); the `random_state` it forwards to arch only
reaches arch's own generator, which the resampling never uses. So every bootstrap here runs inside
`seeded(seed)`, which seeds the global generator and restores its previous state afterwards. Each method
(each pair, for probability of improvement) is bootstrapped on its own from the same seed, so a row does not
change when other methods join the results.

A protocol with a score scale of its own (`Protocol.score_scale`, e.g. the probe's F1) is aggregated on that
scale, raw, whatever normalization is asked for (its rows say the scale in `normalization`; the optimality
gap is then the shortfall from 1 on that scale: F1 = 1); a protocol declaring sub-scores
(`Protocol.score_parts`, e.g. the probe's categories) gets their means in its rows' `parts`.

Each row says which data its method's encoder was pre-trained on (`pretrain_data`, a label of the records'
config.pretrain_data: atari_pb/data/provenance.py): "none" for a baseline, "unknown" for an encoder that
does not record it. The records of one row must agree; those that do not are an error, never pooled.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from atari_pb.data.provenance import UNKNOWN, Provenance, check_provenance, data_key, labels
from atari_pb.errors import DataError, UsageError
from atari_pb.eval.records import ResultRecord, record_path
from atari_pb.eval.scores import score_matrices
from atari_pb.eval.scoring import scoring, use_records
from atari_pb.games import SPLITS, split_games

log = logging.getLogger(__name__)

METRICS: tuple[str, ...] = ("iqm", "median", "mean", "optimality_gap")
METRIC_TITLES = {"iqm": "IQM", "median": "Median", "mean": "Mean", "optimality_gap": "Optimality Gap"}
CONFIDENCE = 0.95
OPTIMALITY_GAMMA = 1.0  # the reference (DQN / Rainbow, or human) level on the normalised scale


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed NumPy's global generator (which rliable resamples with) and restore it afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def aggregate_metrics(scores: np.ndarray) -> np.ndarray:
    """[IQM, median, mean, optimality gap] of an (n_runs, n_games) matrix, as rliable defines them."""
    from rliable import metrics

    return np.array(
        [
            metrics.aggregate_iqm(scores),
            metrics.aggregate_median(scores),
            metrics.aggregate_mean(scores),
            metrics.aggregate_optimality_gap(scores, OPTIMALITY_GAMMA),
        ]
    )


def interval_estimates(
    scores: Mapping[str, np.ndarray], reps: int = 2000, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """method -> (point estimates (4,), 95% CIs (2, 4): lower row, upper row), in METRICS order."""
    from rliable import library as rly

    out = {}
    for key, matrix in scores.items():
        with seeded(seed):
            point, ci = rly.get_interval_estimates(
                {key: matrix}, aggregate_metrics, reps=reps, confidence_interval_size=CONFIDENCE
            )
        out[key] = (np.asarray(point[key], dtype=np.float64), np.asarray(ci[key], dtype=np.float64))
    return out


def _check_reps(reps: int) -> None:
    if reps < 1:
        raise UsageError(f"reps {reps}: the bootstrap needs at least 1 replication")


def splits_with_results(records: Iterable[ResultRecord]) -> list[str]:
    present = {r.split for r in records}
    return [s for s in SPLITS if s in present]


def protocols_with_results(records: Iterable[ResultRecord], split: str) -> list[str]:
    present = {r.protocol for r in records if r.split == split}
    return sorted(present)  # the registry's order (protocol_names), without importing the protocols


def _part_values(record: ResultRecord, names: Sequence[str]) -> dict[str, float]:
    parts = record.config.get("score_parts") if isinstance(record.config, dict) else None
    where = record_path(Path(), record.method, record.protocol, record.game, record.seed).as_posix()
    if not isinstance(parts, dict):
        raise DataError(f"{where}: no config.score_parts ({record.protocol} records hold {', '.join(names)})")
    out = {}
    for name, value in parts.items():
        if name in names:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise DataError(f"{where}: config.score_parts.{name} = {value!r} is not a finite number")
            out[name] = float(value)
    return out


def score_parts(records: Iterable[ResultRecord], split: str, protocol: str, method: str) -> dict[str, float]:
    """Mean of each sub-score the protocol declares (`Protocol.score_parts`, in a record's
    config["score_parts"]) for one (method, protocol, split): per game the mean over its seeds, then the
    mean over the games that have the part (a game need not have every part: the probe's categories).
    In the declared order; {} for a protocol without parts."""
    names = scoring(protocol).parts
    if not names:
        return {}
    by_part: dict[str, dict[str, list[float]]] = {}
    for r in records:
        if (r.method, r.protocol, r.split) == (method, protocol, split):
            for name, value in _part_values(r, names).items():
                by_part.setdefault(name, {}).setdefault(r.game, []).append(value)
    return {
        name: float(np.mean([np.mean(v) for v in by_part[name].values()]))
        for name in names
        if name in by_part
    }


def _where(record: ResultRecord) -> str:
    return record_path(Path(), record.method, record.protocol, record.game, record.seed).as_posix()


def record_pretrain_data(record: ResultRecord) -> Provenance:
    """A record's config.pretrain_data, checked: None for a baseline (no encoder file), UNKNOWN for a
    record of an encoder file that does not say (records and encoders made before they recorded it)."""
    config = record.config if isinstance(record.config, dict) else {}
    try:
        prov = check_provenance(config.get("pretrain_data"))
    except DataError as err:
        raise DataError(f"{_where(record)}: config.{err}") from None
    return UNKNOWN if prov is None and record.encoder_sha256 else prov


def pretrain_data(records: Iterable[ResultRecord], split: str, protocol: str, method: str) -> Provenance:
    """The data one (method, protocol, split)'s encoder was pre-trained on; DataError naming two records
    when its records disagree. A record that does not say takes what a record of the same encoder file
    (encoder_sha256) says: the same bytes were pre-trained on the same data."""
    mine = [r for r in records if (r.method, r.protocol, r.split) == (method, protocol, split)]
    provs = [record_pretrain_data(r) for r in mine]
    known = {r.encoder_sha256: p for r, p in zip(mine, provs) if isinstance(p, dict)}
    provs = [known.get(r.encoder_sha256, p) if p == UNKNOWN else p for r, p in zip(mine, provs)]
    first: dict[Any, int] = {}
    for i, prov in enumerate(provs):
        first.setdefault(data_key(prov), i)
    if len(first) > 1:
        i, j = list(first.values())[:2]
        a, b = labels([provs[i], provs[j]])
        raise DataError(
            f"{split}/{protocol}: the records of method {method} were pre-trained on different data "
            f"({_where(mine[i])}: {a}; {_where(mine[j])}: {b}); fine-tune each encoder under its own --method"
        )
    return provs[0] if provs else None


def aggregate(
    records: Sequence[ResultRecord],
    split: str,
    normalization: str = "dqn",
    reps: int = 2000,
    seed: int = 0,
    protocols: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per (method, protocol) with results on `split`.

    Keys: method, protocol, split, normalization, n_games, n_seeds, then for each of iqm, median, mean,
    optimality_gap the point estimate and `<metric>_low` / `<metric>_high` (95% stratified-bootstrap CI);
    `normalization` is the protocol's own scale for one that has it, and a protocol with sub-scores adds
    `parts` (see the module docstring), and every row `pretrain_data`: the label of the data its encoder
    was pre-trained on (equal labels: the same data; "none" for a baseline). Rows come by protocol, then IQM
    from best to worst. Incomplete results, and a row whose records disagree on their pre-training data,
    raise DataError (see scores.py).
    """
    use_records(records)  # score as the records say (eval/scoring.py)
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    _check_reps(reps)
    have = splits_with_results(records)
    if split not in have:
        raise UsageError(
            f"no results for split {split}; splits with results: {', '.join(have) if have else 'none'}"
        )
    available = protocols_with_results(records, split)
    for protocol in protocols or ():
        if protocol not in available:
            from atari_pb.finetune.base import protocol_class  # only to name the valid ones

            protocol_class(protocol)  # an unknown name: one line with the valid ones
            raise UsageError(
                f"no results for protocol {protocol} on split {split}; "
                f"protocols with results there: {', '.join(available)}"
            )
    rows: list[dict[str, Any]] = []
    for protocol in [p for p in available if not protocols or p in protocols]:
        matrices = score_matrices(records, split, protocol, normalization)
        total = len(split_games(split))
        if len(matrices.games) < total:  # allowed (the demo runs a few games), but said, not hidden
            log.info("%s/%s: %d of the %d games of the split", split, protocol, len(matrices.games), total)
        # checked before the bootstrap: records that disagree fail at once
        data = {m: pretrain_data(records, split, protocol, m) for m in matrices.scores}
        block = []
        for method, (point, ci) in interval_estimates(matrices.scores, reps, seed).items():
            row: dict[str, Any] = {
                "method": method,
                "protocol": protocol,
                "split": split,
                "normalization": matrices.normalization,
                "n_games": len(matrices.games),
                "n_seeds": len(matrices.seeds[method]),
                "pretrain_data": data[method],  # labelled below
            }
            for i, metric in enumerate(METRICS):
                row[metric] = float(point[i])
                row[f"{metric}_low"] = float(ci[0, i])
                row[f"{metric}_high"] = float(ci[1, i])
            if scoring(protocol).parts:
                row["parts"] = score_parts(records, split, protocol, method)
            block.append(row)
        rows += sorted(block, key=lambda r: (-r["iqm"], r["method"]))
    # labelled together, so that rows on different data never read alike
    for row, label in zip(rows, labels([r["pretrain_data"] for r in rows])):
        row["pretrain_data"] = label
    return rows


# ---------------------------------------------------------------- performance profiles
def score_distribution(scores: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """Fraction of runs x games above each tau: rliable's `score_distributions` without a Python loop."""
    return np.mean(scores.reshape(-1, 1) > np.asarray(taus).reshape(1, -1), axis=0)


def default_taus(scores: Mapping[str, np.ndarray], num: int = 101) -> np.ndarray:
    """Thresholds shared by all methods: from min(0, lowest score) to max(1, 95th percentile of all scores),
    so the reference level (1) is always on the axis and one outlier game does not squash the rest."""
    pooled = np.concatenate([np.ravel(m) for m in scores.values()])
    low = min(0.0, float(pooled.min()))
    high = max(1.0, float(np.quantile(pooled, 0.95)))
    return np.linspace(low, high, num)


@dataclass(frozen=True)
class Profiles:
    taus: np.ndarray  # (n_taus,)
    profiles: dict[str, np.ndarray]  # method -> fraction of runs above tau, (n_taus,)
    cis: dict[str, np.ndarray]  # method -> (2, n_taus): lower row, upper row


def performance_profiles(
    scores: Mapping[str, np.ndarray], taus: np.ndarray | None = None, reps: int = 2000, seed: int = 0
) -> Profiles:
    """Score distributions (fraction of runs with a normalised score above tau) with 95% CIs."""
    from rliable import library as rly

    _check_reps(reps)
    taus = default_taus(scores) if taus is None else np.asarray(taus, dtype=np.float64)
    profiles, cis = {}, {}
    for key, matrix in scores.items():
        with seeded(seed):
            p, ci = rly.create_performance_profile(
                {key: matrix},
                taus,
                custom_profile_func=score_distribution,
                reps=reps,
                confidence_interval_size=CONFIDENCE,
            )
        profiles[key], cis[key] = np.asarray(p[key]), np.asarray(ci[key])
    return Profiles(taus, profiles, cis)


# ---------------------------------------------------------------- probability of improvement
def improvement_probability(scores_x: np.ndarray, scores_y: np.ndarray) -> np.float64:
    """P(X > Y) averaged over games, ties counting one half: rliable's `probability_of_improvement`
    (Mann-Whitney U / (n_x n_y) per game) vectorised, since the bootstrap calls it thousands of times."""
    x = scores_x[:, None, :]
    y = scores_y[None, :, :]
    per_game = np.mean(x > y, axis=(0, 1)) + 0.5 * np.mean(x == y, axis=(0, 1))
    return np.float64(np.mean(per_game))  # a scalar: arch reads a 0-d array's missing shape[0]


def probability_of_improvement(
    scores: Mapping[str, np.ndarray],
    pairs: Sequence[tuple[str, str]] | None = None,
    reps: int = 2000,
    seed: int = 0,
) -> dict[tuple[str, str], tuple[float, float, float]]:
    """(x, y) -> (P(x > y), CI low, CI high), each method's runs resampled independently per game.

    Default pairs: every method against every later one in `scores`' order (P(y > x) = 1 - P(x > y)).
    """
    from rliable import library as rly

    _check_reps(reps)
    names = list(scores)
    if pairs is None:
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    out = {}
    for x, y in pairs:
        key = f"{x},{y}"
        with seeded(seed):
            point, ci = rly.get_interval_estimates(
                {key: [scores[x], scores[y]]},
                improvement_probability,
                reps=reps,
                confidence_interval_size=CONFIDENCE,
            )
        low, high = np.ravel(ci[key])
        out[(x, y)] = (float(point[key]), float(low), float(high))
    return out
