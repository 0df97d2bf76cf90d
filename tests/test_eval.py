"""Scores, rliable aggregates and the eval / leaderboard command line, on results records written to disk."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from rliable import library as rly
from rliable import metrics

from atari_pb.errors import DataError, UsageError
from atari_pb.eval.aggregate import (
    aggregate,
    aggregate_metrics,
    improvement_probability,
    interval_estimates,
    performance_profiles,
    probability_of_improvement,
)
from atari_pb.eval.leaderboard import CSV_COLUMNS, markdown_table, write_leaderboard
from atari_pb.eval.records import ResultRecord, read_records, record_path, write_record
from atari_pb.eval.scores import (
    dqn_normalized,
    dqn_normalized_array,
    human_normalized,
    human_normalized_array,
    score_matrices,
    score_matrix,
)
from atari_pb.probes.annotations import CATEGORY_NAMES
from tests.conftest import one_error_line, run_cli

REPS = 200
METHODS = {"curl": 0.9, "spr": 0.5}  # fraction of the way from random to the reference, before noise
PROTOCOLS = ("offline_bc", "rainbow")
GAMES = ("boxing", "breakout", "elevator_action")  # elevator_action: reference (DQN) below random
SEEDS = (0, 1, 2)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- normalisation
def test_dqn_normalized_hand_values():
    # boxing: random 0.1, DQN 77.99 -> range 77.89
    assert dqn_normalized("boxing", 0.1) == 0.0
    assert dqn_normalized("boxing", 77.99) == pytest.approx(1.0)
    assert dqn_normalized("boxing", 39.045) == pytest.approx(0.5)
    assert dqn_normalized("boxing", 155.88) == pytest.approx(2.0)
    # elevator_action: DQN 439.77 below random 4387.0, so 0 is DQN's score and 1 random's
    assert dqn_normalized("elevator_action", 439.77) == 0.0
    assert dqn_normalized("elevator_action", 4387.0) == pytest.approx(1.0)
    assert dqn_normalized("elevator_action", 2413.385) == pytest.approx(0.5)
    # private_eye: random 24.9, DQN -16.04 -> range 40.94
    assert dqn_normalized("private_eye", 0.0) == pytest.approx(16.04 / 40.94)
    # Far-OOD klax: random 0.3734, Rainbow 2M 2124.75
    assert dqn_normalized("klax", 1062.5617) == pytest.approx(0.5)
    assert dqn_normalized("klax", 0.3734) == 0.0
    # montezuma_revenge: random = DQN = 0, an empty range: the released formula gives score / 1e-6
    assert dqn_normalized("montezuma_revenge", 0.0) == 0.0
    assert dqn_normalized("montezuma_revenge", 400.0) == pytest.approx(4e8)
    # everywhere else the released 1e-6 in the denominator is invisible at float precision of the scores
    assert dqn_normalized("boxing", 50.0) == pytest.approx((50.0 - 0.1) / (77.99 - 0.1 + 1e-6), rel=1e-12)


def test_human_normalized_hand_values():
    assert human_normalized("boxing", 12.1) == pytest.approx(1.0)  # random 0.1, human 12.1
    assert human_normalized("boxing", 6.1) == pytest.approx(0.5)
    assert human_normalized("elevator_action", 4387.0 + 0.25 * (6750.5 - 4387.0)) == pytest.approx(0.25)
    assert human_normalized("pong", -20.7) == 0.0  # Near-OOD has human scores
    assert human_normalized("klax", 100.0) is None  # Far-OOD has none
    assert np.isnan(human_normalized_array("klax", [1.0, 2.0])).all()


def test_vectorised_forms_match_the_scalar_ones():
    games = ["boxing", "elevator_action", "private_eye", "montezuma_revenge", "klax"]
    scores = np.array([[0.1, 4387.0, 0.0, 0.0, 5.0], [50.0, 1000.0, -20.0, 300.0, 3000.0]])
    dqn = dqn_normalized_array(games, scores)
    human = human_normalized_array(games, scores)
    for i in range(2):
        for j, game in enumerate(games):
            assert dqn[i, j] == pytest.approx(dqn_normalized(game, scores[i, j]))
            expected = human_normalized(game, scores[i, j])
            assert np.isnan(human[i, j]) if expected is None else human[i, j] == pytest.approx(expected)
    assert dqn_normalized_array("boxing", [0.1, 77.99]) == pytest.approx([0.0, 1.0])


# ---------------------------------------------------------------- matrices and the completeness policy
def _records(methods=METHODS, protocols=PROTOCOLS, games=GAMES, seeds=SEEDS) -> list[ResultRecord]:
    """Scores a known fraction of the way from random to the reference, plus per-run noise."""
    from atari_pb.games import get_game

    rng = np.random.default_rng(7)
    out = []
    for method, level in methods.items():
        for protocol in protocols:
            for game in games:
                g = get_game(game)
                for seed in seeds:
                    frac = level + rng.normal(0.0, 0.2)
                    score = g.random_score + frac * (g.reference_score - g.random_score)
                    out.append(ResultRecord(method, protocol, "id", game, seed, float(score), episodes=10))
    return out


def test_score_matrix_layout():
    records = _records(seeds=(2, 0, 1))
    matrix, games, seeds = score_matrix(records, "curl", "rainbow", "id")
    assert matrix.shape == (3, 3)  # (n_seeds, n_games), as rliable expects
    assert games == ["boxing", "breakout", "elevator_action"]  # game-table order
    assert seeds == [0, 1, 2]
    raw = {(r.game, r.seed): r.score for r in records if r.method == "curl" and r.protocol == "rainbow"}
    assert matrix[1, 2] == pytest.approx(dqn_normalized("elevator_action", raw[("elevator_action", 1)]))
    human, _, _ = score_matrix(records, "curl", "rainbow", "id", "human")
    assert human[0, 0] == pytest.approx(human_normalized("boxing", raw[("boxing", 0)]))


def test_missing_seed_is_an_error_naming_the_record():
    records = [r for r in _records() if not (r.method == "spr" and r.game == "breakout" and r.seed == 2)]
    with pytest.raises(DataError, match=r"spr/rainbow/breakout/seed2\.json.*same seeds"):
        score_matrix(records, "spr", "rainbow", "id")


def test_missing_game_for_one_method_is_an_error_naming_it():
    records = [r for r in _records() if not (r.method == "curl" and r.game == "boxing")]
    score_matrix(records, "curl", "offline_bc", "id")  # alone, curl is a complete 3 x 2 matrix
    with pytest.raises(DataError, match=r"curl/offline_bc/boxing/seed0\.json.*same games"):
        score_matrices(records, "id", "offline_bc")


def test_infinite_score_is_an_error_naming_the_record():
    records = _records()
    records[0].score = float("inf")
    with pytest.raises(DataError, match=r"curl/offline_bc/boxing/seed0\.json: score inf is not finite"):
        score_matrix(records, "curl", "offline_bc", "id")


def test_methods_may_have_different_numbers_of_seeds():
    records = _records(methods={"curl": 0.9}) + _records(methods={"spr": 0.5}, seeds=(0, 1))
    sm = score_matrices(records, "id", "rainbow")
    assert sm.scores["curl"].shape == (3, 3) and sm.scores["spr"].shape == (2, 3)
    rows = aggregate(records, "id", reps=REPS, protocols=["rainbow"])
    assert {(r["method"], r["n_seeds"]) for r in rows} == {("curl", 3), ("spr", 2)}


def test_bad_requests():
    records = _records()
    with pytest.raises(UsageError, match="no human scores"):
        score_matrix(records, "curl", "rainbow", "far_ood", "human")
    with pytest.raises(UsageError, match=r"no results for split near_ood; splits with results: id"):
        aggregate(records, "near_ood", reps=REPS)
    with pytest.raises(UsageError, match="valid splits: id, near_ood, far_ood"):
        aggregate(records, "ood", reps=REPS)


# ---------------------------------------------------------------- aggregates against rliable
def test_iqm_is_the_25_percent_trimmed_mean():
    x = np.array([[0.0, 10.0], [1.0, 2.0], [3.0, 4.0], [-5.0, 5.0]])  # 8 values
    hand = np.mean([1.0, 2.0, 3.0, 4.0])  # drop the 2 lowest (-5, 0) and the 2 highest (5, 10)
    assert aggregate_metrics(x)[0] == pytest.approx(hand)
    assert metrics.aggregate_iqm(x) == pytest.approx(hand)
    assert scipy.stats.trim_mean(x.ravel(), 0.25) == pytest.approx(hand)
    iqm, median, mean, gap = aggregate_metrics(x)
    assert median == pytest.approx(np.median(x.mean(axis=0)))
    assert mean == pytest.approx(x.mean())
    assert gap == pytest.approx(1.0 - np.minimum(x, 1.0).mean())


def test_interval_estimates_equal_rliable_called_directly_with_the_same_seed():
    x = np.random.default_rng(3).normal(0.5, 0.3, size=(3, 5))
    before = np.random.get_state()[1].copy()
    point, ci = interval_estimates({"m": x}, reps=REPS, seed=0)["m"]
    assert np.array_equal(np.random.get_state()[1], before)  # the global generator is left as it was
    np.random.seed(0)  # rliable resamples with the global generator
    ref_point, ref_ci = rly.get_interval_estimates(
        {"m": x}, lambda s: np.array([metrics.aggregate_iqm(s)]), reps=REPS
    )
    assert point[0] == pytest.approx(ref_point["m"][0])
    assert ci[:, 0] == pytest.approx(ref_ci["m"][:, 0])
    again = interval_estimates({"m": x}, reps=REPS, seed=0)["m"]
    assert np.array_equal(again[1], ci)  # reproducible
    other = interval_estimates({"m": x}, reps=REPS, seed=1)["m"]
    assert not np.array_equal(other[1], ci)


def test_aggregate_rows_are_rliable_on_the_score_matrix():
    records = _records()
    rows = aggregate(records, "id", reps=REPS, seed=0)
    assert [(r["protocol"], r["method"]) for r in rows] == [
        ("offline_bc", "curl"),
        ("offline_bc", "spr"),
        ("rainbow", "curl"),
        ("rainbow", "spr"),
    ]
    row = rows[0]
    matrix, games, seeds = score_matrix(records, "curl", "offline_bc", "id")
    assert (row["n_games"], row["n_seeds"]) == (3, 3)
    assert row["iqm"] == pytest.approx(metrics.aggregate_iqm(matrix))
    assert row["optimality_gap"] == pytest.approx(metrics.aggregate_optimality_gap(matrix, 1.0))
    np.random.seed(0)
    _, ci = rly.get_interval_estimates(
        {"k": matrix}, lambda s: np.array([metrics.aggregate_iqm(s)]), reps=REPS
    )
    assert (row["iqm_low"], row["iqm_high"]) == pytest.approx(tuple(ci["k"][:, 0]))
    assert row["iqm_low"] <= row["iqm"] <= row["iqm_high"]


def test_probability_of_improvement_and_profiles_equal_rliable():
    rng = np.random.default_rng(5)
    x, y = rng.integers(0, 4, size=(3, 6)).astype(float), rng.integers(0, 4, size=(4, 6)).astype(float)
    assert improvement_probability(x, y) == pytest.approx(metrics.probability_of_improvement(x, y))
    (p, low, high) = probability_of_improvement({"x": x, "y": y}, reps=REPS, seed=0)[("x", "y")]
    np.random.seed(0)
    ref_p, ref_ci = rly.get_interval_estimates({"k": [x, y]}, metrics.probability_of_improvement, reps=REPS)
    assert (p, low, high) == pytest.approx((ref_p["k"], *np.ravel(ref_ci["k"])))
    prof = performance_profiles({"x": x}, reps=REPS, seed=0)
    np.random.seed(0)
    ref_prof, ref_cis = rly.create_performance_profile({"x": x}, prof.taus, reps=REPS)
    assert prof.profiles["x"] == pytest.approx(ref_prof["x"])
    assert prof.cis["x"] == pytest.approx(ref_cis["x"])


# ---------------------------------------------------------------- the command line, end to end
@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("results")
    for record in _records():
        write_record(root, record)
    return root


@pytest.fixture(scope="module")
def board(results, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("board") / "leaderboard"
    proc = run_cli("leaderboard", results, "--out", out, "--reps", REPS, cwd=results.parent)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    return out


def test_cli_eval_prints_the_markdown_table(results):
    proc = run_cli("eval", "--results", results, "--split", "id", "--reps", REPS, cwd=results.parent)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("| Method | Protocol | Split | Games | Seeds | IQM |")
    assert lines[0].endswith("| Optimality Gap | Pre-training data |")
    assert lines[1].startswith("|---|")
    rows = aggregate(_records(), "id", reps=REPS, seed=0)
    assert len(lines) == 2 + len(rows) == 6
    for line, row in zip(lines[2:], rows, strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:5] == [row["method"], row["protocol"], "id", "3", "3"]
        assert cells[5] == f"{row['iqm']:.3f} [{row['iqm_low']:.3f}, {row['iqm_high']:.3f}]"
        assert cells[-1] == row["pretrain_data"] == "none"  # records without an encoder file
    only = run_cli(
        "eval", "--results", results, "--split", "id", "--protocol", "rainbow", "--reps", 20, cwd=results
    )
    assert only.returncode == 0 and only.stdout.count("| rainbow |") == 2 and "offline_bc" not in only.stdout


def test_cli_leaderboard_writes_every_file(board):
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.tex", "index.html", "scores.csv"):
        assert (board / name).stat().st_size > 0, name
    pngs = sorted(p.name for p in board.glob("*.png"))
    kinds = ("interval_estimates", "performance_profile", "probability_of_improvement")
    expected = [f"{kind}_id_{protocol}.png" for kind in kinds for protocol in PROTOCOLS]
    expected += [f"interval_estimates_id_{protocol}_human.png" for protocol in PROTOCOLS]
    assert pngs == sorted(expected)
    page = (board / "index.html").read_text()
    for name in pngs:
        assert (board / name).read_bytes()[:8] == PNG_MAGIC, name
        assert f'src="{name}"' in page
    assert "Human-normalised" in page and "Human-normalised" in (board / "leaderboard.md").read_text()
    tex = (board / "leaderboard.tex").read_text()
    assert "\\begin{tabular}" in tex and "offline\\_bc" in tex and tex.rstrip().endswith("\\end{tabular}")
    assert "Pre-training data \\\\" in tex and "Pre-training data</th>" in page


def test_cli_leaderboard_csv_matches_the_aggregate(board):
    with open(board / "leaderboard.csv", newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames
        lines = list(reader)
    assert (
        tuple(header[: len(CSV_COLUMNS)])
        == CSV_COLUMNS
        == (
            "method",
            "protocol",
            "split",
            "n_games",
            "n_seeds",
            "iqm",
            "iqm_low",
            "iqm_high",
            "median",
            "mean",
            "optimality_gap",
        )
    )
    keys = [(r["method"], r["protocol"], r["split"]) for r in lines]
    assert sorted(keys) == sorted((m, p, "id") for m in METHODS for p in PROTOCOLS)  # one row each
    expected = {(r["method"], r["protocol"], r["split"]): r for r in aggregate(_records(), "id", reps=REPS)}
    for line in lines:
        row = expected[(line["method"], line["protocol"], line["split"])]
        for col in ("iqm", "iqm_low", "iqm_high", "median", "mean", "optimality_gap"):
            assert float(line[col]) == pytest.approx(row[col], rel=1e-12), col
        assert (int(line["n_games"]), int(line["n_seeds"])) == (3, 3)
        assert line["human_iqm"] != ""
        assert line["pretrain_data"] == "none"
    assert header[-1] == "pretrain_data"  # after every column files had before it


def test_cli_missing_results_directory(tmp_path):
    missing = tmp_path / "nope"
    for args in (
        ["eval", "--results", missing, "--split", "id"],
        ["leaderboard", missing, "--out", tmp_path / "o"],
    ):
        line = one_error_line(run_cli(*args, cwd=tmp_path), 2)
        assert f"results directory {missing} does not exist" in line
    assert not (tmp_path / "o").exists()


def test_cli_malformed_record(results, tmp_path):
    bad = tmp_path / "results"
    shutil.copytree(results, bad)
    target = bad / "spr" / "rainbow" / "breakout" / "seed1.json"
    target.write_text('{"method": "spr", "protocol": "rainbow"')  # truncated
    line = one_error_line(run_cli("eval", "--results", bad, "--split", "id", cwd=tmp_path), 1)
    assert str(target) in line
    line = one_error_line(run_cli("leaderboard", bad, "--out", tmp_path / "o", cwd=tmp_path), 1)
    assert str(target) in line


def test_cli_incomplete_results(results, tmp_path):
    bad = tmp_path / "results"
    shutil.copytree(results, bad)
    (bad / "curl" / "offline_bc" / "boxing" / "seed2.json").unlink()
    line = one_error_line(run_cli("eval", "--results", bad, "--split", "id", cwd=tmp_path), 1)
    assert "curl/offline_bc/boxing/seed2.json" in line


def test_cli_split_without_results_and_unknown_split(results):
    line = one_error_line(run_cli("eval", "--results", results, "--split", "far_ood", cwd=results), 2)
    assert "no results for split far_ood" in line and "splits with results: id" in line
    line = one_error_line(run_cli("eval", "--results", results, "--split", "ood", cwd=results), 2)
    assert "unknown split 'ood'" in line and "id, near_ood, far_ood" in line
    line = one_error_line(
        run_cli("eval", "--results", results, "--split", "id", "--protocol", "ppo", cwd=results), 2
    )
    assert "offline_bc, probe, rainbow" in line


def test_cli_empty_results_directory(tmp_path):
    line = one_error_line(run_cli("eval", "--results", tmp_path, "--split", "id", cwd=tmp_path), 2)
    assert "no results records" in line


@pytest.mark.parametrize(
    "change,words",
    [
        ({"score": float("inf")}, "not a finite number"),
        ({"score": "12"}, "not a finite number"),
        ({"seed": "abc"}, "not an integer"),
        ({"game": "Pong"}, "must be written 'pong'"),
        ({"split": "id"}, "belongs to split near_ood"),
        ({"protocol": "ppo"}, "valid: offline_bc, probe, rainbow"),
    ],
)
def test_records_refuse_what_would_corrupt_a_table(tmp_path, change, words):
    doc = {**asdict(ResultRecord("curl", "rainbow", "near_ood", "pong", 0, 3.0)), **change}
    path = record_path(tmp_path, "curl", doc["protocol"], doc["game"], 0)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=words):
        read_records(tmp_path)


# ---------------------------------------------------------------- protocols on a scale of their own (probe)
PROBE_PARTS = {  # game -> category -> F1 of seed 0 (seed s: minus 0.01 s); boxing has no small objects
    "boxing": {"agent_localization": 0.2, "other_localization": 0.4, "score_clock_lives_display": 0.9},
    "breakout": {"agent_localization": 0.5, "small_object_localization": 0.3, "misc": 0.6},
}


def _probe_records(methods=("curl", "spr")) -> list[ResultRecord]:
    out = []
    for i, method in enumerate(methods):
        for game, parts in PROBE_PARTS.items():
            for seed in SEEDS:
                shifted = {k: v + 0.1 * i - 0.01 * seed for k, v in parts.items()}
                score = float(np.mean(list(shifted.values())))
                config = {"score_parts": shifted}
                out.append(ResultRecord(method, "probe", "id", game, seed, score, config=config))
    return out


def test_probe_scores_are_aggregated_raw_with_their_category_means():
    records = _records(protocols=("rainbow",)) + _probe_records()
    raw = {(r.game, r.seed): r.score for r in records if r.method == "spr" and r.protocol == "probe"}
    for normalization in ("dqn", "human"):  # F1 is never game-normalised
        matrix, games, seeds = score_matrix(records, "spr", "probe", "id", normalization)
        assert games == ["boxing", "breakout"] and seeds == [0, 1, 2]
        assert matrix[2, 1] == raw[("breakout", 2)]
    rows = aggregate(records, "id", reps=REPS)
    probe = [r for r in rows if r["protocol"] == "probe"]
    assert [r["method"] for r in probe] == ["spr", "curl"]  # by IQM
    assert all(r["normalization"] == "dqn" and "parts" not in r for r in rows if r["protocol"] == "rainbow")
    spr = probe[0]
    assert spr["normalization"] == "f1" and spr["mean"] == pytest.approx(np.mean(list(raw.values())))
    # per category: per game the mean over seeds (0.1 - 0.01 on average), then over the games that have it
    assert spr["parts"] == pytest.approx(
        {
            "agent_localization": (0.2 + 0.5) / 2 + 0.09,
            "small_object_localization": 0.3 + 0.09,
            "other_localization": 0.4 + 0.09,
            "score_clock_lives_display": 0.9 + 0.09,
            "misc": 0.6 + 0.09,
        }
    )
    assert list(spr["parts"]) == list(CATEGORY_NAMES)  # the protocol's declared order
    text = markdown_table(rows)
    tables = text.split("\n\n")
    assert (
        tables[0].startswith("| Method | Protocol |")
        and "| rainbow |" in tables[0]
        and "probe" not in tables[0]
    )
    assert "F1 (raw, not normalised):" in text and "probe: mean F1 per category:" in text
    assert text.count("| spr | probe | id | 2 | 3 |") == 2  # the aggregate and the category rows


def test_probe_record_without_its_parts_is_an_error_naming_it():
    records = _probe_records()
    records[4].config = {}
    with pytest.raises(DataError, match=r"curl/probe/breakout/seed1\.json: no config\.score_parts"):
        aggregate(records, "id", reps=REPS)


def test_leaderboard_puts_probe_rows_in_tables_of_their_own(tmp_path):
    records = _records(protocols=("offline_bc",), methods={"curl": 0.9}) + _probe_records(("curl",))
    written = {p.name for p in write_leaderboard(records, tmp_path, reps=20)}
    assert {"leaderboard_f1.csv", "leaderboard_f1.tex", "parts_probe.csv"} <= written
    with open(tmp_path / "leaderboard.csv", newline="") as f:
        assert [r["protocol"] for r in csv.DictReader(f)] == ["offline_bc"]  # normalised rows only
    with open(tmp_path / "leaderboard_f1.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["protocol"] == "probe" and float(row["mean"]) == pytest.approx(
        np.mean([r.score for r in records if r.protocol == "probe"])
    )
    with open(tmp_path / "scores.csv", newline="") as f:
        scores = list(csv.DictReader(f))
    assert all((r["dqn_normalized"] == "") == (r["protocol"] == "probe") for r in scores)
    page = (tmp_path / "index.html").read_text()
    assert "DQN-normalised" in page and "F1 (raw, not normalised)" in page and "per category" in page
    assert (
        "interval_estimates_id_probe.png" in written
        and "interval_estimates_id_probe_human.png" not in written
    )
