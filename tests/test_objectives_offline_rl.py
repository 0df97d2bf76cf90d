"""CQL and Decision Transformer: the C51 projection against a plain numpy C51, the double-Q target and the
CQL penalty on hand-made Q tables, DT's causality, and that a batch's loss is the mean of its halves' (what
two DDP ranks compute)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from atari_pb.augment import BatchRandom
from atari_pb.models.distributional import project_distribution, select_greedy
from atari_pb.models.encoder import Encoder, ModelConfig
from atari_pb.objectives.cql import CQL, CQLConfig, cql_penalty
from atari_pb.objectives.dt import DT, DTConfig

SUPPORT = np.linspace(-10.0, 10.0, 51)  # delta z = 0.4


def numpy_projection(probs: np.ndarray, ret: np.ndarray, discount: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Bellemare et al. 2017, Algorithm 1, one atom at a time."""
    v_min, v_max, k = z[0], z[-1], len(z)
    dz = (v_max - v_min) / (k - 1)
    m = np.zeros_like(probs)
    for b in range(len(probs)):
        for j in range(k):
            tz = min(max(ret[b] + discount[b] * z[j], v_min), v_max)
            pos = (tz - v_min) / dz
            lo, hi = math.floor(pos), math.ceil(pos)
            if lo == hi:
                m[b, lo] += probs[b, j]
            else:
                m[b, lo] += probs[b, j] * (hi - pos)
                m[b, hi] += probs[b, j] * (pos - lo)
    return m


def tiny_encoder(seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    return Encoder(ModelConfig(preset="tiny"))


# ---------------------------------------------------------------------------------------------- CQL
def test_projection_matches_numpy_c51():
    rng = np.random.default_rng(0)
    gamma3 = 0.99**3
    cases = [  # (ret, discount = gamma^n (1 - done))
        (0.0, 1.0),  # every atom lands on a support point
        (0.4, 1.0),  # shifted by exactly one spacing; the top atom falls past v_max
        (1.0, gamma3),  # between support points
        (-0.37, gamma3),
        (25.0, gamma3),  # every atom above v_max
        (-12.5, 0.5),  # partly below v_min
        (0.2, 0.0),  # done: all mass at ret, halfway between 0.0 and 0.4
        (0.4, 0.0),  # done, exactly on a support point
        (-11.0, 0.0),  # done, outside the support
        (1.0, 0.5),  # every atom inside the support
    ]
    ret = np.array([r for r, _ in cases])
    discount = np.array([d for _, d in cases])
    probs = rng.dirichlet(np.ones(51), len(cases))
    got = project_distribution(
        torch.from_numpy(probs), torch.from_numpy(ret), torch.from_numpy(discount), torch.from_numpy(SUPPORT)
    ).numpy()
    np.testing.assert_allclose(got, numpy_projection(probs, ret, discount, SUPPORT), atol=1e-9)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-12)
    # with no atom clipped the projection keeps the mean: sum_i m_i z_i = ret + discount * E[z]
    np.testing.assert_allclose(got[9] @ SUPPORT, ret[9] + discount[9] * probs[9] @ SUPPORT, atol=1e-9)
    half = np.zeros(51)
    half[25] = half[26] = 0.5
    np.testing.assert_allclose(got[6], half, atol=1e-12)
    np.testing.assert_allclose(got[7], np.eye(51)[26], atol=1e-12)
    np.testing.assert_allclose(got[8], np.eye(51)[0], atol=1e-12)
    np.testing.assert_allclose(got[4], np.eye(51)[50], atol=1e-12)


def test_select_greedy_picks_with_online_and_evaluates_with_target():
    online = torch.tensor([[1.0, 5.0, 2.0], [3.0, 0.0, 0.0]])
    target = torch.tensor([[10.0, -1.0, 7.0], [4.0, 9.0, 8.0]])
    assert torch.equal(select_greedy(online, target), torch.tensor([-1.0, 4.0]))
    # distributions (B, A, K): the whole row of the selected action
    dist = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    assert torch.equal(select_greedy(online, dist), torch.stack([dist[0, 1], dist[1, 0]]))


def test_cql_penalty_by_hand():
    q = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    action = torch.tensor([0, 2])
    expected = (math.log(math.e + math.e**2 + math.e**3) - 1.0 + math.log(3.0)) / 2
    assert cql_penalty(q, action).item() == pytest.approx(expected, rel=1e-6)


def hand_batch(b: int, t: int = 1) -> dict[str, torch.Tensor]:
    """obs all 0 and next_obs all 255, so a stub can tell which one it is given."""
    g = torch.Generator().manual_seed(5)
    return {
        "obs": torch.zeros(b, t, 4, 84, 84, dtype=torch.uint8),
        "next_obs": torch.full((b, t, 4, 84, 84), 255, dtype=torch.uint8),
        "action": torch.randint(0, 4, (b, t), generator=g),
        "ret": torch.randn(b, t, generator=g),
        "done": torch.tensor([[0.0], [1.0], [0.0], [0.0]]),
        "game_id": torch.tensor([[0], [7], [7], [59]]),
        "offset": torch.full((b,), 3),
    }


@pytest.mark.parametrize("double_q", [True, False])
@pytest.mark.parametrize("variant", ["mse", "c51"])
def test_cql_loss_on_hand_made_q_tables(variant, double_q, monkeypatch):
    """The whole forward with the network replaced by fixed tables: online Q(s), online Q(s') and target
    Q(s') chosen so that the online and the target argmax at s' differ."""
    atoms = 51 if variant == "c51" else 1
    cfg = CQLConfig(variant=variant, augment=False, double_q=double_q)
    obj = CQL(cfg, tiny_encoder(), num_actions=4)
    b, a = 4, 4
    g = torch.Generator().manual_seed(1)
    tables = {
        name: torch.randn(b, a, atoms, generator=g) * 2 for name in ("now", "online_next", "target_next")
    }
    if variant == "mse":
        tables["online_next"][:, :, 0] = torch.tensor([[0, 3, 1, 2]] * b, dtype=torch.float32)
        tables["target_next"][:, :, 0] = torch.tensor([[5, -1, 2, 0]] * b, dtype=torch.float32)

    def stub(encoder, head, x, game):
        if x.max() == 0:  # obs
            assert head is obj.head and encoder is obj.encoder
            return tables["now"]
        return tables["online_next" if head is obj.head else "target_next"]

    monkeypatch.setattr(obj, "q_logits", stub)
    batch = hand_batch(b)
    loss, metrics = obj(batch, BatchRandom.for_batch(0, 0, b))

    # the same loss from the tables, independently
    action, ret = batch["action"][:, 0], batch["ret"][:, 0].double()
    discount = 0.99**3 * (1 - batch["done"][:, 0].double())
    now, on_next, tg_next = (tables[k].double() for k in ("now", "online_next", "target_next"))
    z = torch.from_numpy(SUPPORT)

    def expected_q(t: torch.Tensor) -> torch.Tensor:
        return t[..., 0] if variant == "mse" else (t.softmax(-1) * z).sum(-1)

    pick = (expected_q(on_next) if double_q else expected_q(tg_next)).argmax(-1)
    assert (expected_q(on_next).argmax(-1) != expected_q(tg_next).argmax(-1)).any()  # the test can tell
    q = expected_q(now)
    if variant == "mse":
        y = ret + discount * tg_next[torch.arange(b), pick, 0]
        td = ((q[torch.arange(b), action] - y) ** 2).mean()
    else:
        p_next = tg_next.softmax(-1)[torch.arange(b), pick].numpy()
        m = torch.from_numpy(numpy_projection(p_next, ret.numpy(), discount.numpy(), SUPPORT))
        log_p = now[torch.arange(b), action].log_softmax(-1)
        td = (torch.xlogy(m, m) - m * log_p).sum(-1).mean()  # KL(m || p)
    penalty = (torch.logsumexp(q, -1) - q[torch.arange(b), action]).mean()
    assert metrics["td"].item() == pytest.approx(td.item(), rel=1e-5, abs=1e-6)
    assert metrics["cql"].item() == pytest.approx(penalty.item(), rel=1e-5)
    assert loss.item() == pytest.approx((td + 0.1 * penalty).item(), rel=1e-5)


def test_cql_target_stays_fixed_as_released_or_is_a_fixed_tau_ema_copy():
    released = CQL(CQLConfig(), tiny_encoder(), 18)
    assert released.ema_pairs() == [] and not released.cfg.double_q  # never updated; the target picks
    for p, q in zip(released.encoder.parameters(), released.target_encoder.parameters()):
        assert torch.equal(p, q) and not q.requires_grad  # a copy of the initial weights
    obj = CQL(CQLConfig(update_target=True), tiny_encoder(), 18)
    assert obj.sample_spec().n_step == 3 and obj.sample_spec().gamma == 0.99
    assert obj.ema_tau(0.0) == obj.ema_tau(1.0) == 0.99
    pairs = obj.ema_pairs()
    assert [(on, tg) for on, tg in pairs] == [(obj.encoder, obj.target_encoder), (obj.head, obj.target_head)]
    for online, target in pairs:
        assert not any(p.requires_grad for p in target.parameters())
        for p, q in zip(online.parameters(), target.parameters()):
            assert torch.equal(p, q)
    assert obj.head.out_dim == 18 * 51


def random_batch(b: int, t: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "obs": torch.randint(0, 256, (b, t, 4, 84, 84), dtype=torch.uint8, generator=g),
        "next_obs": torch.randint(0, 256, (b, t, 4, 84, 84), dtype=torch.uint8, generator=g),
        "action": torch.randint(0, 18, (b, t), generator=g),
        "ret": torch.randint(-1, 2, (b, t), generator=g).float(),
        "done": (torch.rand(b, t, generator=g) < 0.3).float(),
        "rtg": torch.randint(0, 30, (b, t), generator=g).float(),
        "game_id": torch.randint(0, 60, (b, 1), generator=g).expand(b, t).contiguous(),
        "offset": torch.full((b,), 3),
    }


def halves_match_whole(obj, batch: dict[str, torch.Tensor]) -> None:
    """Two DDP ranks each see half the rows and their slice of the global random draws; the per-rank
    losses average to the one-process loss (the objective has no cross-sample terms)."""
    b = len(batch["action"])
    with torch.no_grad():
        whole, _ = obj(batch, BatchRandom(3, 7, slice(None), b))
        halves = [
            obj({k: v[rows] for k, v in batch.items()}, BatchRandom(3, 7, rows, b))[0]
            for rows in (slice(0, b // 2), slice(b // 2, b))
        ]
    assert whole.item() == pytest.approx(((halves[0] + halves[1]) / 2).item(), rel=1e-5)


def test_cql_halves_of_a_batch_average_to_the_whole():
    halves_match_whole(CQL(CQLConfig(), tiny_encoder(), 18), random_batch(6, 1))


# ---------------------------------------------------------------------------------------------- DT
def small_dt() -> DT:
    cfg = DTConfig(t_step=4, depth=2, heads=2, mlp_ratio=2.0)  # width = the tiny encoder's 64
    return DT(cfg, tiny_encoder(), 18).eval()


def test_dt_is_causal():
    """Step t's action prediction sees R_<=t, s_<=t and a_<t: nothing later, not its own action."""
    dt = small_dt()
    b, t = 2, 4
    batch = random_batch(b, t, seed=2)
    x = DT.stack(batch["obs"]).float() / 255
    action, rtg, game = batch["action"], batch["rtg"], batch["game_id"]

    def logits(x=x, action=action, rtg=rtg):
        with torch.no_grad():
            return dt.action_logits(x, action, rtg, game)

    base = logits()

    def changed(out: torch.Tensor) -> list[bool]:
        return [not torch.allclose(out[:, s], base[:, s], atol=1e-6) for s in range(t)]

    later = action.clone()
    later[:, 2:] = (later[:, 2:] + 1) % 18  # a_2, a_3
    later_rtg = rtg.clone()
    later_rtg[:, 3] += 50.0
    later_x = x.view(b, t, 4, 84, 84).clone()
    later_x[:, 3] = 1.0 - later_x[:, 3]
    assert changed(logits(action=later)) == [False, False, False, True]
    assert changed(logits(rtg=later_rtg)) == [False, False, False, True]
    assert changed(logits(x=later_x.flatten(0, 1))) == [False, False, False, True]

    earlier = action.clone()
    earlier[:, 0] = (earlier[:, 0] + 1) % 18  # a_0
    earlier_rtg = rtg.clone()
    earlier_rtg[:, 1] += 50.0  # R_1
    earlier_x = x.view(b, t, 4, 84, 84).clone()
    earlier_x[:, 0] = 1.0 - earlier_x[:, 0]  # s_0
    assert changed(logits(action=earlier)) == [False, True, True, True]
    assert changed(logits(rtg=earlier_rtg)) == [False, True, True, True]
    assert changed(logits(x=earlier_x.flatten(0, 1))) == [True, True, True, True]


def test_dt_loss_is_cross_entropy_over_every_step():
    dt = small_dt()
    batch = random_batch(2, 4, seed=3)
    spec = dt.sample_spec()
    assert (spec.t_step, spec.n_step) == (4, 0)
    with torch.no_grad():
        loss, metrics = dt(batch, BatchRandom.for_batch(0, 0, 2))
        x = dt.view(batch["obs"], BatchRandom.for_batch(0, 0, 2))  # the same draw: the same views
        logits = dt.action_logits(x, batch["action"], batch["rtg"], batch["game_id"])
    expected = -logits.log_softmax(-1).gather(-1, batch["action"][..., None]).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() == pytest.approx(
        F.cross_entropy(logits.flatten(0, 1), batch["action"].flatten()).item()
    )
    assert 0.0 <= metrics["acc"].item() <= 1.0


def test_dt_halves_of_a_batch_average_to_the_whole():
    halves_match_whole(small_dt(), random_batch(4, 4, seed=4))
