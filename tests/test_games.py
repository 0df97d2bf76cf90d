"""The game registry against the reference table and against ale-py's ROMs."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from ale_py import roms

from atari_pb.errors import UsageError
from atari_pb.games import NUM_GAME_IDS, all_games, get_game, resolve_games, split_games

# a copy of the reference table (shared/reference/atari_pb_games.csv), kept with the tests so that it always runs
REFERENCE = Path(__file__).resolve().parent / "data" / "atari_pb_games.csv"


def test_splits_and_counts():
    assert len(all_games()) == 65
    assert [len(split_games(s)) for s in ("id", "near_ood", "far_ood")] == [50, 10, 5]
    assert {g.name for g in split_games("far_ood")} == {
        "human_cannonball",
        "basic_math",
        "klax",
        "othello",
        "surround",
    }


def test_game_ids_follow_atari_pb():
    pretrain = sorted(g.name for g in all_games() if g.split != "far_ood")
    assert [get_game(n).game_id for n in pretrain] == list(range(NUM_GAME_IDS))
    assert get_game("air_raid").game_id == 0 and get_game("zaxxon").game_id == 59
    assert get_game("pong").game_id == pretrain.index("pong")
    assert all(g.game_id == 0 for g in split_games("far_ood"))


@pytest.mark.parametrize(
    "name,camel",
    [
        ("ms_pacman", "MsPacman"),
        ("up_n_down", "UpNDown"),
        ("jamesbond", "Jamesbond"),
        ("montezuma_revenge", "MontezumaRevenge"),
        ("basic_math", "BasicMath"),
    ],
)
def test_names(name, camel):
    g = get_game(name)
    assert g.replay_name == camel and g.ale_id == f"ALE/{camel}-v5"
    assert get_game(camel) is g


def test_every_game_has_a_rom():
    assert [g.name for g in all_games() if roms.get_rom_path(g.name) is None] == []


def test_scores_match_reference_table():
    rows = list(csv.DictReader(REFERENCE.open()))
    assert len(rows) == len(all_games())
    for row in rows:
        g = get_game(row["game"])
        assert g.split == row["split"] and g.reference_agent == row["reference_agent"]
        assert g.random_score == float(row["random_score"]) and g.reference_score == float(
            row["reference_score"]
        )
        assert g.human_score == (float(row["human_score"]) if row["human_score"] else None)


def test_resolve_expands_splits_and_rejects_unknown_names():
    games = resolve_games(["pong", "far_ood", "pong"])
    assert [g.name for g in games][:2] == ["pong", "human_cannonball"] and len(games) == 6
    with pytest.raises(UsageError, match=r"unknown game 'pacman' \(did you mean"):
        get_game("pacman")
