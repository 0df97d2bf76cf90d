"""Which data an encoder was pre-trained on: the summary of manifest entries (hand-computed), the encoder's
JSON -> the record, and the leaderboard's column and its note over rows pre-trained on different data."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from atari_pb.data.manifest import ShardEntry, read_manifest, write_manifest
from atari_pb.data.provenance import count, data_provenance, describe, labels
from atari_pb.errors import DataError
from atari_pb.eval.aggregate import aggregate
from atari_pb.eval.leaderboard import csv_rows, html_page, latex_table, markdown_table, warn_mixed
from atari_pb.eval.records import ResultRecord, write_record
from atari_pb.games import get_game
from tests.conftest import run_cli

REPS = 20
RLU = {"source": "rlu", "games": 38, "transitions": 7_600_000, "shards": 380}
DQN = {"source": "dqn_replay", "games": 50, "transitions": 10_000_000, "shards": 1000}
RLU_LABEL = "rlu, 38 games, 7.6M transitions"
DQN_LABEL = "dqn_replay, 50 games, 10.0M transitions"
NOTE = (
    f"**Mixed pre-training data:** rows below were pre-trained on different data ({RLU_LABEL}; {DQN_LABEL}); "
    "compare them with care."
)


# ---------------------------------------------------------------- the summary of manifest entries
def _entry(game: str, run: int, ckpt: int, length: int, origin: str) -> ShardEntry:
    return ShardEntry(f"{game}/run{run}_ckpt{ckpt}.h5", game, run, ckpt, length, "0" * 64, 1, "src", origin)


MANIFEST = [
    _entry("pong", 1, 1, 10_000, "rlu"),
    _entry("pong", 2, 1, 10_000, "rlu"),
    _entry("breakout", 1, 1, 2_500, "rlu"),
    _entry("boxing", 1, 3, 500, "collect"),
    _entry("boxing", 1, 4, 500, ""),  # from a manifest written before shards recorded their origin
]


def test_provenance_of_a_made_up_manifest_by_hand():
    entries = {e.key: e for e in MANIFEST}
    assert data_provenance(entries, ["pong", "breakout"]) == {
        "source": "rlu",
        "games": 2,
        "transitions": 22_500,
        "shards": 3,
    }
    assert data_provenance(entries) == {
        "source": "collect+rlu+unknown",  # sorted, joined
        "games": 3,
        "transitions": 23_500,
        "shards": 5,
    }
    assert data_provenance(MANIFEST[3:4]) == {
        "source": "collect",
        "games": 1,
        "transitions": 500,
        "shards": 1,
    }
    assert describe(data_provenance(entries, ["pong", "breakout"])) == "rlu, 2 games, 22.5k transitions"
    assert describe(data_provenance(MANIFEST[3:4])) == "collect, 1 game, 500 transitions"
    assert describe(RLU) == RLU_LABEL and describe(DQN) == DQN_LABEL
    assert describe(None) == "none" and describe("unknown") == "unknown"
    assert [count(n) for n in (0, 999, 1000, 50_000, 999_949, 999_950, 7_600_000)] == [
        "0",
        "999",
        "1.0k",
        "50.0k",
        "999.9k",
        "1.0M",
        "7.6M",
    ]
    # two data the rounded label would not tell apart get every digit; the same data keeps its short label
    close = {**DQN, "transitions": 9_990_000}
    assert labels([DQN, close, DQN, None]) == [
        "dqn_replay, 50 games, 10,000,000 transitions",
        "dqn_replay, 50 games, 9,990,000 transitions",
        "dqn_replay, 50 games, 10,000,000 transitions",
        "none",
    ]
    assert labels([DQN, RLU, DQN]) == [DQN_LABEL, RLU_LABEL, DQN_LABEL]


def test_manifests_without_origin_still_load(tmp_path):
    write_manifest(tmp_path, {e.key: e for e in MANIFEST})
    doc = json.loads((tmp_path / "manifest.json").read_text())
    assert [e["origin"] for e in doc["shards"]] == ["collect", "", "rlu", "rlu", "rlu"]  # sorted by key
    for e in doc["shards"]:
        del e["origin"]
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    entries = read_manifest(tmp_path)
    assert len(entries) == 5 and {e.origin for e in entries.values()} == {""}
    assert data_provenance(entries)["source"] == "unknown"


# ---------------------------------------------------------------- the encoder's JSON -> the record
def test_finetuning_reads_the_encoders_pretrain_data(tmp_path):
    from atari_pb.finetune.run import encoder_pretrain_data
    from atari_pb.models.encoder import Encoder, ModelConfig, export_encoder

    encoder = Encoder(ModelConfig(preset="tiny"))
    new = export_encoder(encoder, tmp_path / "new.safetensors", {"objective": "curl", "pretrain_data": RLU})
    old = export_encoder(encoder, tmp_path / "old.safetensors", {"objective": "curl"})
    bad = export_encoder(encoder, tmp_path / "bad.safetensors", {"pretrain_data": {"source": "rlu"}})
    assert encoder_pretrain_data(new) == RLU
    assert encoder_pretrain_data(old) is None  # exported before encoders recorded it: unknown
    with pytest.raises(DataError, match=r"bad\.json: metadata\.pretrain_data .* is not a provenance"):
        encoder_pretrain_data(bad)


def test_released_checkpoints_were_pretrained_on_the_10m_selection():
    from atari_pb.models.official import RELEASED_PRETRAIN_DATA

    # 50 ID games x runs 1-2 x checkpoints 1-10, the first 10k transitions of each
    assert RELEASED_PRETRAIN_DATA == {
        "source": "dqn_replay",
        "games": 50,
        "transitions": 50 * 2 * 10 * 10_000,
        "shards": 50 * 2 * 10,
    }
    assert describe(RELEASED_PRETRAIN_DATA) == DQN_LABEL


# ---------------------------------------------------------------- records -> rows -> tables
def _records(method: str, prov, level: float, sha: str = "", games=("boxing", "breakout")) -> list:
    rng = np.random.default_rng(len(method))
    out = []
    for game in games:
        g = get_game(game)
        for seed in (0, 1):
            score = g.random_score + (level + rng.normal(0, 0.1)) * (g.reference_score - g.random_score)
            config = {} if prov == "absent" else {"pretrain_data": prov}
            out.append(
                ResultRecord(method, "offline_bc", "id", game, seed, float(score), 2, 5, 0, sha, config)
            )
    return out


def _board() -> list[ResultRecord]:
    """curl on RL Unplugged, spr on DQN-Replay, and the random baseline."""
    return (
        _records("curl", RLU, 0.9, "a" * 64)
        + _records("spr", DQN, 0.5, "b" * 64)
        + _records("random", None, 0.1)
    )


def test_rows_say_their_pretraining_data_and_tables_note_the_mix(caplog):
    rows = aggregate(_board(), "id", reps=REPS)
    assert {r["method"]: r["pretrain_data"] for r in rows} == {
        "curl": RLU_LABEL,
        "spr": DQN_LABEL,
        "random": "none",
    }
    text = markdown_table(rows)
    lines = text.splitlines()
    assert lines[0] == NOTE and lines[1] == ""  # right above the table
    assert lines[2].endswith("| Optimality Gap | Pre-training data |")
    assert lines[3].endswith("---:|---|")  # text, aligned left
    for line, row in zip(lines[4:], rows, strict=True):
        assert line.startswith(f"| {row['method']} | offline_bc |") and line.endswith(
            f"| {row['pretrain_data']} |"
        )
    page = html_page([{"split": "id", "dqn": rows, "human": [], "figures": {}}], REPS, 0, 12)
    assert "<strong>Mixed pre-training data:</strong> rows below were pre-trained" in page
    assert page.index("Mixed pre-training data") < page.index('<table class="board">')
    assert f"<td>{RLU_LABEL}</td>" in page and "<th>Pre-training data</th>" in page
    tex = latex_table(rows)
    assert "% Mixed pre-training data:" in tex and "& Pre-training data \\\\" in tex
    assert "dqn\\_replay, 50 games, 10.0M transitions \\\\" in tex
    assert [r["pretrain_data"] for r in csv_rows(rows, [])] == [r["pretrain_data"] for r in rows]
    with caplog.at_level(logging.WARNING, logger="atari_pb.eval.leaderboard"):
        warn_mixed(rows, "ID")
    assert len(caplog.records) == 1 and RLU_LABEL in caplog.text and DQN_LABEL in caplog.text


def test_one_source_with_baselines_is_not_mixed():
    records = _records("curl", RLU, 0.9, "a" * 64) + _records("spr", RLU, 0.5, "b" * 64)
    rows = aggregate(records + _records("random", None, 0.1), "id", reps=REPS)
    text = markdown_table(rows)
    assert "Mixed" not in text and text.count(f"| {RLU_LABEL} |") == 2 and text.count("| none |") == 1


def test_a_method_whose_records_disagree_is_an_error_naming_both():
    records = _records("curl", RLU, 0.9, "a" * 64, games=("boxing",)) + _records(
        "curl", DQN, 0.9, "c" * 64, games=("breakout",)
    )
    with pytest.raises(DataError) as err:
        aggregate(records, "id", reps=REPS)
    message = str(err.value)
    assert "\n" not in message
    assert "method curl" in message and RLU_LABEL in message and DQN_LABEL in message
    assert "curl/offline_bc/boxing/seed0.json" in message and "curl/offline_bc/breakout/seed0.json" in message


def test_records_that_do_not_say():
    # records of the same encoder file (one SHA-256) made before records said: they take what the others say
    records = _records("curl", RLU, 0.9, "a" * 64, games=("boxing",))
    records += _records("curl", "absent", 0.9, "a" * 64, games=("breakout",))
    (row,) = aggregate(records, "id", reps=REPS)
    assert row["pretrain_data"] == RLU_LABEL
    # an encoder that does not say is unknown (not a baseline), and it is not the same data as a known one
    records = _records("curl", RLU, 0.9, "a" * 64) + _records("spr", None, 0.5, "b" * 64)
    rows = aggregate(records, "id", reps=REPS)
    assert {r["method"]: r["pretrain_data"] for r in rows} == {"curl": RLU_LABEL, "spr": "unknown"}
    assert f"({RLU_LABEL}; unknown)" in markdown_table(rows)
    bad = _records("spr", {"source": "rlu", "games": "many"}, 0.5, "b" * 64)
    with pytest.raises(DataError, match=r"spr/offline_bc/boxing/seed0\.json: config\.pretrain_data"):
        aggregate(bad, "id", reps=REPS)


def test_eval_prints_the_note_and_the_column(tmp_path):
    results = tmp_path / "results"
    for record in _board():
        write_record(results, record)
    proc = run_cli("eval", "--results", results, "--split", "id", "--reps", REPS, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(NOTE + "\n\n| Method |")
    assert f"| {RLU_LABEL} |" in proc.stdout and "| none |" in proc.stdout
    assert "Mixed pre-training data" in proc.stderr  # the warning, logged
