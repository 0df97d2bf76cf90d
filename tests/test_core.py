"""The shared run machinery (atari_pb/core): checkpoint kinds and the same-run check, episode bookkeeping,
the timing hook, the device rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atari_pb.core.checkpoint import kept_note, load_checkpoint, same_run, save_checkpoint
from atari_pb.core.device import pick_device
from atari_pb.core.episodes import EpisodeTracker
from atari_pb.core.timing import NO_TIMING, Sections
from atari_pb.errors import DataError, UsageError


def test_checkpoints_carry_their_kind_and_refuse_another(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt.pt", "prend", {"step": 3, "w": torch.arange(4.0)})
    state = load_checkpoint(path, "prend")
    assert state["kind"] == "prend" and state["step"] == 3 and torch.equal(state["w"], torch.arange(4.0))
    assert load_checkpoint(path)["kind"] == "prend"  # no kind asked: any
    with pytest.raises(UsageError, match=r"ckpt.pt is a prend checkpoint, not a pretrain one"):
        load_checkpoint(path, "pretrain")
    assert kept_note(path) == f"the last good checkpoint ({path}, step 3) is kept"
    assert kept_note(tmp_path / "none.pt") == "no checkpoint was written yet"
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="bad.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")
    torch.save({"step": 1}, tmp_path / "foreign.pt")
    with pytest.raises(DataError, match="foreign.pt: not an atari-pb checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt", "ckpt.pt", "foreign.pt"]  # no temp left


def test_same_run_names_the_first_differing_key():
    saved = {"optim": {"lr": 1e-3, "eps": 1e-8}, "trainer": {"seed": 0, "steps": 10}}
    same_run(
        "run", saved, {"optim": {"lr": 1e-3, "eps": 1e-8}, "trainer": {"seed": 0, "steps": 99}}, ["optim"]
    )
    with pytest.raises(UsageError, match=r"^run: the run was made with optim.eps=1e-08, not 1e-06$"):
        same_run("run", saved, {"optim": {"lr": 1e-3, "eps": 1e-6}, "trainer": saved["trainer"]}, ["optim"])
    with pytest.raises(UsageError, match=r"the run was made with trainer.seed=0, not 1$"):
        same_run("run", saved, {**saved, "trainer": {"seed": 1, "steps": 10}}, [], ["trainer.seed"])


def test_episode_tracker_matches_a_hand_count():
    rng = np.random.default_rng(0)
    rewards = rng.integers(-1, 3, (50, 3)).astype(np.float64)
    ends = rng.random((50, 3)) < 0.1
    tracker = EpisodeTracker(3)
    got = [ep for t in range(50) for ep in tracker.step(rewards[t], ends[t])]
    expected = []
    for i in range(3):
        start = 0
        for t in np.flatnonzero(ends[:, i]):
            expected.append((int(t), i, float(rewards[start : t + 1, i].sum()), int(t + 1 - start)))
            start = t + 1
    expected = [(i, ret, length) for _, i, ret, length in sorted(expected)]
    assert got == expected


def test_sections_time_calls_and_the_no_op_does_not():
    sections = Sections()
    for _ in range(3):
        with sections("work"):
            sum(range(1000))
    sections.keep(replay="r")
    assert len(sections.calls["work"]) == 3 and all(d >= 0 for _, d in sections.calls["work"])
    assert sections.kept == {"replay": "r"}
    with NO_TIMING("work"):
        pass
    NO_TIMING.keep(replay="r")
    assert not NO_TIMING.calls and not NO_TIMING.kept


def test_device_rule():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type in ("cpu", "cuda")
    with pytest.raises(
        UsageError, match=r"trainer.device='tpu': not a device; valid: auto, cpu, cuda, cuda:N"
    ):
        pick_device("tpu", "trainer.device")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA device here"):
            pick_device("cuda")
