"""Every registered objective learns: on a fixed small batch of real frames its loss falls over a few
dozen steps with the tiny preset, its metrics stay finite, and its checkpoint round-trips exactly."""

from __future__ import annotations

import pytest
import torch

from atari_pb.augment import BatchRandom
from atari_pb.data import ShardSet
from atari_pb.models.ema import ema_update
from atari_pb.models.encoder import Encoder
from atari_pb.objectives import OBJECTIVES, objective_class
from atari_pb.pretrain.checkpoint import load_checkpoint, save_checkpoint
from atari_pb.pretrain.config import load_pretrain_config, objective_yaml

BATCH = 16
STEPS = 40


def build(name: str, seed: int = 0):
    torch.manual_seed(seed)
    cfg = load_pretrain_config(name, ["model.preset=tiny"])
    objective = objective_class(name)(cfg.objective, Encoder(cfg.model), cfg.model.num_actions)
    return cfg, objective


@pytest.fixture(scope="module")
def shards(shard_dir):
    return ShardSet(shard_dir)


def fixed_batch(shards, objective):
    s = objective.sample_spec()
    return shards.sample(
        BATCH,
        s.frames,
        s.t_step,
        s.n_step,
        s.gamma,
        seed=1,
        random_future=s.random_future,
        extra_offsets=s.extra_offsets,
    )


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_ships_a_yaml(name):
    assert objective_yaml(name) is not None, f"objectives/{name}.yaml is missing"


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_loss_falls_on_a_fixed_batch(name, shards):
    cfg, objective = build(name)
    batch = fixed_batch(shards, objective)
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    losses = []
    for step in range(STEPS):
        rand = BatchRandom.for_batch(0, 0, BATCH)  # the same draw every step: a fixed task to fit
        loss, metrics = objective(batch, rand)
        assert torch.isfinite(loss), (name, step)
        assert all(torch.isfinite(v).all() for v in metrics.values()), (name, step, metrics)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        ema_update(objective.ema_pairs(), objective.ema_tau(step / STEPS))
        losses.append(loss.item())
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.1 * abs(first), f"{name}: loss {first:.4f} -> {last:.4f} did not fall"


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_checkpoint_round_trips(name, shards, tmp_path):
    _, objective = build(name, seed=1)
    _, other = build(name, seed=2)
    save_checkpoint(tmp_path / "ckpt.pt", {"model": objective.state_dict()})
    other.load_state_dict(load_checkpoint(tmp_path / "ckpt.pt")["model"])
    batch = fixed_batch(shards, objective)
    with torch.no_grad():
        a, _ = objective(batch, BatchRandom.for_batch(3, 3, BATCH))
        b, _ = other(batch, BatchRandom.for_batch(3, 3, BATCH))
    assert torch.equal(a, b)
    for (ka, va), (kb, vb) in zip(objective.state_dict().items(), other.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_bf16_autocast_step(name, shards):
    """`trainer.bf16=true` runs every objective under autocast: one step must work and stay finite."""
    _, objective = build(name)
    batch = fixed_batch(shards, objective)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, metrics = objective(batch, BatchRandom.for_batch(0, 0, BATCH))
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in objective.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_trainable_parameter_gets_a_gradient(name, shards):
    """DDP averages gradients parameter by parameter and expects every trainable one to get a gradient."""
    _, objective = build(name)
    loss, _ = objective(fixed_batch(shards, objective), BatchRandom.for_batch(0, 0, BATCH))
    loss.backward()
    unused = [n for n, p in objective.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []
    frozen = {n for n, p in objective.named_parameters() if not p.requires_grad}
    assert all(any(n.startswith(t) for t in ("target", "momentum")) for n in frozen) or not frozen, frozen
