"""Records say how they are scored (eval/scoring.py), so `eval` and `leaderboard` read them without the
protocols and torch; records made before they said so still read through the registry."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict

import pytest

from atari_pb.errors import DataError
from atari_pb.eval.records import ResultRecord, read_records, write_record
from atari_pb.finetune.base import protocol_class, protocol_scoring

PROBE = protocol_scoring(protocol_class("probe")).to_json()
BC = protocol_scoring(protocol_class("offline_bc")).to_json()


def _write(results, protocol: str, scoring: dict, seeds=(0, 1, 2), games=("boxing", "breakout")) -> None:
    for game in games:
        for seed in seeds:
            parts = {"agent": 0.5 + 0.1 * seed} if protocol == "probe" else {}
            score = 0.4 + 0.1 * seed if protocol == "probe" else 10.0 + seed
            config = {"score_parts": parts} if parts else {}
            write_record(
                results,
                ResultRecord("curl", protocol, "id", game, seed, score, config=config, scoring=scoring),
            )


def test_the_registry_declares_what_records_carry():
    assert PROBE == {
        "scale": "f1",
        "parts": list(protocol_class("probe").score_parts),
        "parts_title": "category",
    }
    assert BC == {"scale": "game", "parts": [], "parts_title": "part"}


def test_eval_and_leaderboard_read_self_describing_records_without_torch(tmp_path):
    _write(tmp_path, "probe", PROBE)
    _write(tmp_path, "offline_bc", BC)
    code = (
        "import sys\n"
        "from atari_pb.eval.records import read_records\n"
        "from atari_pb.eval.aggregate import aggregate\n"
        "from atari_pb.eval.leaderboard import markdown_table\n"
        f"rows = aggregate(read_records({str(tmp_path)!r}), 'id', reps=50)\n"
        "print(markdown_table(rows).count('curl'))\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('atari_pb.finetune')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert int(out[0]) >= 2 and out[1] == "[]", out  # both protocols' tables, and no torch, no protocol code


def test_old_records_without_scoring_still_read(tmp_path):
    _write(tmp_path, "offline_bc", {})
    doc = json.loads(next(tmp_path.rglob("seed0.json")).read_text())
    assert doc["scoring"] == {}
    assert len(read_records(tmp_path)) == 6


def test_records_that_disagree_on_their_scoring_are_an_error(tmp_path):
    from atari_pb.eval.aggregate import aggregate

    _write(tmp_path / "a", "probe", PROBE, seeds=(0,))
    _write(tmp_path / "b", "probe", {**PROBE, "scale": "accuracy"}, seeds=(1,))
    records = read_records(tmp_path / "a") + read_records(tmp_path / "b")  # each reads on its own
    with pytest.raises(DataError, match=r"curl/probe/boxing/seed1.json: scoring .* differs from other probe"):
        aggregate(records, "id", reps=10)
    bad = ResultRecord("curl", "probe", "id", "boxing", 5, 0.5, scoring={"scale": "f1"})
    write_record(tmp_path / "c", bad)
    with pytest.raises(DataError, match="scoring .* is malformed"):
        read_records(tmp_path / "c")
    assert asdict(bad)["scoring"] == {"scale": "f1"}
