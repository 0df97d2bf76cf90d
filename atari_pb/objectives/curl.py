"""CURL (Laskin et al. 2020) as Atari-PB runs it: InfoNCE between two augmentations of the same stack.

query = per-game linear head(online encoder(view 1)); key = EMA encoder(view 2), no gradient;
logits = query @ keys^T / temperature over every key of the global batch (all-gathered across ranks);
the positive of query i is key i.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from atari_pb.distributed import gather_keys, world
from atari_pb.models.ema import make_target
from atari_pb.models.layers import PerGameLinear
from atari_pb.objectives.base import Objective, register


@dataclass
class CURLConfig:
    temperature: float = 1.0
    ema_start: float = 0.99
    ema_end: float = 0.999


@register
class CURL(Objective):
    name = "curl"
    Config = CURLConfig

    def __init__(self, cfg: CURLConfig, encoder, num_actions: int):
        super().__init__(cfg, encoder, num_actions)
        self.head = PerGameLinear(encoder.out_dim, encoder.out_dim)
        self.target = make_target(encoder)

    def ema_pairs(self):
        return [(self.encoder, self.target)]

    def forward(self, batch, rand):
        game = self.game_ids(batch)
        query = self.head(self.encoder(self.view(batch["obs"], rand), game), game)
        with torch.no_grad():
            keys = gather_keys(self.target(self.view(batch["obs"], rand), game))
        logits = query @ keys.T / self.cfg.temperature
        rank, _ = world()
        labels = torch.arange(len(query), device=query.device) + rank * len(query)
        loss = F.cross_entropy(logits, labels)
        return loss, {"acc": (logits.argmax(-1) == labels).float().mean()}
