"""AtariARI's RAM annotations: for each annotated game, the RAM byte (0..127) holding each state variable.

Source: the Atari Annotated RAM Interface of Anand, Racah, Ozair, Bengio, Cote and Hjelm, "Unsupervised
State Representation Learning in Atari" (NeurIPS 2019, arXiv:1906.08226), github.com/mila-iqia/
atari-representation-learning at commit a06f52ca3bfafbd8a805254e10ea8f159251a0b4:
  atariari/benchmark/ram_annotations.py  `atari_dict` (the table below, keyed by this project's game names)
  atariari/benchmark/categorization.py   `summary_key_dict` (the categories, from the variables' names)

The games are the paper's 22 (its benchmark tables). `atari_dict` also holds `battlezone` and `skiing`,
which the paper's benchmark does not use; they are left out here.

Two tables (`TABLES`; the probe's `data.annotations`):
  head   the table above (AtariARI's HEAD, what `pip install atariari` gives), the default: it corrects the
         paper's space_invaders num_lives byte (125 -> 73, commit 87805e5), names seaquest's bytes 71-74 by
         what they hold (diver_or_enemy_missile_x: a small object there, not an "other" one) and adds pitfall's
         clock, qbert's score and tile colours and pong's paddle x (constant in play, so never probed);
  paper  the table of the paper's commit dacd81686d339d41540b2789edee9ce4c4156341 (2019-10-11), with which
         its Table 2 was made: `PAPER_CHANGES` replaces 7 games' entries by that commit's (the other 15 are
         the same bytes under the same names). For setting our figures next to the paper's.

Variables declared as a list of bytes expand to name_0, name_1, ... The order of `variables(game)` is
AtariARI's own label order: the single-byte variables as declared, then each list's entries (AtariARI
pops the lists and appends their entries at the end of the game's dict).

Categories follow AtariARI's name rules (a name holding _x/_y/_z/_column is a localization: the agent's
when it names the player or agent and no ball or missile, a small object's when it names a ball or missile,
else other; score/clock/lives/meter/display names are score_clock_lives_display; count/bit_map/existence/
level/room/game_state/direction names are misc). Each variable gets one category here, where AtariARI's
rules give two or none to three names (ATARIARI_CATEGORY_EXCEPTIONS):
  asteroids num_lives_direction   both score_clock_lives_display and misc there -> score_clock_lives_display
  qbert tile_color_0..20          no category there (only in its overall mean)  -> misc
"""

from __future__ import annotations

from atari_pb.errors import UsageError

CATEGORY_NAMES = (
    "agent_localization",
    "small_object_localization",
    "other_localization",
    "score_clock_lives_display",
    "misc",
)

# our game name -> AtariARI's key in atari_dict
ATARIARI_NAMES: dict[str, str] = {
    "asteroids": "asteroids",
    "berzerk": "berzerk",
    "bowling": "bowling",
    "boxing": "boxing",
    "breakout": "breakout",
    "demon_attack": "demonattack",
    "freeway": "freeway",
    "frostbite": "frostbite",
    "hero": "hero",
    "montezuma_revenge": "montezumarevenge",
    "ms_pacman": "mspacman",
    "pitfall": "pitfall",
    "pong": "pong",
    "private_eye": "privateeye",
    "qbert": "qbert",
    "riverraid": "riverraid",
    "seaquest": "seaquest",
    "space_invaders": "spaceinvaders",
    "tennis": "tennis",
    "venture": "venture",
    "video_pinball": "videopinball",
    "yars_revenge": "yarsrevenge",
}

# variable -> RAM index, or a tuple of indices (name_0, name_1, ...), in AtariARI's declaration order
_TABLE: dict[str, dict[str, int | tuple[int, ...]]] = {
    "asteroids": {
        "enemy_asteroids_y": (3, 4, 5, 6, 7, 8, 9, 12, 13, 14, 15, 16, 17, 18, 19),
        "enemy_asteroids_x": (21, 22, 23, 24, 25, 26, 27, 30, 31, 32, 33, 34, 35, 36, 37),
        "player_x": 73,
        "player_y": 74,
        "num_lives_direction": 60,
        "player_score_high": 61,
        "player_score_low": 62,
        "player_missile_x1": 83,
        "player_missile_x2": 84,
        "player_missile_y1": 86,
        "player_missile_y2": 87,
        "player_missile1_direction": 89,
        "player_missile2_direction": 90,
    },
    "berzerk": {
        "player_x": 19,
        "player_y": 11,
        "player_direction": 14,
        "player_missile_x": 22,
        "player_missile_y": 23,
        "player_missile_direction": 21,
        "robot_missile_direction": 26,
        "robot_missile_x": 29,
        "robot_missile_y": 30,
        "num_lives": 90,
        "robots_killed_count": 91,
        "game_level": 92,
        "enemy_evilOtto_x": 46,
        "enemy_evilOtto_y": 89,
        "enemy_robots_x": tuple(range(65, 73)),
        "enemy_robots_y": tuple(range(56, 65)),
        "player_score": tuple(range(93, 96)),
    },
    "bowling": {
        "ball_x": 30,
        "ball_y": 41,
        "player_x": 29,
        "player_y": 40,
        "frame_number_display": 36,
        "pin_existence": tuple(range(57, 67)),
        "score": 33,
    },
    "boxing": {
        "player_x": 32,
        "player_y": 34,
        "enemy_x": 33,
        "enemy_y": 35,
        "enemy_score": 19,
        "clock": 17,
        "player_score": 18,
    },
    "breakout": {
        "ball_x": 99,
        "ball_y": 101,
        "player_x": 72,
        "blocks_hit_count": 77,
        "block_bit_map": tuple(range(30)),
        "score": 84,
    },
    "demon_attack": {
        "level": 62,
        "player_x": 22,
        "enemy_x1": 17,
        "enemy_x2": 18,
        "enemy_x3": 19,
        "missile_y": 21,
        "enemy_y1": 69,
        "enemy_y2": 70,
        "enemy_y3": 71,
        "num_lives": 114,
    },
    "freeway": {
        "player_y": 14,
        "score": 103,
        "enemy_car_x": tuple(range(108, 118)),
    },
    "frostbite": {
        "top_row_iceflow_x": 34,
        "second_row_iceflow_x": 33,
        "third_row_iceflow_x": 32,
        "fourth_row_iceflow_x": 31,
        "enemy_bear_x": 104,
        "num_lives": 76,
        "igloo_blocks_count": 77,
        "enemy_x": tuple(range(84, 88)),
        "player_x": 102,
        "player_y": 100,
        "player_direction": 4,
        "score": (72, 73, 74),
    },
    "hero": {
        "player_x": 27,
        "player_y": 31,
        "power_meter": 43,
        "room_number": 28,
        "level_number": 117,
        "dynamite_count": 50,
        "score": (56, 57),
    },
    "montezuma_revenge": {
        "room_number": 3,
        "player_x": 42,
        "player_y": 43,
        "player_direction": 52,
        "enemy_skull_x": 47,
        "enemy_skull_y": 46,
        "key_monster_x": 44,
        "key_monster_y": 45,
        "level": 57,
        "num_lives": 58,
        "items_in_inventory_count": 61,
        "room_state": 62,
        "score_0": 19,
        "score_1": 20,
        "score_2": 21,
    },
    "ms_pacman": {
        "enemy_sue_x": 6,
        "enemy_inky_x": 7,
        "enemy_pinky_x": 8,
        "enemy_blinky_x": 9,
        "enemy_sue_y": 12,
        "enemy_inky_y": 13,
        "enemy_pinky_y": 14,
        "enemy_blinky_y": 15,
        "player_x": 10,
        "player_y": 16,
        "fruit_x": 11,
        "fruit_y": 17,
        "ghosts_count": 19,
        "player_direction": 56,
        "dots_eaten_count": 119,
        "player_score": 120,
        "num_lives": 123,
    },
    "pitfall": {
        "player_x": 97,
        "player_y": 105,
        "enemy_logs_x": 98,
        "enemy_scorpion_x": 99,
        "bottom_of_rope_y": 18,
        "clock_sec": 89,
        "clock_min": 88,
    },
    "pong": {
        "player_y": 51,
        "player_x": 46,
        "enemy_y": 50,
        "enemy_x": 45,
        "ball_x": 49,
        "ball_y": 54,
        "enemy_score": 13,
        "player_score": 14,
    },
    "private_eye": {
        "player_x": 63,
        "player_y": 86,
        "room_number": 92,
        "clock": (67, 69),
        "player_direction": 58,
        "score": (73, 74),
        "dove_x": 48,
        "dove_y": 39,
    },
    "qbert": {
        "player_x": 43,
        "player_y": 67,
        "player_column": 35,
        "red_enemy_column": 69,
        "green_enemy_column": 105,
        "score": (89, 90, 91),
        # the pyramid's cubes, top row (1 cube) to bottom row (6 cubes)
        "tile_color": (21, 52, 54, 83, 85, 87, 98, 100, 102, 104, 1, 3, 5, 7, 9, 32, 34, 36, 38, 40, 42),
    },
    "riverraid": {
        "player_x": 51,
        "missile_x": 117,
        "missile_y": 50,
        "fuel_meter_high": 55,
        "fuel_meter_low": 56,
    },
    "seaquest": {
        "enemy_obstacle_x": tuple(range(30, 34)),
        "player_x": 70,
        "player_y": 97,
        "diver_or_enemy_missile_x": tuple(range(71, 75)),
        "player_direction": 86,
        "player_missile_direction": 87,
        "oxygen_meter_value": 102,
        "player_missile_x": 103,
        "score": (57, 58),
        "num_lives": 59,
        "divers_collected_count": 62,
    },
    "space_invaders": {
        "invaders_left_count": 17,
        "player_score": 104,
        "num_lives": 73,
        "player_x": 28,
        "enemies_x": 26,
        "missiles_y": 9,
        "enemies_y": 24,
    },
    "tennis": {
        "enemy_x": 27,
        "enemy_y": 25,
        "enemy_score": 70,
        "ball_x": 16,
        "ball_y": 17,
        "player_x": 26,
        "player_y": 24,
        "player_score": 69,
    },
    "venture": {
        "sprite0_y": 20,
        "sprite1_y": 21,
        "sprite2_y": 22,
        "sprite3_y": 23,
        "sprite4_y": 24,
        "sprite5_y": 25,
        "sprite0_x": 79,
        "sprite1_x": 80,
        "sprite2_x": 81,
        "sprite3_x": 82,
        "sprite4_x": 83,
        "sprite5_x": 84,
        "player_x": 85,
        "player_y": 26,
        "current_room": 90,
        "num_lives": 70,
        "score_1_2": 71,
        "score_3_4": 72,
    },
    "video_pinball": {
        "ball_x": 67,
        "ball_y": 68,
        "player_left_paddle_y": 98,
        "player_right_paddle_y": 102,
        "score_1": 48,
        "score_2": 50,
    },
    "yars_revenge": {
        "player_x": 32,
        "player_y": 31,
        "player_missile_x": 38,
        "player_missile_y": 37,
        "enemy_x": 43,
        "enemy_y": 42,
        "enemy_missile_x": 47,
        "enemy_missile_y": 46,
    },
}

# The paper's table where it differs from HEAD: atariari/benchmark/ram_annotations.py at dacd816, whole entries
PAPER_COMMIT = "dacd81686d339d41540b2789edee9ce4c4156341"
PAPER_CHANGES: dict[str, dict[str, int | tuple[int, ...]]] = {
    "pitfall": {
        "player_x": 97,
        "player_y": 105,
        "enemy_logs_x": 98,
        "enemy_scorpion_x": 99,
        "bottom_of_rope_y": 18,
    },
    "pong": {
        "player_y": 51,
        "enemy_y": 50,
        "ball_x": 49,
        "ball_y": 54,
        "enemy_score": 13,
        "player_score": 14,
    },
    "private_eye": {
        "agent_x": 63,
        "agent_y": 86,
        "room_number": 92,
        "clock": (67, 69),
        "player_direction": 58,
        "score": (73, 74),
        "dove_x": 48,
        "dove_y": 39,
    },
    "qbert": {
        "player_x": 43,
        "player_y": 67,
        "player_column": 35,
        "red_enemy_column": 69,
        "green_enemy_column": 105,
    },
    "seaquest": {
        "enemy_obstacle_x": tuple(range(30, 34)),
        "player_x": 70,
        "player_y": 97,
        "diver_x": tuple(range(71, 75)),
        "player_direction": 86,
        "missile_direction": 87,
        "oxygen_meter_value": 102,
        "missile_x": 103,
        "score": (57, 58),
        "num_lives": 59,
        "divers_collected_count": 62,
    },
    "space_invaders": {
        "invaders_left_count": 17,
        "player_score": 104,
        "num_lives": 125,
        "player_x": 28,
        "enemies_x": 26,
        "missiles_y": 9,
        "enemies_y": 24,
    },
    "yars_revenge": {
        "player_yar_x": 32,
        "player_yar_y": 31,
        "yar_missile_x": 38,
        "yar_missile_y": 37,
        "enemy_qotile_x": 43,
        "enemy_qotile_y": 42,
        "qotile_missile_x": 47,
        "qotile_missile_y": 46,
    },
}
TABLES = ("head", "paper")

# (game, variable) -> the one category used here, where AtariARI's name rules give two or none
ATARIARI_CATEGORY_EXCEPTIONS: dict[tuple[str, str], str] = {
    ("asteroids", "num_lives_direction"): "score_clock_lives_display",  # also misc there
    **{("qbert", f"tile_color_{i}"): "misc" for i in range(21)},  # uncategorized there
}


def _expand(table: dict[str, int | tuple[int, ...]]) -> dict[str, int]:
    """Single bytes in declaration order, then every list's name_i entries (AtariARI's resulting order)."""
    out = {name: index for name, index in table.items() if isinstance(index, int)}
    for name, indices in table.items():
        if not isinstance(indices, int):
            out.update({f"{name}_{i}": index for i, index in enumerate(indices)})
    return out


def atariari_categories(variable: str) -> list[str]:
    """The categories AtariARI's `summary_key_dict` puts a variable name in (zero, one or two)."""
    found = []
    if any(part in variable for part in ("_x", "_y", "_z", "_column")):
        small = any(word in variable for word in ("ball", "missile"))
        agent = any(word in variable for word in ("agent", "player"))
        found.append(
            "small_object_localization" if small else "agent_localization" if agent else "other_localization"
        )
    display_words = ("score", "clock", "lives", "lifes", "meter", "display")
    if any(word in variable for word in display_words):
        found.append("score_clock_lives_display")
    misc_words = ("count", "bit_map", "existence", "level", "room", "game_state", "direction")
    if any(word in variable for word in misc_words):
        found.append("misc")
    return found


def _category(game: str, variable: str) -> str:
    if (game, variable) in ATARIARI_CATEGORY_EXCEPTIONS:
        return ATARIARI_CATEGORY_EXCEPTIONS[(game, variable)]
    found = atariari_categories(variable)
    if len(found) != 1:  # a table edit that the exceptions do not cover
        raise AssertionError(f"{game} {variable}: AtariARI's rules give categories {found}")
    return found[0]


def _build(tables: dict[str, dict]) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, str]]]:
    annotations = {game: _expand(table) for game, table in tables.items()}
    categories = {
        game: {variable: _category(game, variable) for variable in table}
        for game, table in annotations.items()
    }
    return annotations, categories


ANNOTATIONS, CATEGORIES = _build(_TABLE)  # HEAD's, the default
_BY_TABLE = {"head": (ANNOTATIONS, CATEGORIES), "paper": _build({**_TABLE, **PAPER_CHANGES})}


def check_table(table: str) -> str:
    if table not in TABLES:
        raise UsageError(f"annotation table {table!r}; valid: {', '.join(TABLES)}")
    return table


def annotations(table: str = "head") -> dict[str, dict[str, int]]:
    """game -> {variable: RAM index} of `table` (head | paper)."""
    return _BY_TABLE[check_table(table)][0]


def categories(game: str, table: str = "head") -> dict[str, str]:
    """variable -> its category, for `game` under `table`."""
    return _BY_TABLE[check_table(table)][1][check_annotated(game)]


def annotated_games() -> list[str]:
    """The annotated games (this project's names), alphabetically."""
    return list(ANNOTATIONS)


def check_annotated(game: str) -> str:
    """`game` (a name of ours) if it is annotated, else a UsageError naming the annotated games."""
    name = getattr(game, "name", game)
    if name not in ANNOTATIONS:
        raise UsageError(
            f"{name!r} has no AtariARI RAM annotations; annotated games: {', '.join(annotated_games())}"
        )
    return name


def variables(game: str, table: str = "head") -> list[str]:
    """The game's variables in a fixed order (AtariARI's label order): the columns of probe labels."""
    return list(annotations(table)[check_annotated(game)])


def ram_indices(game: str, table: str = "head") -> list[int]:
    """The RAM index of each of `variables(game, table)`, in that order."""
    return list(annotations(table)[check_annotated(game)].values())
