"""`atari-pb finetune` end to end through the command line (real processes, real envs, real shards): offline
BC and Rainbow sweeps that write records and skip finished ones, `--save-agent`, `collect --policy
eps-greedy:<agent>` playing the saved agent into DQN-Replay files, and the bad requests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from atari_pb.data.ingest import ingest
from atari_pb.data.replay_format import replay_file
from atari_pb.eval.records import read_records
from atari_pb.games import get_game
from atari_pb.models.agent import load_agent
from atari_pb.models.encoder import Encoder, ModelConfig, export_encoder
from tests.conftest import load_source, one_error_line, run_cli

REQUIRED = {
    "method",
    "protocol",
    "split",
    "game",
    "seed",
    "score",
    "episodes",
    "gradient_steps",
    "env_steps",
    "encoder_sha256",
    "config",
}
DATA = {"source": "collect", "games": 2, "transitions": 8000, "shards": 8}  # the encoder's pre-training data
QUICK_EVAL = ["--episodes", "2", "--eval-envs", "2", "eval.env.horizon=150"]
QUICK_RAINBOW = [
    "train.env_steps=240",
    "train.learning_starts=120",
    "train.updates_per_step=1",
    "train.batch_size=8",
    "train.eps_decay_steps=60",
    "train.log_every=100000",
    "env.horizon=100",
    "replay.capacity=2000",
    "agent.n_step=3",
]


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("encoder") / "curl" / "encoder.safetensors"
    return export_encoder(
        Encoder(ModelConfig(preset="tiny")), path, {"objective": "curl", "pretrain_data": DATA}
    )


def test_offline_bc_sweep_writes_records_and_skips_finished_ones(encoder_file, shard_dir, tmp_path):
    results = tmp_path / "results"
    args = ["finetune", "--protocol", "offline_bc", "--encoder", encoder_file, "--split", "id", "near_ood"]
    args += ["--games", "breakout", "pong", "--seeds", "0", "--data", shard_dir, "--results", results]
    args += ["--workers", "2", *QUICK_EVAL, "train.max_steps=5", "train.batch_size=16"]
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    records = read_records(results)
    assert sorted((r.method, r.protocol, r.split, r.game, r.seed) for r in records) == [
        ("curl", "offline_bc", "id", "breakout", 0),
        ("curl", "offline_bc", "near_ood", "pong", 0),
    ]
    for path in sorted(results.glob("*/*/*/seed*.json")):
        raw = json.loads(path.read_text())
        assert REQUIRED <= raw.keys()
        assert raw["episodes"] == 2 and raw["gradient_steps"] == 5 and raw["env_steps"] == 0
        assert raw["score"] == pytest.approx(np.mean(raw["episode_scores"]))
        assert raw["config"]["eval"]["env"]["horizon"] == 150  # the eval. override reached the rollouts
        assert raw["config"]["pretrain_data"] == DATA  # from the encoder's JSON
    first = {p: p.read_bytes() for p in results.rglob("seed*.json")}

    proc = run_cli(*args, cwd=tmp_path)  # everything finished: nothing is recomputed or rewritten
    assert proc.returncode == 0, proc.stderr
    assert "2 already finished" in proc.stderr
    assert {p: p.read_bytes() for p in results.rglob("seed*.json")} == first


@pytest.fixture(scope="module")
def rainbow_run(tmp_path_factory) -> Path:
    """A short Rainbow run on a Far-OOD game from the random baseline, keeping its agent."""
    results = tmp_path_factory.mktemp("rainbow") / "results"
    args = ["finetune", "--protocol", "rainbow", "--encoder", "random", "--preset", "tiny"]
    args += ["--split", "far_ood", "--games", "surround", "--seeds", "0", "--results", results]
    proc = run_cli(*args, "--save-agent", *QUICK_EVAL, *QUICK_RAINBOW, cwd=results.parent)
    assert proc.returncode == 0, proc.stderr
    return results


def test_rainbow_through_the_command_line(rainbow_run):
    (record,) = read_records(rainbow_run)
    assert (record.method, record.protocol, record.split, record.game) == (
        "random",
        "rainbow",
        "far_ood",
        "surround",
    )
    assert record.env_steps == 240 and record.episodes == 2 and record.encoder_sha256 == ""
    assert record.gradient_steps == 240 - 120 + 1  # QUICK_RAINBOW: one update a step from the 120th
    assert record.config["protocol"]["train"]["env_steps"] == 240
    assert record.config["pretrain_data"] is None  # a baseline: no pre-training
    agent_file = rainbow_run / "random" / "rainbow" / "surround" / "agents" / "seed0.safetensors"
    agent, game = load_agent(agent_file)
    assert game.name == "surround" and agent.num_actions == 5


def test_collect_plays_the_saved_agent_in_dqn_replay_format(rainbow_run, tmp_path):
    """With epsilon 0, every logged action is the agent's greedy choice on the logged frame stack (sticky
    actions change what the emulator does, not what is logged); the files ingest like any DQN-Replay run."""
    agent_file = rainbow_run / "random" / "rainbow" / "surround" / "agents" / "seed0.safetensors"
    out = tmp_path / "replay"
    args = ["collect", out, "--games", "surround", "--runs", "1", "--ckpts", "0", "--transitions", "400"]
    proc = run_cli(*args, "--policy", f"eps-greedy:{agent_file}", "collect.epsilon=0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    game = get_game("surround")
    frames = load_source(out, "surround", 1, "observation", 0)
    actions = load_source(out, "surround", 1, "action", 0)
    terminal = load_source(out, "surround", 1, "terminal", 0)
    assert frames.shape == (400, 84, 84) and actions.dtype == np.int32
    # stacks of 4 logged frames that lie inside one episode
    ok = [i for i in range(3, 400) if not terminal[i - 3 : i].any()]
    stacks = torch.from_numpy(np.stack([frames[i - 3 : i + 1] for i in ok]))
    agent, _ = load_agent(agent_file)
    np.testing.assert_array_equal(agent.act(stacks).numpy(), actions[ok])
    record = json.loads(
        (replay_file(out, game.replay_name, 1, "action", 0).parents[1] / "collect.json").read_text()
    )
    assert record["config"]["policy"] == f"eps-greedy:{agent_file}" and record["config"]["epsilon"] == 0
    assert not ingest(out, tmp_path / "shards", [game], [1], [0], 400).errors


def test_collect_with_a_bad_agent(rainbow_run, tmp_path):
    agent_file = rainbow_run / "random" / "rainbow" / "surround" / "agents" / "seed0.safetensors"
    base = ["collect", tmp_path / "replay", "--runs", "1", "--ckpts", "0", "--transitions", "50"]
    line = one_error_line(
        run_cli(*base, "--games", "pong", "--policy", f"eps-greedy:{agent_file}", cwd=tmp_path), 2
    )
    assert "surround" in line and "pong" in line
    line = one_error_line(
        run_cli(*base, "--games", "surround", "--policy", "eps-greedy:nope.safetensors", cwd=tmp_path), 2
    )
    assert "nope.safetensors" in line
    line = one_error_line(run_cli(*base, "--games", "surround", "--policy", "greedy", cwd=tmp_path), 2)
    assert "random" in line and "eps-greedy" in line
    per_game = str(agent_file).replace("surround", "{game}")  # each game's own agent: pong has none
    line = one_error_line(
        run_cli(*base, "--games", "surround", "pong", "--policy", f"eps-greedy:{per_game}", cwd=tmp_path), 2
    )
    assert str(agent_file).replace("surround", "pong") in line and "does not exist" in line
    assert not (tmp_path / "replay").exists()


@pytest.fixture(scope="module")
def bad_encoders(encoder_file, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    corrupt = root / "corrupt" / "encoder.safetensors"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"\x00not safetensors" * 10)
    corrupt.with_suffix(".json").write_text(encoder_file.with_suffix(".json").read_text())
    misshapen = root / "misshapen" / "encoder.safetensors"  # resnet18 weights under tiny's config
    misshapen.parent.mkdir()
    save_file(Encoder(ModelConfig(preset="resnet18")).state_dict(), misshapen)
    misshapen.with_suffix(".json").write_text(encoder_file.with_suffix(".json").read_text())
    three = export_encoder(
        Encoder(ModelConfig(preset="tiny", frames=3)), root / "three" / "encoder.safetensors"
    )
    return {
        "missing": root / "missing.safetensors",
        "corrupt": corrupt,
        "misshapen": misshapen,
        "frames": three,
    }


@pytest.mark.parametrize(
    "which, code, words",
    [
        ("missing", 2, ["missing.safetensors", "does not exist"]),
        ("corrupt", 1, ["corrupt", "safetensors"]),  # bad data: exit 1, like every unreadable file
        ("misshapen", 1, ["misshapen", "do not fit"]),
        ("frames", 2, ["3-frame", "4"]),
    ],
)
def test_bad_encoders_fail_before_anything_runs(bad_encoders, rainbow_run, which, code, words, tmp_path):
    before = {p: p.read_bytes() for p in rainbow_run.rglob("*") if p.is_file()}
    args = ["finetune", "--protocol", "rainbow", "--encoder", bad_encoders[which], "--split", "far_ood"]
    line = one_error_line(run_cli(*args, "--games", "surround", "--results", rainbow_run, cwd=tmp_path), code)
    assert all(w in line for w in words), line
    assert {p: p.read_bytes() for p in rainbow_run.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--split", "id", "--games", "surround"], ["surround", "far_ood", "not id"]),
        (["--split", "far_ood", "--games", "surround", "train.nope=1"], ["nope"]),
        (["--split", "far_ood", "--games", "surround", "eval.nope=1"], ["nope"]),
        (["--split", "middle"], ["middle", "near_ood"]),
        (
            ["--split", "id", "near_ood", "--games", "surround", "pong"],
            ["surround", "far_ood", "id or near_ood"],
        ),
        (["--split", "far_ood", "--save-agent", "--protocol", "offline_bc", "--data", "."], ["--save-agent"]),
    ],
)
def test_bad_requests(encoder_file, extra, words, tmp_path):
    args = ["finetune", "--encoder", encoder_file, "--results", tmp_path / "results"]
    if "--protocol" not in extra:
        args += ["--protocol", "rainbow"]
    line = one_error_line(run_cli(*args, *extra, cwd=tmp_path), 2)
    assert all(w in line for w in words), line
    assert not (tmp_path / "results").exists()
