"""SPR + inverse dynamics (SGI, Schwarzer et al. 2021) as Atari-PB runs it, on one T-step sequence.

loss = spr_weight * SPR loss (spr.py) + idm_weight * cross-entropy(per-game MLP(concat(z_k, target_{k+1})),
a_k), k = 0..K-1, with z_0 the online embedding of s_0, z_k (k >= 1) the transition model's latents and
target_{k+1} the EMA encoder's embedding of s_{k+1}.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from atari_pb.augment import BatchRandom
from atari_pb.objectives.base import Batch, Metrics, register
from atari_pb.objectives.idm import InverseHead, action_loss
from atari_pb.objectives.spr import SPR, Rollout, SPRConfig, spr_loss


@dataclass
class SPRIDMConfig(SPRConfig):
    loss: str = "cosine"  # the released spr_idm trainer's negative cosine (src/trainers/spr_idm.py:88-89)
    spr_weight: float = 2.0
    idm_weight: float = 1.0


@register
class SPRIDM(SPR):
    name = "spr_idm"
    Config = SPRIDMConfig

    def __init__(self, cfg: SPRIDMConfig, encoder, num_actions: int):
        super().__init__(cfg, encoder, num_actions)
        # Atari-PB's SPR+IDM head: per-game 2D -> D -> actions with a ReLU, D the embedding's width
        self.inverse = InverseHead(encoder.out_dim, num_actions, hidden=encoder.out_dim)

    def idm_logits(self, r: Rollout) -> torch.Tensor:
        """(B*K, A) action logits for the pairs (z_k, target_{k+1}), k = 0..K-1, as Atari-PB pairs them."""
        return self.inverse(r.latent[:, :-1].flatten(0, 1), r.target.flatten(0, 1), r.game.flatten())

    def forward(self, batch: Batch, rand: BatchRandom) -> tuple[torch.Tensor, Metrics]:
        r = self.rollout(batch, rand)
        spr, metrics = spr_loss(self.predict(r), r.target, self.cfg.loss)
        # no episode end inside the sequence (see SPR.sample_spec): every pair is valid
        idm, idm_metrics = action_loss(self.idm_logits(r), r.action.flatten())
        loss = self.cfg.spr_weight * spr + self.cfg.idm_weight * idm
        return loss, {"spr": spr.detach(), "idm": idm.detach(), **metrics, "idm_acc": idm_metrics["acc"]}
