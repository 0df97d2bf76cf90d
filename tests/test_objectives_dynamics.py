"""SPR, IDM and SPR+IDM: the transition model, the losses against hand computations, DDP equivalence of the
cross-sample terms, and the composition of spr_idm."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from atari_pb.augment import BatchRandom
from atari_pb.models.encoder import Encoder, ModelConfig
from atari_pb.objectives import idm as idm_module
from atari_pb.objectives import spr as spr_module
from atari_pb.objectives.idm import IDM, IDMConfig, InverseHead, action_loss
from atari_pb.objectives.spr import SPR, SPRConfig, Transition, spr_loss
from atari_pb.objectives.spr_idm import SPRIDM, SPRIDMConfig
from atari_pb.pretrain.config import load_pretrain_config

A = 18


def tiny_encoder(seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    return Encoder(ModelConfig(preset="tiny"))


def sequence_batch(b: int = 3, t: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "obs": torch.randint(0, 256, (b, t, 4, 84, 84), generator=g, dtype=torch.uint8),
        "next_obs": torch.randint(0, 256, (b, t, 4, 84, 84), generator=g, dtype=torch.uint8),
        "action": torch.randint(0, A, (b, t), generator=g),
        "game_id": torch.tensor([3, 7, 3, 11, 0, 59][:b])[:, None].expand(b, t).contiguous(),
        "done": torch.zeros(b, t),
    }


# ---------------------------------------------------------------------------------------------- SPR
def test_transition_matches_the_rnn_recurrence_by_hand():
    torch.manual_seed(0)
    model = Transition(dim=5, num_actions=A)
    z0, action, game = (
        torch.randn(2, 5),
        torch.tensor([[1, 4, 2], [0, 17, 17]]),
        torch.tensor([[2] * 3, [9] * 3]),
    )
    out = model(z0, action, game)
    c, h = model.cell, z0
    for k in range(3):
        e = model.action_embed.weight[action[:, k] + A * game[:, k]]
        h = torch.tanh(e @ c.weight_ih.T + c.bias_ih + h @ c.weight_hh.T + c.bias_hh)
        torch.testing.assert_close(out[:, k], h)


def test_transition_rollout_depends_on_the_actions_and_the_game():
    torch.manual_seed(0)
    model = Transition(dim=8, num_actions=A)
    z0, game = torch.randn(4, 8), torch.full((4, 4), 5)
    a = torch.randint(0, A, (4, 4))
    b = a.clone()
    b[:, 2] = (b[:, 2] + 1) % A  # a different third action
    out_a, out_b = model(z0, a, game), model(z0, b, game)
    torch.testing.assert_close(out_a[:, :2], out_b[:, :2])  # the past does not see the future action
    assert (out_a[:, 2:] - out_b[:, 2:]).abs().amax(-1).min() > 1e-4  # every later step does
    assert not torch.allclose(model(z0, a, game + 1), out_a)  # the same index is another button elsewhere


def test_spr_objective_prediction_changes_with_the_actions_but_not_the_targets():
    spr = SPR(SPRConfig(), tiny_encoder(), A)
    batch = sequence_batch()
    other = dict(batch, action=(batch["action"] + 1) % A)
    with torch.no_grad():
        r1 = spr.rollout(batch, BatchRandom.for_batch(0, 0, 3))
        r2 = spr.rollout(other, BatchRandom.for_batch(0, 0, 3))
    assert r1.latent.shape == (3, 5, spr.encoder.out_dim) and r1.target.shape == (3, 4, spr.encoder.out_dim)
    torch.testing.assert_close(r1.latent[:, 0], r2.latent[:, 0])  # z_0 is the encoder's alone
    torch.testing.assert_close(r1.target, r2.target)
    assert not torch.allclose(spr.predict(r1), spr.predict(r2))
    # the targets are the EMA encoder's embeddings of the futures s_1..s_4 (under the clip's shared shift)
    x = spr.view(batch["obs"], BatchRandom.for_batch(0, 0, 3)).view(3, 5, 4, 84, 84)
    with torch.no_grad():
        want = spr.target(x[:, 3], batch["game_id"][:, 3])
    torch.testing.assert_close(r1.target[:, 2], want)
    assert spr.sample_spec().t_step == 5 and spr.sample_spec().n_step == 0


def test_spr_cosine_loss_is_minimal_when_predictions_equal_targets():
    torch.manual_seed(0)
    target = torch.randn(4, 3, 16)
    loss, metrics = spr_loss(target.clone(), target)
    torch.testing.assert_close(loss, torch.tensor(-1.0))
    torch.testing.assert_close(spr_loss(2.5 * target, target)[0], torch.tensor(-1.0))  # scale-free
    assert spr_loss(torch.randn(4, 3, 16), target)[0] > -0.9
    # by hand: cos([1, 0], [1, 1]) = 1 / sqrt 2, cos([0, 1], [1, 0]) = 0, averaged over samples and steps
    pred, tgt = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]), torch.tensor([[[1.0, 1.0], [1.0, 0.0]]])
    torch.testing.assert_close(spr_loss(pred, tgt)[0], torch.tensor(-(1 / math.sqrt(2)) / 2))


def test_spr_infonce_loss_matches_a_hand_computation():
    torch.manual_seed(0)
    pred, target = torch.randn(3, 2, 4), torch.randn(3, 2, 4)
    q, k = pred.reshape(6, 4), target.reshape(6, 4)
    sim = torch.stack([torch.stack([(q[i] * k[j]).sum() for j in range(6)]) for i in range(6)])
    want = torch.stack([torch.logsumexp(sim[i], 0) - sim[i, i] for i in range(6)]).mean()
    loss, metrics = spr_loss(pred, target, "infonce")
    torch.testing.assert_close(loss, want)
    assert set(metrics) == {"cos", "acc"}


def test_spr_infonce_over_two_ranks_equals_one_process(monkeypatch):
    """The mean of the per-rank losses (each rank's rows against the gathered targets) is the one-process
    loss of the whole batch; DDP's gradient averaging then matches too."""
    torch.manual_seed(0)
    pred, target = torch.randn(6, 4, 8), torch.randn(6, 4, 8)
    full, _ = spr_loss(pred, target, "infonce")
    halves = []
    for rank in range(2):
        rows = slice(3 * rank, 3 * rank + 3)
        monkeypatch.setattr(spr_module, "world", lambda rank=rank: (rank, 2))
        monkeypatch.setattr(spr_module, "gather_keys", lambda x: target.flatten(0, 1))
        halves.append(spr_loss(pred[rows], target[rows], "infonce")[0])
    torch.testing.assert_close((halves[0] + halves[1]) / 2, full)


def test_spr_rejects_bad_config():
    with pytest.raises(Exception, match="loss"):
        SPR(SPRConfig(loss="mse"), tiny_encoder(), A)
    with pytest.raises(Exception, match="t_step"):
        SPR(SPRConfig(t_step=1), tiny_encoder(), A)


# ---------------------------------------------------------------------------------------------- IDM
def test_action_loss_matches_hand_cross_entropy_over_valid_rows():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [1.0, 3.0, 0.0], [5.0, 0.0, 0.0]])
    action = torch.tensor([0, 2, 1, 1])
    valid = torch.tensor([True, True, True, False])

    def ce(row: list[float], a: int) -> float:
        return math.log(sum(math.exp(v) for v in row)) - row[a]

    rows = logits.tolist()
    want = (ce(rows[0], 0) + ce(rows[1], 2) + ce(rows[2], 1)) / 3
    loss, metrics = action_loss(logits, action, valid)
    assert loss.item() == pytest.approx(want, rel=1e-6)
    assert metrics["acc"].item() == pytest.approx(2 / 3)  # rows 0 and 2 right, row 1 a tie (argmax 0)
    assert action_loss(logits, action)[0].item() == pytest.approx((want * 3 + ce(rows[3], 1)) / 4, rel=1e-6)


def test_action_loss_over_two_ranks_with_unequal_valid_counts_equals_one_process(monkeypatch):
    torch.manual_seed(0)
    logits, action = torch.randn(8, A), torch.randint(0, A, (8,))
    valid = torch.tensor([True, False, False, False, True, True, True, True])  # 1 valid, then 4
    full, _ = action_loss(logits, action, valid)
    monkeypatch.setattr(idm_module, "all_sum", lambda x: valid.sum().to(x.dtype))
    halves = []
    for rank in range(2):
        monkeypatch.setattr(idm_module, "world", lambda rank=rank: (rank, 2))
        rows = slice(4 * rank, 4 * rank + 4)
        halves.append(action_loss(logits[rows], action[rows], valid[rows])[0])
    torch.testing.assert_close((halves[0] + halves[1]) / 2, full)


def test_inverse_head_learns_a_toy_inverse_dynamics_problem():
    """next = current + one-hot(action) in the first A dimensions: a linear per-game head can read it."""
    torch.manual_seed(0)
    head = InverseHead(dim=24, num_actions=A)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(150):
        current, action = torch.randn(64, 24), torch.randint(0, A, (64,))
        nxt = current + 3.0 * F.pad(F.one_hot(action, A).float(), (0, 24 - A))
        loss, metrics = action_loss(head(current, nxt, torch.full((64,), 4)), action)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert metrics["acc"].item() > 0.95


def test_idm_objective_ignores_pairs_across_an_episode_end():
    model = IDM(IDMConfig(), tiny_encoder(), A)
    batch = {k: v[:, :1].contiguous() for k, v in sequence_batch(b=4).items()}
    batch["done"][1, 0] = 1.0
    other = dict(batch, action=batch["action"].clone())
    other["action"][1, 0] = (batch["action"][1, 0] + 5) % A
    changed = dict(batch, action=batch["action"].clone())
    changed["action"][2, 0] = (batch["action"][2, 0] + 5) % A
    with torch.no_grad():
        base = model(batch, BatchRandom.for_batch(0, 0, 4))[0]
        assert model(other, BatchRandom.for_batch(0, 0, 4))[0] == base
        assert model(changed, BatchRandom.for_batch(0, 0, 4))[0] != base
    assert model.sample_spec().n_step == 1 and model.sample_spec().t_step == 1


# ---------------------------------------------------------------------------------------------- SPR+IDM
def test_spr_idm_is_the_weighted_sum_of_spr_and_idm():
    cfg = SPRIDMConfig(spr_weight=0.7, idm_weight=1.9)
    combo = SPRIDM(cfg, tiny_encoder(), A)
    assert cfg.loss == "cosine" and SPRConfig().loss == "infonce"  # as the released trainers
    spr = SPR(SPRConfig(loss="cosine"), tiny_encoder(seed=5), A)
    missing, unexpected = spr.load_state_dict(combo.state_dict(), strict=False)
    assert not missing and all(k.startswith("inverse.") for k in unexpected)
    batch = sequence_batch(b=3)
    rand = lambda: BatchRandom.for_batch(7, 2, 3)  # noqa: E731
    with torch.no_grad():
        loss, metrics = combo(batch, rand())
        spr_part, _ = spr(batch, rand())
        # IDM by hand, Atari-PB's pairs: (z_k, EMA embedding of s_{k+1}), k = 0..3, through a per-game MLP
        r = spr.rollout(batch, rand())
        x = torch.cat([r.latent[:, :-1], r.target], -1).flatten(0, 1)
        g, a = r.game.flatten(), batch["action"][:, :-1].flatten()
        h1, out = combo.inverse.hidden, combo.inverse.out
        hidden = torch.relu(torch.einsum("nd,nhd->nh", x, h1.weight[g]) + h1.bias[g])
        logits = torch.einsum("nh,nah->na", hidden, out.weight[g]) + out.bias[g]
        idm_part = -logits.log_softmax(-1).gather(1, a[:, None]).mean()
    torch.testing.assert_close(metrics["spr"], spr_part)
    torch.testing.assert_close(metrics["idm"], idm_part)
    torch.testing.assert_close(loss, 0.7 * spr_part + 1.9 * idm_part)


def test_yamls_carry_the_reference_hyperparameters():
    spr = load_pretrain_config("spr")
    assert (spr.optim.lr, spr.trainer.batch_size, spr.objective.t_step) == (3e-5, 128, 5)
    assert (spr.objective.ema_start, spr.objective.ema_end) == (0.99, 0.999)
    combo = load_pretrain_config("spr_idm")
    assert (combo.optim.lr, combo.trainer.batch_size) == (3e-5, 128)
    assert (combo.objective.spr_weight, combo.objective.idm_weight) == (2.0, 1.0)
    assert load_pretrain_config("idm").optim.lr == 3e-4
