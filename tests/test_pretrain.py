"""The pre-training runner through its command line: resume after kill -9, torchrun vs one process,
encoder export / load, and bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from atari_pb.data.ingest import ingest
from atari_pb.errors import DataError, UsageError
from atari_pb.games import resolve_games
from atari_pb.models.backbone import Backbone
from atari_pb.models.encoder import Encoder, ModelConfig, export_encoder, load_encoder
from atari_pb.pretrain.checkpoint import load_checkpoint, save_checkpoint

from .test_ingest import atari_pb

TINY = ["--preset", "tiny", "--batch-size", "8", "trainer.log_every=2", "trainer.loader_threads=1"]


def run_args(shard_dir: Path, out: Path, objective: str = "curl", steps: int = 8, *extra) -> list:
    return [
        "pretrain",
        "--objective",
        objective,
        "--data",
        shard_dir,
        "--out",
        out,
        "--steps",
        steps,
        *TINY,
        *extra,
    ]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoint.pt")["model"]


def test_resnet50_preset_is_atari_pbs_backbone():
    net = Backbone("resnet50")
    assert net(torch.zeros(2, 4, 84, 84, dtype=torch.uint8)).shape == (2, 2048, 6, 6)
    assert (
        sum(p.numel() for p in net.parameters()) == 23_458_048
    )  # bottlenecks 3-4-6-3, GroupNorm without affine parameters, 4 channels: the released network
    assert isinstance(net.body.maxpool, torch.nn.Identity)
    assert all(not isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    tiny = Backbone("tiny")
    assert 1_000 <= sum(p.numel() for p in tiny.parameters()) <= 500_000
    assert tiny(torch.zeros(1, 4, 84, 84, dtype=torch.uint8)).shape[2:] == (6, 6)


@pytest.mark.slow
def test_resume_after_kill_reaches_the_same_weights(shard_dir, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    steps = 12
    atari_pb(*run_args(shard_dir, whole, "curl", steps, "--save-every", 3), check=True)
    cmd = [
        sys.executable,
        "-m",
        "atari_pb",
        "--log-level",
        "WARNING",
        *map(str, run_args(shard_dir, killed, "curl", steps, "--save-every", 3)),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:  # kill -9 once a mid-run checkpoint exists
        if (killed / "checkpoint.pt").exists() and load_checkpoint(killed / "checkpoint.pt")["step"] >= 3:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = load_checkpoint(killed / "checkpoint.pt")["step"]
    assert 3 <= saved < steps, "the kill did not land mid-run"
    assert not (killed / "encoder.safetensors").exists()
    proc = atari_pb("pretrain", "--objective", "curl", "--data", shard_dir, "--out", killed, "--resume")
    assert proc.returncode == 0, proc.stderr
    a, b = weights(whole), weights(killed)
    assert a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) for k in a
    )  # bit for bit, EMA target included
    assert (whole / "encoder.safetensors").read_bytes() == (killed / "encoder.safetensors").read_bytes()
    logged = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(2, steps + 1, 2))  # nothing logged twice across the kill


@pytest.mark.slow
def test_torchrun_two_ranks_match_one_process(shard_dir, tmp_path):
    """Same global batch, same data, same augmentations: DDP (gloo) must follow the single process up to
    float summation order; curl all-gathers its keys, so a missing gather would show."""
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    args = lambda out: run_args(shard_dir, out, "curl", 6, "optim.lr=1e-3", "optim.warmup=0")  # noqa: E731
    atari_pb(*args(single), check=True)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "atari_pb",
            "--log-level",
            "WARNING",
            *map(str, args(ddp)),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = weights(single), weights(ddp)
    torch.manual_seed(0)  # the runner's initialisation, for the size of the update
    init = Encoder(ModelConfig(preset="tiny")).state_dict()
    update = torch.cat([(a[f"encoder.{k}"] - v).flatten() for k, v in init.items()]).norm()
    diff = torch.cat([(a[k] - b[k]).flatten() for k in a]).norm()
    assert update > 0 and diff < 1e-3 * update, (diff, update)
    steps = [json.loads(line)["step"] for line in (ddp / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]  # only rank 0 writes


def test_export_and_load_encoder(shard_dir, tmp_path):
    run = tmp_path / "run"
    atari_pb(*run_args(shard_dir, run, "bc", 4), check=True)
    out = tmp_path / "exported" / "enc.safetensors"
    assert atari_pb("export-encoder", run, "--out", out).returncode == 0
    enc = load_encoder(out)
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    reference = Encoder(ModelConfig(**load_checkpoint(run / "checkpoint.pt")["config"]["model"]))
    reference.load_state_dict({k[8:]: v for k, v in weights(run).items() if k.startswith("encoder.")})
    obs = torch.randint(0, 256, (3, 4, 84, 84), dtype=torch.uint8)
    game = torch.tensor([0, 5, 59])
    with torch.no_grad():
        assert torch.equal(enc(obs, game), reference.eval()(obs, game))
        assert torch.equal(load_encoder(run / "encoder.safetensors")(obs), enc(obs))
    assert json.loads(out.with_suffix(".json").read_text())["model"]["preset"] == "tiny"
    # the data it was pre-trained on, in both encoders' JSON: the session's collected tree, 2 games x 2 runs
    # x 2 checkpoints x 1000 transitions (conftest.py)
    data = {"source": "collect", "games": 2, "transitions": 8000, "shards": 8}
    for path in (out, run / "encoder.safetensors"):
        assert json.loads(path.with_suffix(".json").read_text())["metadata"]["pretrain_data"] == data
    saved = load_checkpoint(run / "checkpoint.pt")
    del saved["pretrain_data"]  # a checkpoint written before runs recorded their data
    save_checkpoint(run / "checkpoint.pt", saved)
    old = tmp_path / "old.safetensors"
    assert atari_pb("export-encoder", run, "--out", old).returncode == 0
    assert json.loads(old.with_suffix(".json").read_text())["metadata"]["pretrain_data"] is None  # unknown


def test_broken_encoder_files_are_named(tmp_path):
    path = export_encoder(Encoder(ModelConfig(preset="tiny")), tmp_path / "e.safetensors")
    config = json.loads(path.with_suffix(".json").read_text())
    config["model"]["neck_hidden"] = [32, 16]  # weights of another shape
    path.with_suffix(".json").write_text(json.dumps(config))
    with pytest.raises(DataError, match="do not fit"):
        load_encoder(path)
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(DataError, match="e.safetensors"):
        load_encoder(path)
    with pytest.raises(UsageError, match="does not exist"):
        load_encoder(tmp_path / "none.safetensors")


@pytest.mark.parametrize(
    "extra,code,words",
    [
        (["--objective", "simclr"], 2, "unknown objective 'simclr'; valid objectives: "),
        (["objective.temprature=2"], 2, "unknown key 'objective.temprature'; valid keys: temperature"),
        (["trainer.steps=ten"], 2, "bad value for 'trainer.steps'"),
        (
            ["--preset", "vit"],
            2,
            "unknown backbone preset 'vit'; valid presets: resnet50, resnet18, tiny, nature",
        ),
    ],
)
def test_bad_requests(shard_dir, tmp_path, extra, code, words):
    proc = atari_pb(*run_args(shard_dir, tmp_path / "run", "curl", 2), *extra)
    assert proc.returncode == code and words in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_data_too_short_for_the_objective(replay_tree, tmp_path):
    short = tmp_path / "short"
    # 6 transitions, whose first 4 are in the checkpoint's invalid range: no 4-frame stack with a future
    ingest(replay_tree, short, resolve_games(["pong"]), [1], [0], 6)
    proc = atari_pb(*run_args(short, tmp_path / "run", "curl", 2))
    assert proc.returncode == 1 and "no valid start" in proc.stderr and str(short) in proc.stderr
    assert not (tmp_path / "run").exists()


def test_resume_refuses_other_objectives_and_corrupt_checkpoints(shard_dir, tmp_path):
    run = tmp_path / "run"
    atari_pb(*run_args(shard_dir, run, "bc", 2), check=True)
    before = (run / "checkpoint.pt").read_bytes()
    proc = atari_pb(
        "pretrain", "--objective", "curl", "--data", shard_dir, "--out", run, "--resume", "--preset", "tiny"
    )
    assert proc.returncode == 2 and "is a bc checkpoint, not curl" in proc.stderr
    proc = atari_pb(*run_args(shard_dir, run, "bc", 2))
    assert proc.returncode == 2 and "already holds a run" in proc.stderr
    assert (run / "checkpoint.pt").read_bytes() == before
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    (broken / "checkpoint.pt").write_bytes(before[: len(before) // 2])
    proc = atari_pb(
        "pretrain", "--objective", "bc", "--data", shard_dir, "--out", broken, "--resume", "--steps", 4
    )
    assert proc.returncode == 1 and "checkpoint.pt: not a readable checkpoint" in proc.stderr


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(shard_dir, tmp_path):
    run = tmp_path / "run"
    proc = atari_pb(*run_args(shard_dir, run, "bc", 30, "--save-every", 1, "optim.lr=1e30", "optim.warmup=0"))
    assert proc.returncode == 1 and "objective bc: loss or gradient is not finite at step" in proc.stderr
    failed_at = int(proc.stderr.split("at step ")[1].split(";")[0])
    saved = load_checkpoint(run / "checkpoint.pt")
    assert saved["step"] == failed_at - 1
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
    assert not (run / "encoder.safetensors").exists()


@pytest.mark.slow
def test_accumulation_and_channels_last_follow_the_plain_run(shard_dir, tmp_path):
    """Two accumulated micro-batches are the same global batch, with the same per-sample augmentation, as
    one batch (bc has no cross-sample terms, so only float order differs); channels_last changes only the
    memory layout."""
    runs = {}
    for label, extra in (
        ("plain", []),
        ("accumulate", ["trainer.accumulate=2"]),
        ("channels_last", ["trainer.channels_last=true"]),
    ):
        runs[label] = tmp_path / label
        atari_pb(*run_args(shard_dir, runs[label], "bc", 4, "optim.lr=1e-3", *extra), check=True)
    plain = weights(runs["plain"])
    torch.manual_seed(0)
    init = {f"encoder.{k}": v for k, v in Encoder(ModelConfig(preset="tiny")).state_dict().items()}
    update = torch.cat([(plain[k] - init[k]).flatten() for k in init]).norm()
    # channels_last runs other convolution kernels: their ~1e-6 relative differences in the gradients become
    # up to lr-sized steps where Adam normalises a near-zero gradient, so after 4 steps the weights may differ
    # by ~1% of the update (measured 0.5-1.2% with the 8-channel tiny stem and the released init); a wrong layout
    # would differ by the update's order
    for label, tolerance in (("accumulate", 1e-3), ("channels_last", 3e-2)):
        other = weights(runs[label])
        diff = torch.cat(
            [(plain[k] - other[k]).flatten() for k in plain if plain[k].is_floating_point()]
        ).norm()
        assert diff < tolerance * update, (label, diff, update)
