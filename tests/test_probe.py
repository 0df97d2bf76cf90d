"""The `probe` protocol (AtariARI linear probes): its metric and headline against hand computations, its
batched optimiser and schedules against torch's per-variable ones, the trainer on an oracle and on shuffled
labels of real probe data, the annotation tables, the protocol through the command line (records, eval,
leaderboard), the bad requests (a test split too small among them) and `make probe-data && make probe`."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from atari_pb.cli import main
from atari_pb.eval.records import read_records
from atari_pb.finetune.base import load_protocol_config
from atari_pb.finetune.probe import (
    Classes,
    ColumnAdam,
    ProbeDataConfig,
    ProbeFeaturesConfig,
    ProbeInputs,
    ProbeSchedule,
    ProbeSplit,
    ProbeTrainConfig,
    fit_probes,
    label_entropy,
    load_inputs,
    predict_values,
    probe_gradients,
    site_pool,
    standardiser,
    summarize,
    weighted_f1,
)
from atari_pb.models.encoder import Encoder, ModelConfig, export_encoder
from atari_pb.probes.annotations import (
    CATEGORIES,
    CATEGORY_NAMES,
    annotations,
    categories,
    ram_indices,
    variables,
)
from atari_pb.probes.data import ProbeData, ProbeDatasetConfig, collect_probes
from tests.conftest import run_cli

GAMES = ("boxing", "pong")  # an ID and a Near-OOD game, both annotated
# the fixture's test splits hold 1-2 episodes: too few for the protocol's refusal, which a smoke test turns off
SMOKE = "data.min_test_episodes=0"
QUICK = ["train.epochs=4", "train.patience=2", "features.batch_size=128", SMOKE]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory) -> Path:
    """Real probe data (atari-pb collect-probes' writer): 8 episodes of 150 frame stacks per game."""
    dst = tmp_path_factory.mktemp("probe_data") / "probes"
    collect_probes(dst, ProbeDatasetConfig(games=list(GAMES), frames_per_game=1200, num_envs=8))
    return dst


# ------------------------------------------------------------------------------------------- metrics
def f1_by_definition(y_true, y_pred) -> float:
    """scikit-learn's weighted F1 written out from its definition: per class precision and recall (0 when
    undefined), F1 = 2PR / (P + R) (0 when both are 0), averaged with weights = true count."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    total = 0.0
    for c in np.unique(y_true):
        tp = np.sum((y_pred == c) & (y_true == c))
        precision = tp / np.sum(y_pred == c) if np.sum(y_pred == c) else 0.0
        recall = tp / np.sum(y_true == c)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        total += f1 * np.sum(y_true == c)
    return total / len(y_true)


def test_weighted_f1_by_hand():
    # class 0: TP 2 of 3 true, 2 predicted -> F1 0.8; class 1: TP 1 of 2, 2 predicted -> 0.5;
    # class 2: TP 1 of 1, 2 predicted -> 2/3; weighted by 3, 2, 1 true labels
    assert weighted_f1([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2]) == pytest.approx(
        (0.8 * 3 + 0.5 * 2 + 2 / 3) / 6
    )
    assert weighted_f1([1, 1], [1, 3]) == pytest.approx(2 / 3)  # a class only predicted weighs nothing
    assert weighted_f1([5, 5, 7], [5, 5, 7]) == 1.0
    assert weighted_f1([5, 5, 7], [7, 7, 5]) == 0.0
    assert weighted_f1([4, 4, 4, 9], [4, 4, 4, 4]) == pytest.approx(0.75 * (2 * 0.75 / 1.75))  # majority
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 6, 50)
        p = np.where(rng.random(50) < 0.5, y, rng.integers(0, 8, 50))
        assert weighted_f1(y, p) == pytest.approx(f1_by_definition(y, p), abs=1e-12)
    with pytest.raises(ValueError):
        weighted_f1([1, 2], [1])


def test_label_entropy_is_scipys_in_nats():
    labels = np.array([[0, 3, 7], [0, 3, 8], [0, 4, 9], [0, 4, 9]], np.uint8)
    expected = [scipy.stats.entropy(np.unique(labels[:, v], return_counts=True)[1]) for v in range(3)]
    assert label_entropy(labels) == pytest.approx(expected)
    assert label_entropy(labels)[1] == pytest.approx(np.log(2))


def test_headline_is_the_mean_of_the_category_means_by_hand():
    """A made-up breakout record: 35 variables in 4 categories of 1, 2, 1 and 31 variables. Each probe is
    right on every test frame (F1 1) or wrong on every one (F1 0), or half right (ball_y)."""
    names = variables("breakout")
    assert [
        categories("breakout")[v] for v in ("player_x", "ball_x", "ball_y", "score", "blocks_hit_count")
    ] == [
        "agent_localization",
        "small_object_localization",
        "small_object_localization",
        "score_clock_lives_display",
        "misc",
    ]
    test = np.tile(np.arange(4, dtype=np.uint8)[:, None], (1, len(names)))  # 4 frames, values 0..3
    predictions = (test + 1) % 4  # wrong everywhere ...
    right = ["player_x", "ball_x", "block_bit_map_0", "block_bit_map_1", "block_bit_map_2"]
    for v in right:  # ... but for these
        predictions[:, names.index(v)] = test[:, names.index(v)]
    half = names.index("ball_y")  # right on the frames of values 0 and 1: weighted F1 by hand below
    predictions[:, half] = [0, 1, 0, 0]
    split = ProbeSplit(None, test, np.zeros(4, np.int64))
    inputs = ProbeInputs(
        {"train": split, "val": split, "test": split}, names, {}, 0, 0, categories("breakout")
    )
    extra = {"epochs": np.ones(len(names)), "val_accuracy": np.ones(len(names)), "feature_dim": 8}
    summary = summarize("breakout", inputs, predictions, extra)
    # ball_y: class 0 TP 1, FP 2 (frames 2, 3 predicted 0), FN 0 -> 2/4; class 1 F1 1; classes 2, 3 F1 0;
    # each weighs 1 of 4 frames
    ball_y = (0.5 + 1.0) / 4
    agent, small, score, misc = 1.0, (1.0 + ball_y) / 2, 0.0, 3 / 31
    assert summary["category_f1"] == pytest.approx(
        {
            "agent_localization": agent,
            "small_object_localization": small,
            "score_clock_lives_display": score,
            "misc": misc,
        }
    )
    assert summary["across_categories_f1"] == pytest.approx((agent + small + score + misc) / 4)
    assert summary["mean_f1"] == pytest.approx((5 + ball_y) / 35)  # kept beside it, and not the same
    assert abs(summary["across_categories_f1"] - summary["mean_f1"]) > 0.2


# ------------------------------------------------------------------------------------------- the batched probes
def test_one_batched_step_is_each_variables_own_torch_adam():
    """The flat (D, K) probe with per-column learning rates moves each variable's columns exactly as a
    separate nn.Linear over its classes under its own torch.optim.Adam would (a rate of 0: left alone)."""
    torch.manual_seed(0)
    values = [np.array([0, 3, 7]), np.array([1, 2]), np.array([5, 6, 9, 200])]
    classes = Classes(values, torch.device("cpu"))
    d, lrs = 5, [1e-2, 3e-3, 0.0]
    weight, bias = torch.randn(d, classes.size), torch.randn(classes.size)
    refs = [
        [
            weight[:, classes.owner == v].clone().requires_grad_(),
            bias[classes.owner == v].clone().requires_grad_(),
        ]
        for v in range(3)
    ]
    optims = [torch.optim.Adam(p, lr=lr, eps=1e-5) for p, lr in zip(refs, lrs)]
    adam = ColumnAdam([weight, bias], [0.9, 0.999], 1e-5)
    column_lr = torch.tensor(lrs)[classes.owner]
    for _ in range(3):
        x = torch.randn(8, d)
        labels = np.stack([rng_choice(v, 8) for v in values], 1).astype(np.uint8)
        targets = classes.targets(labels)
        adam.step(probe_gradients(x, targets, weight, bias, classes), column_lr)
        for v, ((w, b), opt) in enumerate(zip(refs, optims)):
            opt.zero_grad()
            F.cross_entropy(x @ w + b, targets[:, v]).backward()
            opt.step()
    for v, (w, b) in enumerate(refs):
        assert torch.allclose(weight[:, classes.owner == v], w, atol=1e-6), v
        assert torch.allclose(bias[classes.owner == v], b, atol=1e-6), v
    # byte values round-trip through the class layout; a value that is no class maps to -1
    assert classes.targets(np.array([[7, 2, 200], [0, 1, 5]], np.uint8)).tolist() == [[2, 1, 3], [0, 0, 0]]
    assert classes.targets(np.array([[8, 2, 5]], np.uint8)).tolist() == [[-1, 1, 0]]
    assert classes.decode(torch.tensor([[2, 1, 3]])).tolist() == [[7, 2, 200]]


RNG = np.random.default_rng(1)


def rng_choice(values, n):
    return RNG.choice(values, n)


def atariari_reference(accuracies: np.ndarray, cfg: ProbeTrainConfig):
    """AtariARI's loop, one variable at a time: its EarlyStopping (utils.py) and torch's ReduceLROnPlateau,
    the scheduler stepped only while the variable has not stopped. Returns (lrs, stopped) per epoch."""
    n = accuracies.shape[1]
    optims = [torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr) for _ in range(n)]
    scheds = [
        torch.optim.lr_scheduler.ReduceLROnPlateau(
            o, mode="max", patience=cfg.plateau_patience, factor=cfg.plateau_factor, min_lr=cfg.min_lr
        )
        for o in optims
    ]
    best, counter, stop = [None] * n, [0] * n, [False] * n
    history = []
    for acc in accuracies:
        for v in range(n):
            if stop[v]:
                continue
            if best[v] is None:
                best[v] = acc[v]
            elif acc[v] <= best[v]:
                counter[v] += 1
                stop[v] = counter[v] >= cfg.patience
            else:
                best[v], counter[v] = acc[v], 0
        for v in range(n):
            if not stop[v]:
                scheds[v].step(acc[v])
        history.append(([o.param_groups[0]["lr"] for o in optims], list(stop)))
    return history


def test_schedule_is_atariari_early_stopping_and_torch_plateau():
    cfg = ProbeTrainConfig()
    rng = np.random.default_rng(3)
    # slowly rising accuracies with long flat stretches and ties, so both rules fire
    acc = np.minimum(np.cumsum(rng.integers(0, 2, (80, 6)) * (rng.random((80, 6)) < 0.2), 0) / 20, 1.0)
    acc[:, 5] = 0.5  # flat from the start: stops after `patience` epochs
    schedule = ProbeSchedule(6, cfg)
    for a, (lrs, stopped) in zip(acc, atariari_reference(acc, cfg)):
        schedule.update(a)
        assert schedule.stopped.tolist() == stopped
        live = ~schedule.stopped
        assert schedule.lr[live] == pytest.approx(np.array(lrs)[live])
    assert schedule.stopped[5] and schedule.epochs[5] == cfg.patience + 1
    assert (schedule.lr < cfg.lr).any()  # the plateau rule fired somewhere


# ------------------------------------------------------------------------------------------- the trainer
def _split_arrays(probe_dir: Path, game: str):
    data = ProbeData(probe_dir, game)
    return {s: (data.labels(s), data.episodes(s)) for s in ("train", "val", "test")}, data.variables


def _oracle_features(labels: np.ndarray, values: list[np.ndarray], noise: float, rng) -> torch.Tensor:
    """One-hot of every variable's byte over the values it takes, plus Gaussian noise: linearly decodable."""
    columns = [(labels[:, [v]] == vals[None, :]).astype(np.float32) for v, vals in enumerate(values)]
    onehot = np.concatenate(columns, 1)
    return torch.from_numpy(onehot + rng.normal(0, noise, onehot.shape).astype(np.float32))


def _fit_and_score(splits, features, cfg, seed=0) -> np.ndarray:
    (ty, te), (vy, _), (sy, _) = splits["train"], splits["val"], splits["test"]
    mean, std = standardiser(features["train"])
    x = {k: (f - mean) / std for k, f in features.items()}
    classes = Classes.from_labels(ty, cfg.classes, torch.device("cpu"))
    fit = fit_probes(x["train"], ty, x["val"], vy, classes, cfg, seed, te)
    predictions = predict_values(x["test"], fit.weight, fit.bias, classes)
    return np.array([weighted_f1(sy[:, v], predictions[:, v]) for v in range(sy.shape[1])])


def test_oracle_features_decode_and_shuffled_labels_fall_to_chance(probe_dir):
    """The trainer on the labels of a collected game: features that hold every byte (one-hot + noise) give
    F1 near its ceiling (a test value never seen in training cannot be learnt); the same features with
    unrelated labels give chance: about the majority-class F1, computed here independently.

    Each variable's values are drawn from its split's real labels independently of the other variables
    (5,000 / 1,000 / 1,000 rows): the real values and their frequencies, without the joint pattern that
    in a few hundred real frames lets the other variables' columns identify each frame, through which a
    linear probe fits a small train split without using the variable's own column (AtariARI's splits hold
    tens of thousands of frames)."""
    torch.set_num_threads(1)
    real, variables = _split_arrays(probe_dir, "boxing")
    rng = np.random.default_rng(0)
    sizes = {"train": 5000, "val": 1000, "test": 1000}

    def draw(y, n):  # each variable on its own, from the split's real labels
        return np.stack([y[rng.integers(0, len(y), n), v] for v in range(y.shape[1])], 1)

    splits = {s: (draw(y, sizes[s]), np.arange(sizes[s]) // 150) for s, (y, _) in real.items()}
    every = np.concatenate([y for y, _ in splits.values()])
    values = [np.unique(every[:, v]) for v in range(every.shape[1])]
    cfg = ProbeTrainConfig(epochs=30, patience=5, lr=5e-4)  # ProbeTrainer's own lr: 30 epochs suffice
    features = {s: _oracle_features(y, values, 0.1, rng) for s, (y, _) in splits.items()}
    f1 = _fit_and_score(splits, features, cfg)
    train_y, test_y = splits["train"][0], splits["test"][0]
    ceiling = np.array(  # right wherever the test value was seen in training
        [
            f1_by_definition(test_y[:, v], np.where(np.isin(test_y[:, v], train_y[:, v]), test_y[:, v], 256))
            for v in range(len(variables))
        ]
    )
    assert f1.mean() > 0.95 * ceiling.mean() and ceiling.mean() > 0.9, (f1, ceiling)
    assert (f1 >= 0.75 * ceiling).all(), dict(zip(variables, f1))

    unrelated = {
        s: (draw(real[s][0], sizes[s]), e) for s, (_, e) in splits.items()
    }  # new labels, same features
    chance = _fit_and_score(unrelated, features, cfg)
    train_u, test_u = unrelated["train"][0], unrelated["test"][0]
    majority = np.array(
        [
            f1_by_definition(test_u[:, v], np.full(len(test_u), np.bincount(train_u[:, v]).argmax()))
            for v in range(len(variables))
        ]
    )
    assert abs(chance.mean() - majority.mean()) < 0.08, (chance, majority)
    assert chance.mean() < 0.5 * f1.mean()


# ------------------------------------------------------------------------------------------- the command line
@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("encoder") / "curl" / "encoder.safetensors"
    return export_encoder(Encoder(ModelConfig(preset="tiny")), path, {"objective": "curl"})


@pytest.fixture(scope="module")
def sweep(probe_dir, encoder_file, tmp_path_factory) -> Path:
    """An exported encoder and the random and pixels baselines probed on an ID and a Near-OOD game, 2 seeds."""
    results = tmp_path_factory.mktemp("sweep") / "results"
    args = [
        "finetune",
        "--protocol",
        "probe",
        "--encoder",
        encoder_file,
        "random",
        "pixels",
        "--preset",
        "tiny",
    ]
    args += ["--split", "id", "near_ood", "--games", *GAMES, "--seeds", "0", "1", "--data", probe_dir]
    proc = run_cli(*args, "--results", results, *QUICK, cwd=results.parent)
    assert proc.returncode == 0, proc.stderr
    return results


def test_sweep_writes_probe_records(sweep, probe_dir):
    records = read_records(sweep)  # they round-trip through eval's reader
    assert sorted((r.method, r.split, r.game, r.seed) for r in records) == sorted(
        (m, "id" if g == "boxing" else "near_ood", g, s)
        for m in ("curl", "random", "pixels")
        for g in GAMES
        for s in (0, 1)
    )
    for r in records:
        c = r.config
        assert r.protocol == "probe" and r.episodes == 0 and r.env_steps == 0 and r.episode_scores == []
        assert r.gradient_steps > 0 and "eval" not in c and c["protocol"]["train"]["epochs"] == 4
        variables = ProbeData(probe_dir, r.game).variables
        probed = [v for v in variables if v not in c["dropped_variables"]]
        assert list(c["variables"]) == probed
        assert c["mean_f1"] == pytest.approx(np.mean([c["variables"][v]["f1"] for v in probed]))
        for category, value in c["category_f1"].items():
            members = [c["variables"][v]["f1"] for v in probed if CATEGORIES[r.game][v] == category]
            assert value == pytest.approx(np.mean(members))
        assert c["score_parts"] == c["category_f1"] and list(c["score_parts"]) == [
            n for n in CATEGORY_NAMES if n in c["category_f1"]
        ]
        # the score: the mean of the category means, AtariARI's headline
        assert r.score == c["across_categories_f1"] and 0.0 <= r.score <= 1.0
        assert r.score == pytest.approx(np.mean(list(c["category_f1"].values())))
        assert {"f1", "accuracy", "majority_f1", "category", "epochs"} <= c["variables"][probed[0]].keys()
        assert c["feature_dim"] == {"pixels": 441}.get(r.method, 64 * 36)  # tiny: 64 channels, the 6x6 map
        assert c["pool"] == {"pixels": None}.get(r.method, 6)
    first = {p: p.read_bytes() for p in sweep.rglob("seed*.json")}
    args = ["finetune", "--protocol", "probe", "--encoder", "random", "--preset", "tiny", "--split", "id"]
    proc = run_cli(
        *args,
        "--games",
        "boxing",
        "--seeds",
        "0",
        "1",
        "--data",
        probe_dir,
        "--results",
        sweep,
        SMOKE,
        cwd=sweep,
    )
    assert proc.returncode == 0 and "2 already finished" in proc.stderr
    assert {p: p.read_bytes() for p in sweep.rglob("seed*.json")} == first


def test_eval_prints_raw_f1_rows_and_the_category_table(sweep):
    proc = run_cli(
        "eval", "--results", sweep, "--split", "id", "--protocol", "probe", "--reps", 50, cwd=sweep
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("F1 (raw, not normalised):") and "probe: mean F1 per category:" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "| probe |" in line]
    assert len(rows) == 6  # 3 methods in the aggregate table, 3 in the category table
    records = [r for r in read_records(sweep) if r.split == "id"]
    for line in rows[:3]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        scores = [r.score for r in records if r.method == cells[0]]
        assert cells[3:5] == ["1", "2"]  # one game, two seeds
        assert cells[7].startswith(f"{np.mean(scores):.3f} [")  # the mean: raw F1, not normalised
    headers = [line for line in out.splitlines() if line.startswith("| Method")]
    assert len(headers) == 2 and headers[1].endswith(
        "| Mean | agent_localization | other_localization | score_clock_lives_display |"
    )
    near = run_cli("eval", "--results", sweep, "--split", "near_ood", "--reps", 20, cwd=sweep)
    assert near.returncode == 0 and near.stdout.count("| probe |") == 6


def test_leaderboard_has_the_f1_and_category_tables(sweep, tmp_path):
    out = tmp_path / "board"
    proc = run_cli("leaderboard", sweep, "--out", out, "--reps", 50, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with open(out / "parts_probe.csv", newline="") as f:
        parts = list(csv.DictReader(f))
    records = read_records(sweep)
    assert sorted((r["method"], r["split"]) for r in parts) == sorted(
        (m, s) for m in ("curl", "random", "pixels") for s in ("id", "near_ood")
    )
    for row in parts:
        mine = [r for r in records if r.method == row["method"] and r.split == row["split"]]
        for name in CATEGORY_NAMES:
            values = [r.config["score_parts"][name] for r in mine if name in r.config["score_parts"]]
            assert (row.get(name, "") == "") == (not values)  # a category no game has: no column
            if values:  # one game per split here: the mean over its seeds
                assert float(row[name]) == pytest.approx(np.mean(values))
    with open(out / "leaderboard_f1.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 6
    with open(out / "scores.csv", newline="") as f:
        assert all(r["dqn_normalized"] == "" for r in csv.DictReader(f))  # F1 is not a game score
    md, page = (out / "leaderboard.md").read_text(), (out / "index.html").read_text()
    for text in (md, page):
        assert "F1 (raw, not normalised)" in text and "probe: mean F1 per category" in text
        assert "agent_localization" in text
    assert (out / "interval_estimates_id_probe.png").exists()
    assert not (out / "interval_estimates_id_probe_human.png").exists()


# ------------------------------------------------------------------------------------------- bad requests
def _cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def three_frames(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("three") / "encoder.safetensors"
    return export_encoder(Encoder(ModelConfig(preset="tiny", frames=3)), path)


@pytest.mark.parametrize(
    "extra, code, words",
    [
        (
            ["--split", "id", "--games", "skiing"],
            2,
            ["'skiing' has no AtariARI RAM annotations", "boxing", "pong"],
        ),
        (["--split", "far_ood"], 2, ["far_ood has no game with AtariARI RAM annotations"]),
        (["--split", "id", "--games", "freeway"], 2, ["no probe data for freeway", "boxing, pong"]),
        (["--split", "id", "--games", "boxing", "--encoder", "THREE"], 2, ["3-frame", "holds 4-frame"]),
        (["--split", "id", "--games", "boxing", "train.classes=some"], 2, ["train.classes"]),
        (["--split", "id", "--games", "boxing", "CORRUPT"], 1, ["boxing.h5", "SHA-256"]),
        (["--split", "id", "--games", "boxing", "--data", "NOPE"], 2, ["NOPE", "does not exist"]),
    ],
)
def test_bad_probe_requests(probe_dir, three_frames, extra, code, words, tmp_path, capsys):
    data = probe_dir
    if "CORRUPT" in extra:  # a copy whose boxing file no longer matches the manifest's SHA-256
        data = tmp_path / "corrupt"
        shutil.copytree(probe_dir, data)
        blob = bytearray((data / "boxing.h5").read_bytes())
        blob[-100] ^= 0xFF
        (data / "boxing.h5").write_bytes(bytes(blob))
        extra = [e for e in extra if e != "CORRUPT"]
    extra = [
        str(three_frames) if e == "THREE" else str(tmp_path / "nope") if e == "NOPE" else e for e in extra
    ]
    args = [
        "finetune",
        "--protocol",
        "probe",
        "--preset",
        "tiny",
        "--data",
        data,
        "--results",
        tmp_path / "results",
    ]
    if "--encoder" not in extra:
        args += ["--encoder", "random"]
    status, err = _cli(capsys, *args, *extra, SMOKE)
    lines = err.strip().splitlines()
    assert status == code and len(lines) == 1 and lines[0].startswith("atari-pb: error: "), err
    assert all(w.replace("NOPE", str(tmp_path / "nope")) in lines[0] for w in words), lines[0]
    assert not (tmp_path / "results").exists()


def test_a_baseline_of_another_protocol_is_refused(tmp_path, capsys):
    args = [
        "finetune",
        "--protocol",
        "offline_bc",
        "--encoder",
        "pixels",
        "--split",
        "id",
        "--games",
        "breakout",
    ]
    status, err = _cli(capsys, *args, "--data", tmp_path, "--results", tmp_path / "results")
    line = err.strip()
    assert status == 2 and line.count("\n") == 0 and line.startswith("atari-pb: error: ")
    assert "--encoder pixels" in line and "probe protocol" in line and "random, e2e" in line
    assert not (tmp_path / "results").exists()


def test_nothing_is_overwritten_by_a_refused_request(sweep, probe_dir, three_frames, capsys):
    before = {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()}
    args = ["finetune", "--protocol", "probe", "--split", "id", "--games", "boxing", "--data", probe_dir]
    status, _ = _cli(capsys, *args, "--encoder", three_frames, "--results", sweep, SMOKE)
    assert status == 2
    assert {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()} == before


def test_yaml_is_the_dataclass_and_checks_refuse_bad_values():
    cfg = load_protocol_config("probe")
    assert (cfg.train.lr, cfg.train.eps, cfg.train.batch_size, cfg.train.epochs, cfg.train.patience) == (
        3e-4,
        1e-5,
        64,
        100,
        15,
    )
    assert (cfg.train.plateau_patience, cfg.train.plateau_factor, cfg.train.min_lr) == (5, 0.2, 1e-5)
    assert (cfg.data.min_episode_length, cfg.data.entropy_threshold, cfg.features.pool) == (64, 0.6, 6)
    # tiny's 64 channels at 6x6 (2,304); 512 channels at 3x3 (4,608); resnet50's 2,048 at 2x2 (8,192)
    assert [site_pool(cfg.features, c) for c in (64, 512, 2048)] == [6, 3, 2]
    assert site_pool(ProbeFeaturesConfig(pool=6, max_features=2048 * 9), 2048) == 3
    assert site_pool(ProbeFeaturesConfig(pool=6, max_features=0), 2048) == 6
    assert (cfg.data.annotations, cfg.data.min_test_episodes, cfg.features.standardise) == ("head", 10, True)
    from atari_pb.errors import UsageError

    for bad, key in [
        ("features.pool=7", "features.pool"),
        ("features.pixels_pool=5", "pixels_pool"),
        ("train.sampling=random", "train.sampling"),
        ("train.plateau_factor=1.5", "plateau_factor"),
        ("data.annotations=arxiv", "data.annotations"),
        ("data.min_test_episodes=-1", "min_test_episodes"),
    ]:
        with pytest.raises(UsageError, match=key):
            load_protocol_config("probe", [bad])


def reference_fit(x, y, xv, yv, classes: Classes, cfg: ProbeTrainConfig, seed: int, episodes):
    """AtariARI's ProbeTrainer loop written plainly: a probe (weights, bias) per variable with its own
    torch.optim.Adam and ReduceLROnPlateau, its EarlyStopping, its best weights kept; the same batches."""
    from atari_pb.finetune.probe import EpisodeSampler, init_linear

    weight, bias = init_linear(x.shape[1], classes.size, torch.Generator().manual_seed(seed))
    n = classes.num_vars
    params = [
        [
            weight[:, classes.owner == v].clone().requires_grad_(),
            bias[classes.owner == v].clone().requires_grad_(),
        ]
        for v in range(n)
    ]
    optims = [torch.optim.Adam(p, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps) for p in params]
    scheds = [
        torch.optim.lr_scheduler.ReduceLROnPlateau(
            o, mode="max", factor=cfg.plateau_factor, patience=cfg.plateau_patience, min_lr=cfg.min_lr
        )
        for o in optims
    ]
    targets, val_targets = classes.targets(y), classes.targets(yv)
    sampler, rng = EpisodeSampler(episodes, cfg.batch_size, cfg.sampling), np.random.default_rng([seed, 1])
    best, counter, stop = [None] * n, [0] * n, [False] * n
    kept = [[p.detach().clone() for p in ps] for ps in params]
    epochs = [0] * n
    for _ in range(cfg.epochs):
        if all(stop):
            break
        for idx in torch.from_numpy(sampler.epoch(rng)):
            for v in range(n):
                if not stop[v]:
                    optims[v].zero_grad()
                    w, b = params[v]
                    F.cross_entropy(x[idx] @ w + b, targets[idx, v]).backward()
                    optims[v].step()
        accuracy = {}
        for v in range(n):
            if stop[v]:
                continue
            epochs[v] += 1
            with torch.no_grad():
                w, b = params[v]
                accuracy[v] = ((xv @ w + b).argmax(1) == val_targets[:, v]).double().mean().item()
            if best[v] is None or accuracy[v] > best[v]:
                best[v], counter[v] = accuracy[v], 0
                kept[v] = [p.detach().clone() for p in params[v]]
            else:
                counter[v] += 1
                stop[v] = counter[v] >= cfg.patience
        for v, acc in accuracy.items():
            if not stop[v]:
                scheds[v].step(acc)
    return kept, epochs


def test_fit_probes_is_atariari_per_variable_training():
    """fit_probes (every variable in one batched model, stopped ones packed away) against the plain
    per-variable loop: the same best weights and the same epochs per variable."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(4)
    n, d = 400, 6
    x = torch.from_numpy(rng.normal(size=(n + 200, d)).astype(np.float32))
    signal = x[:, :3].numpy()
    y = np.stack(  # three variables, learnable to different degrees, with 3, 5 and 9 values
        [
            (signal[:, 0] > 0).astype(np.uint8) + 10 * (signal[:, 1] > 1),
            np.digitize(signal[:, 1] + rng.normal(0, 1, n + 200), [-1, -0.3, 0.3, 1]) * 3,
            rng.integers(0, 9, n + 200) * 7,
        ],
        1,
    ).astype(np.uint8)
    episodes = np.arange(n) // 40
    cfg = ProbeTrainConfig(lr=1e-2, epochs=25, patience=4, plateau_patience=1, batch_size=32)
    classes = Classes.from_labels(y[:n], "seen", torch.device("cpu"))
    fit = fit_probes(x[:n], y[:n], x[n:], y[n:], classes, cfg, 0, episodes)
    kept, epochs = reference_fit(x[:n], y[:n], x[n:], y[n:], classes, cfg, 0, episodes)
    assert fit.epochs.tolist() == epochs and len(set(epochs)) > 1  # they stopped at different epochs
    for v, (w, b) in enumerate(kept):
        assert torch.allclose(fit.weight[:, classes.owner == v], w, atol=1e-5), v
        assert torch.allclose(fit.bias[classes.owner == v], b, atol=1e-5), v


# ------------------------------------------------------------------------------------------- the options
def test_a_test_split_too_small_is_refused_in_one_line(probe_dir, tmp_path, capsys):
    """The fixture plays 8 envs of 150 frames: every test split keeps 1 or 2 episodes, fewer than 10."""
    kept = {g: len(np.unique(ProbeData(probe_dir, g).episodes("test"))) for g in GAMES}
    assert all(0 < n < 10 for n in kept.values()), kept
    args = ["finetune", "--protocol", "probe", "--encoder", "random", "--preset", "tiny", "--split", "id"]
    args += ["--games", "boxing", "--data", probe_dir, "--results", tmp_path / "results"]
    status, err = _cli(capsys, *args)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("atari-pb: error: boxing: "), err
    assert f"holds {kept['boxing']} episodes" in lines[0] and "data.min_test_episodes=10" in lines[0]
    assert not (tmp_path / "results").exists()
    # the bound follows the option; the same check guards load_inputs (after the test duplicates go)
    status, err = _cli(capsys, *args, f"data.min_test_episodes={kept['boxing'] + 1}")
    assert status == 2 and f"data.min_test_episodes={kept['boxing'] + 1}" in err
    from atari_pb.errors import UsageError

    with pytest.raises(UsageError, match=r"pong: its test split holds \d episodes"):
        load_inputs(ProbeData(probe_dir, "pong"), ProbeDataConfig())
    assert load_inputs(ProbeData(probe_dir, "pong"), ProbeDataConfig(min_test_episodes=1)).variables


def test_the_annotation_table_option_switches_the_labels(probe_dir):
    """`data.annotations: paper` probes the paper's table (commit dacd816): pong without the paddles' x
    bytes (added after the paper), space_invaders' lives at byte 125, seaquest's bytes 71-74 as diver_x."""
    assert variables("pong", "paper") == [
        "player_y",
        "enemy_y",
        "ball_x",
        "ball_y",
        "enemy_score",
        "player_score",
    ]
    assert set(variables("pong")) - set(variables("pong", "paper")) == {"player_x", "enemy_x"}
    assert annotations("paper")["space_invaders"]["num_lives"] == 125
    assert annotations("head")["space_invaders"]["num_lives"] == 73
    assert categories("seaquest", "paper")["diver_x_0"] == "other_localization"
    assert categories("seaquest")["diver_or_enemy_missile_x_0"] == "small_object_localization"
    differ = sorted(g for g in annotations("head") if annotations("head")[g] != annotations("paper")[g])
    assert differ == ["pitfall", "pong", "private_eye", "qbert", "seaquest", "space_invaders", "yars_revenge"]
    data = ProbeData(probe_dir, "pong")
    for table in ("head", "paper"):
        inputs = load_inputs(data, ProbeDataConfig(annotations=table, min_test_episodes=0))
        assert sorted([*inputs.variables, *inputs.dropped]) == sorted(variables("pong", table)), table
        assert inputs.categories == categories("pong", table)
        columns = [ram_indices("pong", table)[variables("pong", table).index(v)] for v in inputs.variables]
        np.testing.assert_array_equal(inputs.splits["val"].labels, data.ram("val")[:, columns])
    head = load_inputs(data, ProbeDataConfig(min_test_episodes=0))
    assert {"player_x", "enemy_x"} <= head.dropped.keys()  # constant in play: never probed


def test_standardise_off_leaves_the_features_as_they_are():
    x = torch.randn(50, 3) * torch.tensor([1.0, 10.0, 0.0]) + 5
    mean, std = standardiser(x)
    assert (
        torch.allclose(mean, x.mean(0))
        and std[2] == 1.0
        and torch.allclose(std[:2], x.std(0, unbiased=False)[:2])
    )
    mean, std = standardiser(x, standardise=False)
    assert (mean == 0).all() and (std == 1).all()


# ------------------------------------------------------------------------------------------- make
def test_make_probe_data_then_make_probe_with_the_defaults(tmp_path):
    """The README's two commands with the Makefile's defaults (PROBE_DATASET=probes_demo) on a smaller
    selection of that dataset (boxing, 64 envs of 70 frames), in a scratch DATA_ROOT and RESULTS: `make
    probe` finds what `make probe-data` wrote and probes the games of SPLIT it holds."""
    before = {p.name for p in REPO.iterdir()}
    make = ["make", "--no-print-directory", f"DATA_ROOT={tmp_path / 'data'}"]
    env = {**os.environ, "CI": "true"}
    collect = [*make, "probe-data", "ARGS=--games boxing frames_per_game=4480"]
    proc = subprocess.run(collect, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (tmp_path / "data" / "probes" / "probes_demo" / "boxing.h5").is_file()
    probe = [*make, "probe", "ENCODER=random", "SPLIT=id", f"RESULTS={tmp_path / 'results'}", "WORKERS=1"]
    probe.append("ARGS=--preset tiny --seeds 0 train.epochs=3")
    proc = subprocess.run(probe, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (record,) = read_records(tmp_path / "results")
    assert (record.method, record.protocol, record.game, record.seed) == ("random", "probe", "boxing", 0)
    assert record.config["episodes"]["test"] >= 10  # the defaults' refusal let it through
    assert {p.name for p in REPO.iterdir()} == before  # nothing written into the checkout
