"""Behaviour cloning: predict the logged action from the frame stack (Atari-PB's BC pre-training).

loss = cross-entropy(per-game linear head(encoder(obs)), action)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from atari_pb.models.layers import PerGameLinear
from atari_pb.objectives.base import Objective, register


@dataclass
class BCConfig:
    augment: bool = True


@register
class BC(Objective):
    name = "bc"
    Config = BCConfig

    def __init__(self, cfg: BCConfig, encoder, num_actions: int):
        super().__init__(cfg, encoder, num_actions)
        self.head = PerGameLinear(encoder.out_dim, num_actions)

    def forward(self, batch, rand):
        game = self.game_ids(batch)
        z = self.encoder(self.view(batch["obs"], rand, self.cfg.augment), game)
        logits = self.head(z, game)
        action = batch["action"].flatten()
        loss = F.cross_entropy(logits, action)
        return loss, {"acc": (logits.argmax(-1) == action).float().mean()}
