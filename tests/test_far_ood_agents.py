"""`make far-ood-agents`, the released way: a Nature-CNN Rainbow trained end to end whose training buffer is
dumped as the released PERBuffer.save_buffer dumps it, then ingested with `--layout atari_pb_far_ood`."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from atari_pb.errors import UsageError
from atari_pb.finetune.buffer_log import BufferLog, BufferLogConfig
from atari_pb.games import get_game
from atari_pb.models.encoder import Encoder, ModelConfig

REPO = Path(__file__).resolve().parent.parent
FIELDS = ("observation", "action", "reward", "terminal")


def load_released(path: Path) -> np.ndarray:
    """As the released loader reads a dump (src/common/dataset_utils.py): np.load of the gzip stream."""
    with gzip.open(path, "rb") as f:
        return np.load(f)


def test_nature_backbone_is_the_released_one():
    enc = Encoder(ModelConfig(preset="nature"))
    # conv 4->32 8x8, 32->64 4x4, 64->64 3x3 with biases (src/models/backbones/nature.py)
    convs = [(4, 32, 8), (32, 64, 4), (64, 64, 3)]
    assert sum(p.numel() for p in enc.backbone.parameters()) == sum(i * o * k * k + o for i, o, k in convs)
    assert enc.backbone.out_shape() == (64, 7, 7)
    # the released linear neck: 64*7*7 -> 512, ReLU
    assert sum(p.numel() for p in enc.neck.parameters()) == 64 * 7 * 7 * 512 + 512 and enc.out_dim == 512


def test_buffer_log_keeps_the_released_ring_order(tmp_path):
    size, delay, every, steps = 5, 3, 4, 11
    log = BufferLog(BufferLogConfig(str(tmp_path), every, size, delay), get_game("klax"), run=1)
    for k in range(steps):  # transition k: frames filled with k + 1, action k % 4, ...
        log.add(np.full((84, 84), k + 1, np.uint8), k % 4, (-1.0) ** k, k % 3 == 0, step=k + 1)
    assert [f.name for f in log.files] == [f"{f}_1_{c}.gz" for c in (1, 2) for f in FIELDS]
    for ckpt, played in ((1, 4), (2, 8)):
        # the released deque writes a transition delay - 1 steps late; row r holds the last written
        # transition k with k % size == r, or zeros
        written = played - (delay - 1)
        expected = [max((k for k in range(written) if k % size == r), default=None) for r in range(size)]
        arrays = {f: load_released(tmp_path / "Klax" / f"{f}_1_{ckpt}.gz") for f in FIELDS}
        assert arrays["observation"].shape == (size, 84, 84) and arrays["observation"].dtype == np.uint8
        assert all(arrays[f].dtype == np.float64 for f in FIELDS[1:])  # np.zeros(size), as released
        for r, k in enumerate(expected):
            row = [arrays[f][r] for f in FIELDS]
            if k is None:
                assert not row[0].any() and row[1:] == [0, 0, 0]
            else:
                assert (row[0] == k + 1).all() and row[1:] == [k % 4, (-1.0) ** k, float(k % 3 == 0)]
    with pytest.raises(UsageError, match="already exists"):
        BufferLog(BufferLogConfig(str(tmp_path), every, size, delay), get_game("klax"), run=1).check_fresh()


@pytest.fixture(scope="module")
def released_way(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("far_ood_agents")
    args = (
        "--games basic_math --episodes 1 --eval-envs 1 eval.env.horizon=100 train.env_steps=600 "
        "train.learning_starts=200 train.eps_decay_steps=300 train.batch_size=8 replay.capacity=2000 "
        "buffer_log.every=300 buffer_log.size=500"
    )
    proc = subprocess.run(
        ["make", "--no-print-directory", "far-ood-agents", f"DATA_ROOT={tmp / 'data'}",
         f"FAR_OOD_NATURE_RUNS={tmp / 'runs'}", "WORKERS=1", f"ARGS={args}"],
        cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, "CI": "true"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp


def test_far_ood_agents_logs_the_training_buffer_in_the_released_layout(released_way):
    record = json.loads((released_way / "runs/e2e/rainbow/basic_math/seed0.json").read_text())
    assert record["config"]["preset"] == "nature" and record["env_steps"] == 600
    assert record["config"]["protocol"]["train"]["updates_per_step"] == 1
    assert record["config"]["protocol"]["train"]["eps_end"] == 0.02
    game_dir = released_way / "data/replay/far_ood_released/BasicMath"
    assert sorted(p.name for p in game_dir.iterdir()) == sorted(
        f"{f}_1_{c}.gz" for f in FIELDS for c in (1, 2)
    )
    assert [Path(f).name for f in record["config"]["buffer_files"]] == [
        f"{f}_1_{c}.gz" for c in (1, 2) for f in FIELDS
    ]
    one, two = ({f: load_released(game_dir / f"{f}_1_{c}.gz") for f in FIELDS} for c in (1, 2))
    written = 300 - 9  # the released deque holds back delay - 1 = 9 transitions
    assert not one["observation"][written:].any() and one["observation"][:written].mean() > 10  # real frames
    # the second dump (591 written: the ring wrapped) holds the first dump's transitions 91..290 where it had
    # them, and newer ones in rows 0..90
    assert np.array_equal(two["observation"][91:written], one["observation"][91:written])
    assert np.array_equal(two["action"][91:written], one["action"][91:written])
    assert not np.array_equal(two["observation"][:91], one["observation"][:91])
    assert set(np.unique(two["action"])) <= set(range(5))  # basic_math's released set: 5 actions, no NOOP
    assert set(np.unique(two["reward"])) <= {-1.0, 0.0, 1.0}


def test_the_logged_buffer_ingests_with_the_released_layout(released_way, tmp_path):
    dataset = tmp_path / "far_ood_nature.yaml"
    dataset.write_text(
        "games: [basic_math]\nruns: [1]\nckpts: [2]\nsamples_per_ckpt: 400\nlayout: atari_pb_far_ood\n"
    )
    src = released_way / "data/replay/far_ood_released"
    for cmd in (["ingest", src, tmp_path / "shards", "--dataset", dataset], ["verify", tmp_path / "shards"]):
        proc = subprocess.run(
            [sys.executable, "-m", "atari_pb", *map(str, cmd)], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    (shard,) = (tmp_path / "shards").rglob("*.h5")
    logged = {f: load_released(src / "BasicMath" / f"{f}_1_2.gz") for f in FIELDS}
    with h5py.File(shard) as f:
        assert np.array_equal(f["observation"][:], logged["observation"][:400])
        assert np.array_equal(f["action"][:], logged["action"][:400].astype(np.int32))


def test_pretraining_refuses_the_nature_preset(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "atari_pb", "pretrain", "--objective", "mae", "--data", str(tmp_path),
         "--out", str(tmp_path / "run"), "--preset", "nature", "--steps", "2"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2 and "model.preset=nature" in proc.stderr and "valid: resnet50" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_buffer_log_state_survives_a_checkpoint(tmp_path):
    """What a Rainbow checkpoint saves of the log (all but the frames, which travel through the mirror)
    continues it exactly after torch.save / torch.load(weights_only=True)."""
    cfg = BufferLogConfig(str(tmp_path), every=1000, size=5, delay=3)

    def step(log: BufferLog, k: int) -> None:
        log.add(
            np.full((84, 84), k + 1, np.uint8), np.int64(k % 4), np.float64(1.0), np.bool_(k % 2), step=k + 1
        )

    live = BufferLog(cfg, get_game("klax"), run=1)
    for k in range(7):
        step(live, k)
    assert sorted(live.slots_written_since(3).tolist()) == sorted(k % 5 for k in range(3, live.written))
    torch.save(live.state_dict(), tmp_path / "log.pt")
    resumed = BufferLog(cfg, get_game("klax"), run=1)
    resumed.load_state_dict(torch.load(tmp_path / "log.pt", weights_only=True))
    resumed.frames[:] = live.frames  # the mirror's part
    for k in range(7, 12):
        step(live, k)
        step(resumed, k)
    assert resumed.written == live.written == 12 - 2
    for name in ("frames", "actions", "rewards", "dones"):
        assert np.array_equal(getattr(resumed, name), getattr(live, name)), name
