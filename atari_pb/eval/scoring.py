"""What scoring a protocol's records needs, carried by the records themselves (`ResultRecord.scoring`), so
that `atari-pb eval` and `leaderboard` read records without importing the protocols (and torch).

A protocol declares it (finetune/base.py: `Protocol.score_scale`, `score_parts`, `score_parts_title`) and
fine-tuning writes it into every record. Records made before records carried it fall back to the registry,
which imports the protocols: they still read, only slower.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from atari_pb.errors import DataError

GAME_SCALE = "game"  # the scale of protocols scored in game points, which eval normalises (DQN / human)


@dataclass(frozen=True)
class Scoring:
    scale: str = GAME_SCALE  # "game", or a raw scale of the protocol's own (the probe's "f1")
    parts: tuple[str, ...] = ()  # sub-scores each record holds in config["score_parts"], in table order
    parts_title: str = "part"  # what one part is called in the tables ("category")

    @property
    def raw(self) -> bool:
        """Whether scores are aggregated raw, on the protocol's own scale."""
        return self.scale != GAME_SCALE

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "parts": list(self.parts)}


# protocol -> the Scoring the records being aggregated declared (use_records)
_DECLARED: dict[str, Scoring] = {}


def parse_scoring(doc: Any, where: str) -> Scoring | None:
    """A record's `scoring` ({} or absent in records made before they carried it: None)."""
    if not doc:
        return None
    try:
        scoring = Scoring(str(doc["scale"]), tuple(str(p) for p in doc["parts"]), str(doc["parts_title"]))
    except (KeyError, TypeError) as err:
        raise DataError(
            f"{where}: scoring {doc!r} is malformed ({err}); it holds scale, parts, parts_title"
        ) from None
    return scoring


def use_records(records) -> None:
    """Score by what these records declare (aggregate and write_leaderboard call it with their records);
    records that disagree on their protocol's scoring are an error naming one of them."""
    from atari_pb.eval.records import record_path

    declared: dict[str, Scoring] = {}
    for r in records:
        where = record_path(Path(), r.method, r.protocol, r.game, r.seed).as_posix()
        mine = parse_scoring(r.scoring, where)
        if mine is None:
            continue
        known = declared.setdefault(r.protocol, mine)
        if known != mine:
            raise DataError(
                f"{where}: scoring {mine.to_json()} differs from other {r.protocol} records' {known.to_json()}"
            )
    _DECLARED.clear()
    _DECLARED.update(declared)


def scoring(protocol: str) -> Scoring:
    """How `protocol`'s records are scored: as its records declared, else as the registry says."""
    if protocol in _DECLARED:
        return _DECLARED[protocol]
    from atari_pb.finetune.base import protocol_class  # records made before they carried it

    cls = protocol_class(protocol)
    return Scoring(cls.score_scale, tuple(cls.score_parts), cls.score_parts_title)


def is_raw(protocol: str) -> bool:
    return scoring(protocol).raw
