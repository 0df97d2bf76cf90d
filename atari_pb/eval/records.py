"""Results records: one JSON file per fine-tuning run, `RESULTS/<method>/<protocol>/<game>/seed<k>.json`.

`atari-pb eval` and `leaderboard` read only these files, so results made on other machines merge by
copying folders. A record is written atomically and never recomputed once it exists.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from atari_pb.errors import DataError, UsageError
from atari_pb.eval.scoring import parse_scoring
from atari_pb.games import SPLITS, get_game

REQUIRED = ("method", "protocol", "split", "game", "seed", "score")


@dataclass
class ResultRecord:
    method: str  # an encoder's name (e.g. "curl"), or a baseline: "random", "e2e"
    protocol: str  # a registered fine-tuning protocol: offline_bc | rainbow | ...
    split: str  # id | near_ood | far_ood
    game: str
    seed: int
    # raw game score: mean over the evaluation episodes; a self-scoring protocol's own score on its own scale
    # (`Protocol.score_scale`: the probe's test F1, the mean of its category means), with no episodes
    score: float
    episodes: int = 0  # evaluation episodes behind `score`
    gradient_steps: int = 0  # optimiser steps of fine-tuning
    env_steps: int = 0  # agent steps in the environment while fine-tuning (0 for offline protocols)
    encoder_sha256: str = ""  # of the encoder file fine-tuned from ("" for baselines without one)
    config: dict[str, Any] = field(default_factory=dict)  # the fine-tuning run's whole configuration
    episode_scores: list[float] = field(default_factory=list)
    # how the protocol's scores are aggregated (eval/scoring.py: scale, parts, parts_title), so that eval
    # reads records without the protocols; {} in records made before they carried it
    scoring: dict[str, Any] = field(default_factory=dict)


def record_path(results: Path, method: str, protocol: str, game: str, seed: int) -> Path:
    return Path(results) / method / protocol / game / f"seed{seed}.json"


def write_record(results: Path, record: ResultRecord) -> Path:
    path = record_path(results, record.method, record.protocol, record.game, record.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(record), indent=1) + "\n")
    os.replace(tmp, path)
    return path


def _check(doc: Any, path: Path) -> ResultRecord:
    if not isinstance(doc, dict):
        raise DataError(f"{path}: a record is a JSON object")
    missing = [k for k in REQUIRED if k not in doc]
    if missing:
        raise DataError(f"{path}: missing keys {', '.join(missing)}; a record needs {', '.join(REQUIRED)}")
    known = set(ResultRecord.__dataclass_fields__)
    record = ResultRecord(**{k: v for k, v in doc.items() if k in known})
    if parse_scoring(record.scoring, str(path)) is None:  # made before records said how they are scored
        from atari_pb.finetune.base import protocol_names

        if record.protocol not in protocol_names():
            raise DataError(f"{path}: protocol {record.protocol!r}; valid: {', '.join(protocol_names())}")
    if record.split not in SPLITS:
        raise DataError(f"{path}: split {record.split!r}; valid: {', '.join(SPLITS)}")
    try:
        game = get_game(record.game)
    except UsageError as err:
        raise DataError(f"{path}: {err}") from None
    if game.name != record.game:
        raise DataError(f"{path}: game {record.game!r} must be written {game.name!r}")
    if not isinstance(record.seed, int) or isinstance(record.seed, bool):
        raise DataError(f"{path}: seed {record.seed!r} is not an integer")
    if game.split != record.split:
        raise DataError(
            f"{path}: {record.game} belongs to split {game.split}, the record says {record.split}"
        )
    if (
        not isinstance(record.score, (int, float))
        or isinstance(record.score, bool)
        or not math.isfinite(record.score)
    ):
        raise DataError(f"{path}: score {record.score!r} is not a finite number")
    expected = record_path(Path("."), record.method, record.protocol, record.game, record.seed)
    if path.parts[-4:] != expected.parts[-4:]:
        raise DataError(f"{path}: its content ({'/'.join(expected.parts[-4:])}) does not match where it lies")
    return record


def read_record(path: Path) -> ResultRecord:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable JSON record ({err})") from None
    return _check(doc, Path(path))


def read_records(results: Path) -> list[ResultRecord]:
    """Every record under `results`; a malformed one is an error naming it (nothing is skipped silently)."""
    results = Path(results)
    if not results.is_dir():
        raise UsageError(f"results directory {results} does not exist")
    return [read_record(p) for p in sorted(results.glob("*/*/*/seed*.json"))]
