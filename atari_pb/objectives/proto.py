"""CRPTpro (Liu et al. 2023): Proto-RL's prototypes with CRPTpro's intrinsic loss that spreads them apart.

s = normalise(predictor(projection(online encoder(obs)))); t = normalise(EMA projection(EMA encoder(next
obs))); C = normalised prototypes; q = Sinkhorn-Knopp(t C^T / eps) over the global batch, no gradient;
loss = mean_i KL(q_i || softmax(s_i C^T / temperature)) + alpha * mean_{i != j} c_i.c_j / (c_i.c_j + 1.5)
(the weight of each pair and one factor of it detached, as CRPTpro's). KL is CRPTpro's cross-entropy less
the entropy of q, which has no gradient: the same gradients, with 0 as the loss of a perfect prediction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from atari_pb.data.stream import SampleSpec
from atari_pb.distributed import all_sum, gather_keys
from atari_pb.models.ema import make_target
from atari_pb.models.encoder import Encoder
from atari_pb.models.layers import mlp
from atari_pb.objectives.base import Batch, Metrics, Objective, register


@dataclass
class ProtoConfig:
    num_prototypes: int = 512
    proj_dim: int = 128  # CRPTpro's projection of the embedding
    pred_hidden: int = 512  # the online predictor: proj_dim -> pred_hidden -> proj_dim
    temperature: float = 0.1  # of the online softmax
    sinkhorn_eps: float = 0.05  # of the target's Sinkhorn-Knopp
    sinkhorn_iters: int = 3
    alpha: float = 0.1  # weight of the intrinsic loss
    ema_start: float = 0.99
    ema_end: float = 0.999


@torch.no_grad()
def sinkhorn(logits: torch.Tensor, iters: int) -> torch.Tensor:
    """Sinkhorn-Knopp on exp(logits) (B, K): alternately give every prototype the same total mass over the
    global batch (a column sum, all-reduced under DDP) and every sample the same mass (a row sum). Returns
    (B, K) assignments whose rows sum to 1 and whose columns sum to about W*B/K (exactly at convergence)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 under autocast: too coarse
    # shifting a column by a constant is undone by the first column step; a global (all-gathered) max
    # per prototype keeps exp in range and every column away from zero, identically on every rank
    q = torch.exp(logits - gather_keys(logits.amax(0, keepdim=True)).amax(0))
    n = all_sum(torch.tensor(float(len(q)), device=q.device))
    k = q.shape[1]
    tiny = torch.finfo(q.dtype).tiny
    for _ in range(iters):
        q = q / (k * all_sum(q.sum(0, keepdim=True)))
        q = q / (n * q.sum(1, keepdim=True)).clamp_min(tiny)
    return q * n


def intrinsic_loss(prototypes: torch.Tensor) -> torch.Tensor:
    """CRPTpro's intrinsic loss on L2-normalised prototypes (K, D): the mean over all K*K pairs of
    c_i . c_j / (c_i . c_j + 1.5), with the diagonal set to 0, the denominator and c_j detached."""
    sim = prototypes @ prototypes.detach().T
    sim = sim / (sim.detach() + 1.5)
    eye = torch.eye(len(prototypes), dtype=torch.bool, device=prototypes.device)
    return sim.masked_fill(eye, 0.0).mean()


@register
class Proto(Objective):
    name = "proto"
    Config = ProtoConfig

    def __init__(self, cfg: ProtoConfig, encoder: Encoder, num_actions: int):
        super().__init__(cfg, encoder, num_actions)
        self.projection = nn.Linear(encoder.out_dim, cfg.proj_dim)
        self.predictor = mlp([cfg.proj_dim, cfg.pred_hidden, cfg.proj_dim])
        self.prototypes = nn.Parameter(F.normalize(torch.randn(cfg.num_prototypes, cfg.proj_dim), dim=1))
        self.target = make_target(encoder)
        self.target_projection = make_target(self.projection)

    def sample_spec(self) -> SampleSpec:
        return SampleSpec(frames=self.encoder.cfg.frames, n_step=1)

    def ema_pairs(self):
        return [(self.encoder, self.target), (self.projection, self.target_projection)]

    def forward(self, batch: Batch, rand) -> tuple[torch.Tensor, Metrics]:
        cfg = self.cfg
        game = self.game_ids(batch)
        # normalised in the graph (Proto-RL renormalises the weights in place; this keeps forward pure)
        protos = F.normalize(self.prototypes, dim=1)
        s = self.predictor(self.projection(self.encoder(self.view(batch["obs"], rand), game)))
        log_p = F.log_softmax(F.normalize(s, dim=1) @ protos.T / cfg.temperature, dim=1)
        with torch.no_grad():
            t = self.target_projection(self.target(self.view(batch["next_obs"], rand), game))
            q = sinkhorn(F.normalize(t, dim=1) @ protos.T / cfg.sinkhorn_eps, cfg.sinkhorn_iters)
        ce = -(q * log_p).sum(1).mean()
        entropy = -torch.special.xlogy(q, q).sum(1).mean()  # near log K: the assignments say little
        intr = intrinsic_loss(protos)
        metrics = {
            "ce": ce.detach(),
            "assign_entropy": entropy,
            "intr": intr.detach(),
            "agree": (log_p.argmax(1) == q.argmax(1)).float().mean(),
        }
        return ce - entropy + cfg.alpha * intr, metrics
