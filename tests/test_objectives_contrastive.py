"""atc, r3m and proto: their losses against hand computations on tiny tensors, the masking of samples
whose window holds an episode end, Sinkhorn-Knopp against an independent numpy version, and DDP: two
ranks simulated in threads (with all-gather / all-reduce done through a barrier) reproduce one process's
loss and gradients over the whole batch."""

from __future__ import annotations

import copy
import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from atari_pb.augment import BatchRandom
from atari_pb.errors import UsageError
from atari_pb.models.encoder import Encoder
from atari_pb.objectives import atc, objective_class, proto, r3m
from atari_pb.pretrain.config import load_pretrain_config


class TwoRanks:
    """Fake collectives for ranks run as threads: every call waits for all ranks' tensors."""

    def __init__(self, size: int = 2):
        self.size = size
        self.barrier = threading.Barrier(size, timeout=60)
        self.slots: list[torch.Tensor | None] = [None] * size
        self.local = threading.local()

    def world(self) -> tuple[int, int]:
        return self.local.rank, self.size

    def _exchange(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.slots[self.local.rank] = x.detach().clone()
        self.barrier.wait()
        parts = list(self.slots)
        self.barrier.wait()  # all have read before anyone writes the next call's tensor
        return parts

    def gather_keys(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self._exchange(x))

    def all_sum(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack(self._exchange(x)).sum(0)

    def run(self, monkeypatch, fn, per_rank_args: list[tuple]) -> list:
        for module in (atc, r3m, proto):
            for name in ("world", "gather_keys", "all_sum"):
                if hasattr(module, name):
                    monkeypatch.setattr(module, name, getattr(self, name))

        def call(rank: int):
            self.local.rank = rank
            return fn(*per_rank_args[rank])

        with ThreadPoolExecutor(self.size) as pool:
            return list(pool.map(call, range(self.size)))


def build(name: str, overrides: tuple[str, ...] = ()):
    torch.manual_seed(0)
    cfg = load_pretrain_config(name, ["model.preset=tiny", *overrides])
    return objective_class(name)(cfg.objective, Encoder(cfg.model), cfg.model.num_actions)


def synthetic_batch(objective, b: int, done_rows: tuple[int, ...] = ()) -> dict[str, torch.Tensor]:
    """Random frames in the layout the sampler delivers for the objective's spec (T = 1)."""
    spec = objective.sample_spec()
    g = torch.Generator().manual_seed(5)

    def frames(*lead: int) -> torch.Tensor:
        return torch.randint(0, 256, (*lead, 1, spec.frames, 84, 84), generator=g, dtype=torch.uint8)

    done = torch.zeros(b, 1)
    done[list(done_rows)] = 1.0
    batch = {
        "obs": frames(b),
        "next_obs": frames(b),
        "done": done,
        "game_id": torch.randint(0, 3, (b, 1), generator=g),
    }
    if spec.extra_offsets:
        batch["extra_obs"] = frames(b, len(spec.extra_offsets))
    return batch


def ce(logits: list[float], target: int) -> float:
    return -logits[target] + math.log(sum(math.exp(v) for v in logits))


# ----------------------------------------------------------------------------------------------- atc
def test_atc_loss_matches_hand_computation():
    query = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    keys = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    t = 0.5
    row0 = ce([1.0 / t, 0.0 / t], 0)
    row1 = ce([2.0 / t, 2.0 / t], 1)
    loss, metrics = atc.atc_loss(query, keys, torch.tensor([True, True]), t)
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    assert metrics["acc"].item() == pytest.approx(0.5)  # row 1 ties: argmax takes key 0
    loss, _ = atc.atc_loss(query, keys, torch.tensor([True, False]), t)
    assert loss.item() == pytest.approx(row0, rel=1e-6)


def test_atc_masked_rows_contribute_nothing():
    g = torch.Generator().manual_seed(0)
    query = torch.randn(4, 3, generator=g, requires_grad=True)
    keys = torch.randn(4, 3, generator=g)
    valid = torch.tensor([True, False, True, False])
    loss, _ = atc.atc_loss(query, keys, valid, 1.0)
    loss.backward()
    assert query.grad[~valid].abs().max() == 0 and query.grad[valid].abs().max() > 0
    moved = query.detach().clone()
    moved[1] += 10.0
    assert atc.atc_loss(moved, keys, valid, 1.0)[0].item() == pytest.approx(loss.item(), rel=1e-6)
    # nothing valid: a finite 0 with a zero gradient (DDP still sees every parameter used)
    query.grad = None
    none, _ = atc.atc_loss(query, keys, torch.zeros(4, dtype=torch.bool), 1.0)
    none.backward()
    assert none.item() == 0.0 and torch.isfinite(query.grad).all() and query.grad.abs().max() == 0


@pytest.mark.parametrize("name", ["atc", "r3m"])
def test_done_samples_are_ignored_by_forward(name):
    objective = build(name)
    batch = synthetic_batch(objective, 4, done_rows=(2,))
    rand = lambda: BatchRandom.for_batch(0, 0, 4)  # noqa: E731
    with torch.no_grad():
        before, metrics = objective(batch, rand())
        moved = dict(batch, obs=batch["obs"].clone())
        moved["obs"][2] = 255 - moved["obs"][2]  # a done sample's anchor: no say in the loss
        after, _ = objective(moved, rand())
        moved["obs"][1] = 255 - moved["obs"][1]  # a valid one's: changes it
        changed, _ = objective(moved, rand())
    assert after.item() == pytest.approx(before.item(), rel=1e-6)
    assert changed.item() != pytest.approx(before.item(), rel=1e-6)
    assert metrics["valid"].item() == pytest.approx(0.75)


# ----------------------------------------------------------------------------------------------- r3m
def test_r3m_loss_matches_hand_computation():
    anchor = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pos = torch.tensor([[1.0, 2.0], [3.0, 1.0]])
    neg = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    t = 2.0
    # [own positive, own negative, the other samples' positives (its own one left out)]
    row0 = ce([1.0 / t, 0.0 / t, 3.0 / t], 0)
    row1 = ce([1.0 / t, 0.0 / t, 2.0 / t], 0)
    loss, metrics = r3m.r3m_loss(anchor, pos, neg, torch.tensor([True, True]), t)
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    assert metrics["acc"].item() == 0.0  # both anchors prefer another sample's positive
    loss, _ = r3m.r3m_loss(anchor, pos, neg, torch.tensor([False, True]), t)
    assert loss.item() == pytest.approx(row1, rel=1e-6)


def test_r3m_penalties_are_r3m_norms_of_the_embedding():
    batch = synthetic_batch(build("r3m"), 4)
    plain = build("r3m")
    penalised = build("r3m", ("objective.l1_weight=0.01", "objective.l2_weight=0.1"))
    with torch.no_grad():
        base, _ = plain(batch, BatchRandom.for_batch(0, 0, 4))
        loss, metrics = penalised(batch, BatchRandom.for_batch(0, 0, 4))
        # the same draws: view 1 is the anchor's
        z = plain.encoder(plain.view(batch["obs"], BatchRandom.for_batch(0, 0, 4)), plain.game_ids(batch))
    l1, l2 = z.abs().sum(-1).mean(), z.pow(2).sum(-1).sqrt().mean()
    assert metrics["l1"].item() == pytest.approx(l1.item(), rel=1e-5)
    assert metrics["l2"].item() == pytest.approx(l2.item(), rel=1e-5)
    assert loss.item() == pytest.approx(base.item() + 0.01 * l1.item() + 0.1 * l2.item(), rel=1e-5)


def test_sample_specs_and_config_checks():
    a, r, p = (build(n).sample_spec() for n in ("atc", "r3m", "proto"))
    assert (a.n_step, a.random_future) == (3, False)  # released: the key exactly 3 steps ahead
    assert build("atc", ("objective.random_future=true",)).sample_spec().random_future
    assert (r.n_step, r.extra_offsets, r.random_future) == (6, [3], False)
    assert (p.n_step, p.random_future) == (1, False)
    with pytest.raises(UsageError):
        build("r3m", ("objective.pos_step=6",))


# --------------------------------------------------------------------------------------------- proto
def sinkhorn_numpy(logits: np.ndarray, iters: int) -> np.ndarray:
    """Proto-RL's layout: Q = exp(scores)^T (K, B), rows to 1/K then columns to 1/B, columns to 1 at last."""
    q = np.exp(logits - logits.max()).T
    q /= q.sum()
    k, b = q.shape
    for _ in range(iters):
        q *= (1.0 / k) / q.sum(axis=1, keepdims=True)
        q *= (1.0 / b) / q.sum(axis=0, keepdims=True)
    return (q / q.sum(axis=0, keepdims=True)).T


def test_sinkhorn_matches_numpy_and_balances_prototypes():
    logits = torch.randn(6, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    q = proto.sinkhorn(logits, 3)
    np.testing.assert_allclose(q.numpy(), sinkhorn_numpy(logits.numpy(), 3), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(
        q.sum(1), torch.ones(6, dtype=q.dtype), rtol=0, atol=1e-9
    )  # every sample: mass 1
    # every prototype tends to mass B/K; three iterations already balance better than a softmax
    uniform = torch.full((5,), 6 / 5, dtype=q.dtype)
    converged = proto.sinkhorn(logits, 300)
    torch.testing.assert_close(converged.sum(0), uniform, rtol=0, atol=1e-4)
    softmax_gap = (logits.softmax(1).sum(0) - uniform).abs().max()
    assert (q.sum(0) - uniform).abs().max() < 0.5 * softmax_gap


def test_sinkhorn_marginals_are_global_over_ranks(monkeypatch):
    logits = torch.randn(8, 5, generator=torch.Generator().manual_seed(2)) * 4
    full = proto.sinkhorn(logits, 3)
    halves = TwoRanks().run(monkeypatch, proto.sinkhorn, [(logits[:4], 3), (logits[4:], 3)])
    torch.testing.assert_close(torch.cat(halves), full, rtol=1e-5, atol=1e-7)


def test_intrinsic_loss_matches_hand_computation():
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    protos = (protos / protos.norm(dim=1, keepdim=True)).requires_grad_()
    s = 1 / math.sqrt(2)  # c0.c2 = c1.c2; c0.c1 = 0
    loss = proto.intrinsic_loss(protos)
    assert loss.item() == pytest.approx(4 * s / (s + 1.5) / 9, rel=1e-6)
    loss.backward()
    # one factor and the weights detached: d/dc_i = sum_{j != i} c_j / (c_i.c_j + 1.5) / K^2
    c = protos.detach()
    sim = c @ c.T
    expected = torch.stack([sum(c[j] / (sim[i, j] + 1.5) for j in range(3) if j != i) / 9 for i in range(3)])
    torch.testing.assert_close(protos.grad, expected)


def test_proto_loss_is_kl_to_the_assignments():
    objective = build("proto")
    batch = synthetic_batch(objective, 4)
    with torch.no_grad():
        loss, m = objective(batch, BatchRandom.for_batch(0, 0, 4))
    assert m["assign_entropy"].item() <= math.log(512) + 1e-4
    assert m["ce"].item() >= m["assign_entropy"].item()  # cross-entropy >= entropy
    alpha = objective.cfg.alpha
    kl = m["ce"] - m["assign_entropy"]
    assert loss.item() == pytest.approx((kl + alpha * m["intr"]).item(), rel=1e-5)


# ----------------------------------------------------------------------------------------------- DDP
@pytest.mark.parametrize("name, done_rows", [("atc", (0, 1, 6)), ("r3m", (3,)), ("proto", ())])
def test_two_ranks_reproduce_one_process(name, done_rows, monkeypatch):
    """Ranks with unequal numbers of done samples: DDP's mean of the ranks' losses and gradients is
    the whole batch's loss and gradient in one process."""
    b = 8
    objective = build(name)
    batch = synthetic_batch(objective, b, done_rows)

    def step(model, part, rows):
        loss, _ = model(part, BatchRandom(0, 3, rows, b))
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full_loss, full_grads = step(copy.deepcopy(objective), batch, slice(None))
    args = []
    for rank in range(2):
        rows = slice(rank * b // 2, (rank + 1) * b // 2)
        args.append((copy.deepcopy(objective), {k: v[rows] for k, v in batch.items()}, rows))
    (loss0, grads0), (loss1, grads1) = TwoRanks().run(monkeypatch, step, args)
    torch.testing.assert_close((loss0 + loss1) / 2, full_loss, rtol=1e-5, atol=1e-6)
    assert grads0.keys() == full_grads.keys()
    for key, grad in full_grads.items():
        torch.testing.assert_close((grads0[key] + grads1[key]) / 2, grad, rtol=1e-4, atol=1e-6, msg=key)
