"""ATC (Stooke et al. 2021) as Atari-PB runs it: InfoNCE between a stack and its own near future.

query = per-game linear head(online encoder(obs)); key = EMA encoder(the stack n steps later, as released;
k uniform in 1..n with `random_future`), no gradient; logits = query @ keys^T / temperature over every key of the global batch; the
positive of query i is key i; rows whose window holds an episode end are left out of the mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from atari_pb.data.stream import SampleSpec
from atari_pb.distributed import all_sum, gather_keys, world
from atari_pb.models.ema import make_target
from atari_pb.models.encoder import Encoder
from atari_pb.models.layers import PerGameLinear
from atari_pb.objectives.base import Batch, Metrics, Objective, register


@dataclass
class ATCConfig:
    n_step: int = 3  # the key is n_step steps ahead (released) ...
    random_future: bool = False  # ... or k in 1..n_step, drawn per sample (our earlier default)
    temperature: float = 1.0
    ema_start: float = 0.99
    ema_end: float = 0.999


def masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """This rank's share of the mean of `values` over the valid rows of the global batch: DDP's average
    over ranks of what each rank returns is that mean exactly, however the valid rows fall on the ranks
    (0 with a gradient of 0 when no row is valid)."""
    _, size = world()
    count = all_sum(valid.sum().float()).clamp_min(1.0)
    return torch.where(valid, values, 0.0).sum() * size / count


def atc_loss(
    query: torch.Tensor, keys: torch.Tensor, valid: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, Metrics]:
    """InfoNCE of this rank's queries (B, D) against the global batch's keys (W*B, D), in rank order;
    the positive of query i is key rank*B + i; `valid` (B,) bool keeps a row in the mean."""
    logits = query @ keys.T / temperature
    rank, _ = world()
    labels = torch.arange(len(query), device=query.device) + rank * len(query)
    loss = masked_mean(F.cross_entropy(logits, labels, reduction="none"), valid)
    acc = masked_mean((logits.argmax(-1) == labels).float(), valid)
    return loss, {"acc": acc.detach(), "valid": valid.float().mean()}


@register
class ATC(Objective):
    name = "atc"
    Config = ATCConfig

    def __init__(self, cfg: ATCConfig, encoder: Encoder, num_actions: int):
        super().__init__(cfg, encoder, num_actions)
        self.head = PerGameLinear(encoder.out_dim, encoder.out_dim)
        self.target = make_target(encoder)

    def sample_spec(self) -> SampleSpec:
        return SampleSpec(
            frames=self.encoder.cfg.frames, n_step=self.cfg.n_step, random_future=self.cfg.random_future
        )

    def ema_pairs(self):
        return [(self.encoder, self.target)]

    def forward(self, batch: Batch, rand) -> tuple[torch.Tensor, Metrics]:
        game = self.game_ids(batch)
        query = self.head(self.encoder(self.view(batch["obs"], rand), game), game)
        with torch.no_grad():
            keys = gather_keys(self.target(self.view(batch["next_obs"], rand), game))
        # an episode end between obs and next_obs: the "future" belongs to another episode
        valid = batch["done"].flatten() == 0
        return atc_loss(query, keys, valid, self.cfg.temperature)
