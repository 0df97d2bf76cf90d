"""CQL (Kumar et al. 2020) as Atari-PB pre-trains it: offline n-step Q-learning with a conservative penalty,
on a per-game Q head over the encoder's embedding and a target network (encoder and head). As released, the
target network keeps its initial weights and picks the next action itself; `update_target` (EMA) and
`double_q` (the online network picks) are options.

loss = TD(Q(s, a), ret + gamma^n (1 - done) Q_target(s', argmax_a' Q_select(s', a')))
       + cql_weight * mean(logsumexp_a Q(s, a) - Q(s, a_logged));
TD is the MSE of Q values ("mse") or, for C51 ("c51"), KL(target || predicted) with the target distribution
projected onto the fixed support (the cross-entropy's gradient; the penalty then uses the expected Q).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from atari_pb.data.stream import SampleSpec
from atari_pb.errors import UsageError
from atari_pb.models.distributional import project_distribution, select_greedy
from atari_pb.models.ema import make_target
from atari_pb.models.layers import PerGameLinear
from atari_pb.objectives.base import Objective, register

VARIANTS = ("c51", "mse")


def cql_penalty(q: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """mean over the batch of logsumexp_a Q(s, a) - Q(s, a_logged); q (B, A), action (B,)."""
    return (torch.logsumexp(q, -1) - q.gather(1, action[:, None]).squeeze(1)).mean()


@dataclass
class CQLConfig:
    variant: str = "c51"  # c51 | mse
    n_step: int = 3
    gamma: float = 0.99
    cql_weight: float = 0.1
    num_atoms: int = 51  # c51 only
    v_min: float = -10.0
    v_max: float = 10.0
    double_q: bool = False  # released: the target network also selects the next action; True: double Q
    update_target: bool = False  # released: the target network keeps its initial weights; True: EMA
    augment: bool = True
    ema_start: float = 0.99  # with update_target: tau fixed at 0.99
    ema_end: float = 0.99


@register
class CQL(Objective):
    name = "cql"
    Config = CQLConfig

    def __init__(self, cfg: CQLConfig, encoder, num_actions: int):
        super().__init__(cfg, encoder, num_actions)
        if cfg.variant not in VARIANTS:
            raise UsageError(f"cql variant {cfg.variant!r}: valid variants are {', '.join(VARIANTS)}")
        if cfg.variant == "c51" and (cfg.num_atoms < 2 or cfg.v_max <= cfg.v_min):
            raise UsageError("cql c51 needs num_atoms >= 2 and v_max > v_min")
        self.atoms = cfg.num_atoms if cfg.variant == "c51" else 1
        self.head = PerGameLinear(encoder.out_dim, num_actions * self.atoms)
        self.target_encoder = make_target(encoder)
        self.target_head = make_target(self.head)
        self.register_buffer("support", torch.linspace(cfg.v_min, cfg.v_max, cfg.num_atoms), persistent=False)

    def sample_spec(self) -> SampleSpec:
        return SampleSpec(frames=self.encoder.cfg.frames, n_step=self.cfg.n_step, gamma=self.cfg.gamma)

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        if not self.cfg.update_target:
            return []
        return [(self.encoder, self.target_encoder), (self.head, self.target_head)]

    def q_logits(
        self, encoder: nn.Module, head: nn.Module, x: torch.Tensor, game: torch.Tensor
    ) -> torch.Tensor:
        """(N, A, atoms) head outputs in float32 (atoms = 1 for mse): Q values, or C51 logits."""
        out = head(encoder(x, game), game).float()
        return out.view(len(x), self.num_actions, self.atoms)

    def q_values(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, A) Q values: the head itself, or C51's expected value over the support."""
        if self.cfg.variant == "mse":
            return logits.squeeze(-1)
        return (logits.softmax(-1) * self.support).sum(-1)

    def forward(self, batch, rand):
        cfg = self.cfg
        game = self.game_ids(batch)
        action = batch["action"].flatten()
        t = batch["action"].shape[1]
        ret = batch["ret"].flatten().float()
        # gamma^k with each sample's own offset k (= n_step unless random_future), zero past an episode end
        discount = (cfg.gamma ** batch["offset"].float()).repeat_interleave(t) * (
            1.0 - batch["done"].flatten().float()
        )

        logits = self.q_logits(self.encoder, self.head, self.view(batch["obs"], rand, cfg.augment), game)
        q = self.q_values(logits)
        with torch.no_grad():
            nx = self.view(batch["next_obs"], rand, cfg.augment)
            target_logits = self.q_logits(self.target_encoder, self.target_head, nx, game)
            q_next_target = self.q_values(target_logits)
            q_select = (
                self.q_values(self.q_logits(self.encoder, self.head, nx, game))
                if cfg.double_q
                else q_next_target
            )

        rows = torch.arange(len(action), device=action.device)
        if cfg.variant == "mse":
            y = ret + discount * select_greedy(q_select, q_next_target)
            td = F.mse_loss(q[rows, action], y)
        else:
            target = project_distribution(
                select_greedy(q_select, target_logits.softmax(-1)), ret, discount, self.support
            )
            # KL(target || predicted): the cross-entropy's gradient, minus the target's entropy, so the
            # value is 0 when fitted rather than a floor that sinks as the bootstrapped target sharpens
            log_p = logits[rows, action].log_softmax(-1)
            td = (torch.xlogy(target, target) - target * log_p).sum(-1).mean()
        penalty = cql_penalty(q, action)
        loss = td + cfg.cql_weight * penalty
        return loss, {"td": td.detach(), "cql": penalty.detach(), "q": q[rows, action].detach().mean()}
