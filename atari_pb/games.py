"""The 65 Atari-PB games: names, ALE ids, DQN-Replay names, splits, game ids and score tables.

The table ships with the package (`game_table.csv`), so nothing here reads the network or the reference
folder. Game ids follow Atari-PB: the 60 ID + Near-OOD games sorted alphabetically get ids 0..59 and
every other game (the Far-OOD ones) uses id 0, the id Atari-PB's per-game neck and head fall back to.
"""

from __future__ import annotations

import csv
import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib import resources

from atari_pb.errors import UsageError

SPLITS: tuple[str, ...] = ("id", "near_ood", "far_ood")
NUM_GAME_IDS = 60  # per-game embeddings and heads: ID + Near-OOD games


@dataclass(frozen=True)
class Game:
    name: str  # snake_case, also ale_py's ROM name: "ms_pacman"
    split: str  # "id" | "near_ood" | "far_ood"
    random_score: float
    human_score: float | None  # None where no human score exists (Far-OOD)
    reference_agent: str  # "dqn_50m" | "rainbow_2m"
    reference_score: float

    @property
    def replay_name(self) -> str:
        """CamelCase directory name in DQN-Replay: ms_pacman -> MsPacman."""
        return camel_case(self.name)

    @property
    def ale_id(self) -> str:
        """Gymnasium id registered by ale-py: ms_pacman -> ALE/MsPacman-v5."""
        return f"ALE/{self.replay_name}-v5"

    @property
    def game_id(self) -> int:
        """Index of the per-game embedding / head; 0 for games outside ID + Near-OOD."""
        return _game_ids().get(self.name, 0)


def camel_case(snake: str) -> str:
    return "".join(part.capitalize() for part in snake.split("_"))


def _optional_float(text: str) -> float | None:
    return float(text) if text.strip() else None


@cache
def _table() -> dict[str, Game]:
    games: dict[str, Game] = {}
    with resources.files("atari_pb").joinpath("game_table.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            games[row["game"]] = Game(
                name=row["game"],
                split=row["split"],
                random_score=float(row["random_score"]),
                human_score=_optional_float(row["human_score"]),
                reference_agent=row["reference_agent"],
                reference_score=float(row["reference_score"]),
            )
    return games


@cache
def _game_ids() -> dict[str, int]:
    pretrain_games = sorted(g.name for g in _table().values() if g.split in ("id", "near_ood"))
    return {name: i for i, name in enumerate(pretrain_games)}


@cache
def _by_replay_name() -> dict[str, Game]:
    return {g.replay_name: g for g in _table().values()}


def all_games() -> list[Game]:
    """All 65 games in table order (ID, Near-OOD, Far-OOD)."""
    return list(_table().values())


def split_games(split: str) -> list[Game]:
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return [g for g in _table().values() if g.split == split]


def get_game(name: str) -> Game:
    """Look a game up by snake_case name or DQN-Replay CamelCase name."""
    table = _table()
    if name in table:
        return table[name]
    if name in _by_replay_name():
        return _by_replay_name()[name]
    close = difflib.get_close_matches(name, list(table), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise UsageError(
        f"unknown game {name!r}{hint}; valid games: {', '.join(table)}; or a split: {', '.join(SPLITS)}"
    )


def resolve_games(names: Iterable[str]) -> list[Game]:
    """Expand a list of game names and split names into games, keeping order, without repeats."""
    out: dict[str, Game] = {}
    for name in names:
        games = split_games(name) if name in SPLITS else [get_game(name)]
        for g in games:
            out.setdefault(g.name, g)
    return list(out.values())
