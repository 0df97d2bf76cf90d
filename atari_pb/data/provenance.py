"""Which data an encoder was pre-trained on: a small summary of the manifest entries it read.

    {"source": "rlu", "games": 38, "transitions": 7_600_000, "shards": 380}  ->  "rlu, 38 games, 7.6M transitions"

`source` is the entries' `origin` (manifest.py: dqn_replay, collect, atari_pb_far_ood, rlu), the sorted
origins joined by "+" when they are mixed, and "unknown" for entries written before shards recorded their
origin. It travels from the pre-training run into the encoder's JSON (`metadata.pretrain_data`), from there
into every results record (`config.pretrain_data`; None for baselines without pre-training) and onto the
leaderboard, so rows pre-trained on different data are never ranked together unannounced.

Pure functions only, and no torch: the data and eval modules import this.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from atari_pb.data.manifest import ShardEntry
from atari_pb.errors import DataError

# the source of entries without an origin (manifests written before shards recorded theirs), and the label
# of an encoder that does not record its data
UNKNOWN = "unknown"
NONE = "none"  # the label of a baseline without pre-training
KEYS = ("source", "games", "transitions", "shards")
# a provenance dict; None: no pre-training (a baseline); UNKNOWN: an encoder that does not record its data
Provenance = dict[str, Any] | str | None


def select_entries(
    entries: Mapping[Any, ShardEntry] | Iterable[ShardEntry], games: Sequence[str] | None = None
) -> list[ShardEntry]:
    """The entries a ShardSet with the same `games` reads (sampler.py: all of them when `games` is None)."""
    values = entries.values() if isinstance(entries, Mapping) else entries
    return [e for e in values if games is None or e.game in games]


def data_provenance(
    entries: Mapping[Any, ShardEntry] | Iterable[ShardEntry], games: Sequence[str] | None = None
) -> dict[str, Any]:
    """{"source", "games" (distinct), "transitions" (summed lengths), "shards"} of manifest entries,
    optionally only those of `games`."""
    chosen = select_entries(entries, games)
    origins = sorted({e.origin or UNKNOWN for e in chosen})
    return {
        "source": "+".join(origins) if origins else UNKNOWN,
        "games": len({e.game for e in chosen}),
        "transitions": sum(e.length for e in chosen),
        "shards": len(chosen),
    }


def check_provenance(value: Any) -> dict[str, Any] | None:
    """A provenance read from a file (None, or a dict with KEYS of the right types); raises DataError
    with what is wrong (the caller adds where it was read)."""
    if value is None:
        return None
    if not isinstance(value, dict) or any(k not in value for k in KEYS):
        raise DataError(f"pretrain_data {value!r} is not a provenance (needs {', '.join(KEYS)})")
    counts = [value[k] for k in KEYS[1:]]
    if not isinstance(value["source"], str) or any(
        isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in counts
    ):
        raise DataError(f"pretrain_data {value!r}: source must be text and the counts whole numbers >= 0")
    return {k: value[k] for k in KEYS}


def data_key(prov: Provenance) -> tuple | str | None:
    """What makes two provenances the same data: source, number of games and transitions (the shard
    count follows from how the data was cut, not from what it holds)."""
    if isinstance(prov, dict):
        return (prov["source"], prov["games"], prov["transitions"])
    return prov


def count(n: int) -> str:
    """7_600_000 -> '7.6M', 50_000 -> '50.0k', 999 -> '999'."""
    if n >= 999_950:  # would round to 1000.0k
        return f"{n / 1e6:.1f}M"
    if n >= 1000:
        return f"{n / 1e3:.1f}k"
    return str(n)


def describe(prov: Provenance, exact: bool = False) -> str:
    """'rlu, 38 games, 7.6M transitions'; 'none' for a baseline without pre-training (None), 'unknown'
    for an encoder that does not say (UNKNOWN). `exact` writes every digit of the transitions."""
    if prov is None:
        return NONE
    if not isinstance(prov, dict):
        return str(prov)
    games = f"{prov['games']} game" + ("" if prov["games"] == 1 else "s")
    transitions = f"{prov['transitions']:,}" if exact else count(prov["transitions"])
    return f"{prov['source']}, {games}, {transitions} transitions"


def labels(provs: Sequence[Provenance]) -> list[str]:
    """describe() of each, with every digit where two different data would otherwise read the same
    (10,000,000 and 9,990,000 transitions are both '10.0M'): equal labels mean the same data."""
    keys_of: dict[str, set] = {}
    for prov in provs:
        keys_of.setdefault(describe(prov), set()).add(data_key(prov))
    return [describe(p, exact=len(keys_of[describe(p)]) > 1) for p in provs]
