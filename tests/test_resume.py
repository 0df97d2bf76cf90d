"""Resumable fine-tuning jobs (atari_pb/finetune/resume.py): a job killed with SIGKILL and run again
continues from its last checkpoint and ends where the uninterrupted job ends (offline BC: the same record;
Rainbow, in the released env whose emulators are saved too: the same agent, bit for bit), a restored
Rainbow replay holds what the saved one held, and bad checkpoints are handled as the contract says."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from atari_pb.core.timing import Sections
from atari_pb.finetune.rainbow import RainbowRun, load_rainbow_config, train_rainbow
from atari_pb.finetune.replay import PrioritizedReplay
from atari_pb.finetune.resume import STATE_FILE, JobCheckpoint
from atari_pb.games import get_game
from atari_pb.models.encoder import Encoder, ModelConfig
from tests.conftest import one_error_line, run_cli

BC = (
    "--protocol offline_bc --encoder random --preset tiny --split id --games breakout --seeds 0 --episodes 1 "
    "--eval-envs 1 eval.env.horizon=100 train.max_steps=300 train.batch_size=16 train.loader_threads=0"
).split()
RAINBOW = (
    "--protocol rainbow --encoder random --preset tiny --split id --games breakout --seeds 0 --episodes 1 "
    "--eval-envs 1 eval.env.horizon=100 --save-agent train.env_steps=400 train.learning_starts=100 "
    "train.updates_per_step=1 train.batch_size=8 train.eps_decay_steps=200 replay.capacity=600 agent.n_step=3"
).split()


def cli(args: list, timeout: int = 600) -> subprocess.CompletedProcess:
    return run_cli("--log-level", "INFO", *args, cwd=Path.cwd(), timeout=timeout)


def record_without_timing(path: Path) -> dict:
    record = json.loads(path.read_text())
    record["config"].pop("train_seconds")
    return record


def kill_after_checkpoint(args: list, state: Path, min_step: int) -> int:
    """Start the job, SIGKILL it once its checkpoint holds step >= min_step; the step it held."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "atari_pb", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert proc.poll() is None, "the job ended before it could be killed"
            if state.exists():
                step = int(torch.load(state, weights_only=True)["step"])
                if step >= min_step:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(30)
                    return step
            time.sleep(0.05)
        raise AssertionError(f"no checkpoint at step >= {min_step} within 300 s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def resumed_step(proc: subprocess.CompletedProcess) -> int:
    match = re.search(r"resuming from .*state\.pt at step (\d+)", proc.stderr)
    assert match, proc.stderr[-2000:]
    return int(match.group(1))


def test_offline_bc_killed_mid_run_ends_with_the_uninterrupted_record(shard_dir, tmp_path):
    whole = cli(
        ["finetune", *BC, "--data", shard_dir, "--results", tmp_path / "whole", "--checkpoint-every", "0"]
    )
    assert whole.returncode == 0, whole.stderr[-2000:]
    args = [
        "finetune",
        *BC,
        "--data",
        shard_dir,
        "--results",
        tmp_path / "killed",
        "--checkpoint-every",
        "40",
    ]
    state = tmp_path / "killed/.checkpoints/random/offline_bc/breakout/seed0" / STATE_FILE
    held = kill_after_checkpoint(args, state, min_step=80)
    assert not (tmp_path / "killed/random/offline_bc/breakout/seed0.json").exists()
    again = cli(args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert resumed_step(again) >= held
    tail = "random/offline_bc/breakout/seed0.json"
    assert record_without_timing(tmp_path / "killed" / tail) == record_without_timing(
        tmp_path / "whole" / tail
    )
    assert not state.parent.exists()  # the record is written: the checkpoint is gone


def test_rainbow_killed_mid_run_ends_with_the_uninterrupted_agent(tmp_path):
    whole = cli(["finetune", *RAINBOW, "--results", tmp_path / "whole", "--checkpoint-every", "0"])
    assert whole.returncode == 0, whole.stderr[-2000:]
    args = ["finetune", *RAINBOW, "--results", tmp_path / "killed", "--checkpoint-every", "100"]
    state = tmp_path / "killed/.checkpoints/random/rainbow/breakout/seed0" / STATE_FILE
    held = kill_after_checkpoint(args, state, min_step=200)
    again = cli(args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert resumed_step(again) >= held  # the update counter continues from the checkpoint
    tail = "random/rainbow/breakout"
    killed, uninterrupted = (
        record_without_timing(tmp_path / d / tail / "seed0.json") for d in ("killed", "whole")
    )
    assert killed == uninterrupted and killed["gradient_steps"] == 301 and killed["env_steps"] == 400
    agents = [(tmp_path / d / tail / "agents/seed0.safetensors").read_bytes() for d in ("killed", "whole")]
    assert agents[0] == agents[1]  # exact: the emulators, generators and replay were restored too


def test_a_restored_replay_holds_what_the_saved_one_held(tmp_path):
    """In process: a run whose last checkpoint is its last update; a fresh run state restored from it has
    the same replay (frames through the incremental mirror, priorities, cursors) as the run's own."""
    cfg = load_rainbow_config(["train.env_steps=399", "train.learning_starts=100", "train.updates_per_step=1",
                               "train.batch_size=8", "replay.capacity=300", "agent.n_step=3"])  # fmt: skip
    game, encoder = get_game("breakout"), Encoder(ModelConfig(preset="tiny"))
    identity = {"job": {"game": "breakout"}}
    sections = Sections()
    checkpoint = JobCheckpoint(tmp_path / "ckpt", "finetune-rainbow", identity, every=100)
    train_rainbow(game, encoder, cfg, 0, False, sections=sections, checkpoint=checkpoint)
    live = sections.kept["replay"]
    assert checkpoint.last == 300 and int(live.written.sum()) > cfg.replay.capacity  # the ring wrapped

    fresh = JobCheckpoint(tmp_path / "ckpt", "finetune-rainbow", identity, every=100)
    run = RainbowRun(game, encoder, cfg, 0, "cpu")
    run.restore(fresh.load(), fresh.dir)
    replay, steps, learner = run.replay, run.steps, run.learner
    assert steps == 399 and learner.updates == 300
    for name in ("frame", *PrioritizedReplay.STATE_ARRAYS, "new_episode"):
        assert np.array_equal(getattr(replay, name), getattr(live, name)), name
    assert np.array_equal(replay.tree.nodes, live.tree.nodes) and replay.pending == live.pending


def test_a_checkpoint_of_another_configuration_is_refused(shard_dir, tmp_path):
    args = ["finetune", *BC, "--data", shard_dir, "--results", tmp_path, "--checkpoint-every", "40"]
    state = tmp_path / ".checkpoints/random/offline_bc/breakout/seed0" / STATE_FILE
    kill_after_checkpoint(args, state, min_step=40)
    before = state.read_bytes()
    proc = run_cli("--log-level", "WARNING", "finetune", *args[1:], "train.lr=5e-4", cwd=tmp_path)
    line = one_error_line(proc, 1)
    assert f"{state}: the run was made with protocol.train.lr=0.001, not 0.0005" in line
    assert state.read_bytes() == before and not (tmp_path / "random/offline_bc/breakout/seed0.json").exists()


def test_a_corrupt_checkpoint_is_set_aside_and_the_job_starts_over(shard_dir, tmp_path):
    args = ["finetune", *BC, "--data", shard_dir, "--results", tmp_path, "--checkpoint-every", "40"]
    state = tmp_path / ".checkpoints/random/offline_bc/breakout/seed0" / STATE_FILE
    state.parent.mkdir(parents=True)
    state.write_bytes(b"not a checkpoint")
    proc = run_cli("--log-level", "WARNING", *args, cwd=tmp_path)  # the warning shows at WARNING level
    assert proc.returncode == 0, proc.stderr[-2000:]
    aside = state.with_name(f"{STATE_FILE}.corrupt-1")
    assert f"set aside as {aside}, the job starts over" in proc.stderr
    assert aside.read_bytes() == b"not a checkpoint" and not state.exists()
    assert (
        json.loads((tmp_path / "random/offline_bc/breakout/seed0.json").read_text())["gradient_steps"] == 300
    )
