"""Normalised scores and the runs x games matrices rliable aggregates.

DQN-normalised (Agarwal et al. 2020), exactly as the released Atari-PB logger computes it
(src/common/logger.py:340-347): (score - min(random, ref)) / (max(random, ref) - min(random, ref) + 1e-6),
with ref the game's reference agent (DQN 50M for ID / Near-OOD, Rainbow 2M for Far-OOD). Taking min and max
makes the scale increase with the raw score even where the reference is below random (asteroids,
elevator_action, private_eye). Where the two coincide (montezuma_revenge: random 0, DQN 0) the range is
empty and the released formula gives score x 1e6: any point scored there is a huge normalised score. IQM and
median trim it; means do not (see the parity document).

Human-normalised, as released: (score - random) / (human - random + 1e-6); None (scalar) or NaN (array)
where the game has no human score (Far-OOD: the released 1e8 placeholder is not a score), and asking for a
human-normalised matrix of such games is an error.

Raw scales: a protocol that scores itself on a fixed scale of its own (`Protocol.score_scale` other than
"game", read through the registry: the probe's "f1", in [0, 1]) is aggregated raw, whatever normalization is
asked for; its matrices and rows say its scale in `normalization`.

Completeness policy of `score_matrix` / `score_matrices` (nothing is dropped silently, every gap is an error
naming the missing record files):
- one (method, protocol, split) must have the same seeds on every game it has: a runs x games matrix has no
  holes, and a missing seed usually means an unfinished or failed run;
- within one (protocol, split) every method must have the same games (the union of what any method has): an
  IQM over other games is not comparable, and probability of improvement needs common tasks;
- methods may differ in how many seeds they have (rliable's stratified bootstrap resamples runs per task and
  probability of improvement resamples each method independently), and a split need not be complete (the
  demo runs 3 ID games); `n_games` in every table says how many games stand behind a number.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from atari_pb.errors import DataError, UsageError
from atari_pb.eval.records import ResultRecord, record_path
from atari_pb.eval.scoring import scoring
from atari_pb.games import SPLITS, Game, get_game, split_games

NORMALIZATIONS: tuple[str, ...] = ("dqn", "human")
_MAX_LISTED = 8  # missing records named in one error line before "and N more"

RANGE_EPS = 1e-6  # the released logger adds it to every range (src/common/logger.py:340,347)


def _game(game: Game | str) -> Game:
    return game if isinstance(game, Game) else get_game(game)


def dqn_range(game: Game | str) -> tuple[float, float]:
    """(low, high) of the DQN-normalised scale: min and max of the random and reference scores."""
    g = _game(game)
    return min(g.random_score, g.reference_score), max(g.random_score, g.reference_score)


def dqn_normalized(game: Game | str, score: float) -> float:
    """One raw score on the DQN-normalised scale (0 = the worse of random and reference, 1 = the better)."""
    low, high = dqn_range(game)
    return (float(score) - low) / (high - low + RANGE_EPS)


def human_normalized(game: Game | str, score: float) -> float | None:
    """One raw score on the human-normalised scale (0 = random, 1 = human); None without a human score."""
    g = _game(game)
    if g.human_score is None:
        return None
    return (float(score) - g.random_score) / (g.human_score - g.random_score + RANGE_EPS)


def _games_list(games: Game | str | Sequence[Game | str]) -> list[Game]:
    if isinstance(games, (Game, str)):
        return [_game(games)]
    return [_game(g) for g in games]


def dqn_normalized_array(games: Game | str | Sequence[Game | str], scores: ArrayLike) -> np.ndarray:
    """DQN-normalised scores; `games` is one game or one per column (the last axis) of `scores`."""
    gs = _games_list(games)
    low = np.array([dqn_range(g)[0] for g in gs])
    high = np.array([dqn_range(g)[1] for g in gs])
    return (np.asarray(scores, dtype=np.float64) - low) / (high - low + RANGE_EPS)


def human_normalized_array(games: Game | str | Sequence[Game | str], scores: ArrayLike) -> np.ndarray:
    """Human-normalised scores, NaN in the columns of games without a human score."""
    gs = _games_list(games)
    random = np.array([g.random_score for g in gs])
    human = np.array([np.nan if g.human_score is None else g.human_score for g in gs])
    return (np.asarray(scores, dtype=np.float64) - random) / (human - random + RANGE_EPS)


def normalize_array(
    games: Game | str | Sequence[Game | str], scores: ArrayLike, normalization: str = "dqn"
) -> np.ndarray:
    if normalization == "dqn":
        return dqn_normalized_array(games, scores)
    if normalization == "human":
        return human_normalized_array(games, scores)
    raise UsageError(f"unknown normalization {normalization!r}; valid: {', '.join(NORMALIZATIONS)}")


def has_human_scores(split: str) -> bool:
    """Whether every game of the split has a human score (ID and Near-OOD do, Far-OOD does not)."""
    return all(g.human_score is not None for g in split_games(split))


def _missing_error(what: str, missing: list[str], why: str) -> DataError:
    listed = ", ".join(missing[:_MAX_LISTED])
    more = f" and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
    return DataError(f"{what}: missing {listed}{more} ({why})")


def _missing_path(method: str, protocol: str, game: str, seed: int) -> str:
    return record_path(Path(), method, protocol, game, seed).as_posix()


def _seed(record: ResultRecord) -> int:
    # read_records checks the file name against the content but not the seed's type.
    if isinstance(record.seed, bool) or not isinstance(record.seed, int):
        where = _missing_path(record.method, record.protocol, record.game, record.seed)
        raise DataError(f"{where}: seed {record.seed!r} is not an integer")
    return record.seed


def score_scale(protocol: str) -> str:
    """The protocol's score scale (eval/scoring.py): "game" (normalised here) or its own raw scale."""
    return scoring(protocol).scale


def is_raw(protocol: str) -> bool:
    """Whether the protocol's scores are aggregated raw (a scale of its own, not game points)."""
    return scoring(protocol).raw


def _check_split(split: str, normalization: str, raw: bool = False) -> None:
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if normalization not in NORMALIZATIONS:
        raise UsageError(f"unknown normalization {normalization!r}; valid: {', '.join(NORMALIZATIONS)}")
    if normalization == "human" and not raw and not has_human_scores(split):
        raise UsageError(f"split {split} has no human scores; use the dqn normalization")


def _table_order(split: str, names: Iterable[str]) -> list[str]:
    wanted = set(names)
    return [g.name for g in split_games(split) if g.name in wanted]


def score_matrix(
    records: Iterable[ResultRecord],
    method: str,
    protocol: str,
    split: str,
    normalization: str = "dqn",
    games: Sequence[str] | None = None,
) -> tuple[np.ndarray, list[str], list[int]]:
    """Normalised scores of one (method, protocol, split) as rliable's (n_seeds, n_games) matrix (raw ones
    for a protocol with a scale of its own, see the module docstring).

    Columns follow the game table's order (or `games`, which the method must then cover exactly, as
    `score_matrices` asks for); rows are the seeds in ascending order. A hole (a seed missing on some
    game, a game of `games` missing) is a DataError naming the missing record files.
    """
    raw_scale = is_raw(protocol)
    _check_split(split, normalization, raw_scale)
    cells: dict[tuple[str, int], float] = {}
    for r in records:
        if r.method == method and r.protocol == protocol and r.split == split:
            key = (get_game(r.game).name, _seed(r))
            if key in cells:  # the same run under two spellings of the game (pong and Pong)
                where = _missing_path(method, protocol, r.game, key[1])
                raise DataError(f"{where}: a second record of {method}/{protocol} {key[0]} seed {key[1]}")
            if not np.isfinite(r.score):  # read_records rejects NaN but lets infinities through
                where = _missing_path(method, protocol, r.game, key[1])
                raise DataError(f"{where}: score {r.score!r} is not finite")
            cells[key] = float(r.score)
    what = f"{method}/{protocol} on split {split}"
    if not cells:
        raise DataError(f"{what}: no results records")
    have = {game for game, _ in cells}
    columns = list(games) if games is not None else _table_order(split, have)
    seeds = sorted({seed for _, seed in cells})
    missing = [
        _missing_path(method, protocol, game, seed) for game in columns if game not in have for seed in seeds
    ]
    if missing:
        raise _missing_error(what, missing, "every method of a protocol and split needs the same games")
    extra = sorted(have - set(columns))
    if extra:
        raise DataError(
            f"{what}: games {', '.join(extra)} are outside the games compared ({', '.join(columns)})"
        )
    missing = [
        _missing_path(method, protocol, game, seed)
        for game in columns
        for seed in seeds
        if (game, seed) not in cells
    ]
    if missing:
        raise _missing_error(what, missing, "every game needs the same seeds")
    raw = np.array([[cells[(game, seed)] for game in columns] for seed in seeds], dtype=np.float64)
    if raw_scale:
        return raw, columns, seeds
    return normalize_array(columns, raw, normalization), columns, seeds


@dataclass(frozen=True)
class ScoreMatrices:
    """Every method's matrix for one (protocol, split), all over the same games (columns)."""

    split: str
    protocol: str
    normalization: str  # dqn | human, or the protocol's own scale when it has one (e.g. f1)
    games: list[str]
    scores: dict[str, np.ndarray]  # method -> (n_seeds, n_games), methods in sorted order
    seeds: dict[str, list[int]]


def score_matrices(
    records: Iterable[ResultRecord], split: str, protocol: str, normalization: str = "dqn"
) -> ScoreMatrices:
    """Matrices of every method with results for (protocol, split); DataError if their games differ."""
    _check_split(split, normalization, is_raw(protocol))
    chosen = [r for r in records if r.split == split and r.protocol == protocol]
    if not chosen:
        raise DataError(f"no results records for protocol {protocol} on split {split}")
    games = _table_order(split, {get_game(r.game).name for r in chosen})
    scores: dict[str, np.ndarray] = {}
    seeds: dict[str, list[int]] = {}
    for method in sorted({r.method for r in chosen}):
        scores[method], _, seeds[method] = score_matrix(chosen, method, protocol, split, normalization, games)
    scale = score_scale(protocol) if is_raw(protocol) else normalization
    return ScoreMatrices(split, protocol, scale, games, scores, seeds)
