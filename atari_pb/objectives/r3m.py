"""R3M's time-contrastive loss (Nair et al. 2022) as Atari-PB runs it, without the language part.

anchor = per-game linear head(online encoder(obs)); pos, neg = EMA encoder(the stacks pos_step and
neg_step steps later), no gradient; logits_i = [anchor_i.pos_i, anchor_i.neg_i, anchor_i.pos_j for every
other sample j of the global batch] / temperature; cross-entropy with the target pos_i; rows whose window
holds an episode end are left out. Optional L1 / L2 penalties on the encoder's embedding (R3M's; 0 in
Atari-PB).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from atari_pb.data.stream import SampleSpec
from atari_pb.distributed import gather_keys, world
from atari_pb.errors import UsageError
from atari_pb.models.ema import make_target
from atari_pb.models.encoder import Encoder
from atari_pb.models.layers import PerGameLinear
from atari_pb.objectives.atc import masked_mean
from atari_pb.objectives.base import Batch, Metrics, Objective, register


@dataclass
class R3MConfig:
    pos_step: int = 3  # the positive: the stack this many steps later
    neg_step: int = 6  # the within-sample negative, further in the future
    temperature: float = 1.0
    l1_weight: float = 0.0  # R3M's penalties on the embedding; Atari-PB uses none
    l2_weight: float = 0.0
    ema_start: float = 0.99
    ema_end: float = 0.999


def r3m_loss(
    anchor: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, valid: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, Metrics]:
    """Time-contrastive InfoNCE of this rank's anchors (B, D) with their positives and negatives (B, D);
    the other samples' positives of the global batch (all-gathered) are further negatives."""
    rank, _ = world()
    keys = gather_keys(pos)
    own = torch.arange(len(anchor), device=anchor.device) + rank * len(anchor)
    # the anchor's own positive already is column 0: leave it out of the cross-sample block
    cross = (anchor @ keys.T).masked_fill(F.one_hot(own, len(keys)).bool(), float("-inf"))
    within = torch.stack([(anchor * pos).sum(-1), (anchor * neg).sum(-1)], dim=1)
    logits = torch.cat([within, cross], dim=1) / temperature
    labels = torch.zeros(len(anchor), dtype=torch.long, device=anchor.device)
    loss = masked_mean(F.cross_entropy(logits, labels, reduction="none"), valid)
    acc = masked_mean((logits.argmax(-1) == 0).float(), valid)
    return loss, {"acc": acc.detach(), "valid": valid.float().mean()}


@register
class R3M(Objective):
    name = "r3m"
    Config = R3MConfig

    def __init__(self, cfg: R3MConfig, encoder: Encoder, num_actions: int):
        super().__init__(cfg, encoder, num_actions)
        if not 1 <= cfg.pos_step < cfg.neg_step:
            raise UsageError(f"r3m needs 1 <= pos_step < neg_step (got {cfg.pos_step}, {cfg.neg_step})")
        self.head = PerGameLinear(encoder.out_dim, encoder.out_dim)
        self.target = make_target(encoder)

    def sample_spec(self) -> SampleSpec:
        # next_obs is the negative at n_step = neg_step; extra_obs[:, 0] the positive
        return SampleSpec(
            frames=self.encoder.cfg.frames, n_step=self.cfg.neg_step, extra_offsets=[self.cfg.pos_step]
        )

    def ema_pairs(self):
        return [(self.encoder, self.target)]

    def forward(self, batch: Batch, rand) -> tuple[torch.Tensor, Metrics]:
        game = self.game_ids(batch)
        z = self.encoder(self.view(batch["obs"], rand), game)
        anchor = self.head(z, game)
        with torch.no_grad():
            pos = self.target(self.view(batch["extra_obs"][:, 0], rand), game)
            neg = self.target(self.view(batch["next_obs"], rand), game)
        # done covers the whole window up to neg_step, so also the positive's
        valid = batch["done"].flatten() == 0
        loss, metrics = r3m_loss(anchor, pos, neg, valid, self.cfg.temperature)
        if self.cfg.l1_weight or self.cfg.l2_weight:
            # every row, masked or not: the penalty is on the embedding, not on the contrast
            l1, l2 = z.abs().sum(-1).mean(), z.norm(dim=-1).mean()
            loss = loss + self.cfg.l1_weight * l1 + self.cfg.l2_weight * l2
            metrics.update(l1=l1.detach(), l2=l2.detach())
        return loss, metrics
