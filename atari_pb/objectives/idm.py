"""Inverse dynamics (Atari-PB's IDM pre-training): predict the logged action from a stack and the next one.

loss = cross-entropy(per-game head(concat(encoder(obs), encoder(next_obs at +1))), action), over the pairs
that do not cross an episode end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from atari_pb.augment import BatchRandom
from atari_pb.data.stream import SampleSpec
from atari_pb.distributed import all_sum, world
from atari_pb.models.layers import PerGameLinear
from atari_pb.objectives.base import Batch, Metrics, Objective, register


@dataclass
class IDMConfig:
    hidden: int = 0  # 0: a per-game linear head, as Atari-PB's IDM; > 0: a per-game MLP of that width


class InverseHead(nn.Module):
    """(current, next) embeddings (N, D) each, game ids (N,) -> action logits (N, num_actions): one
    per-game linear layer on the concatenation, or two with a ReLU between them when `hidden` > 0."""

    def __init__(self, dim: int, num_actions: int, hidden: int = 0):
        super().__init__()
        self.hidden = PerGameLinear(2 * dim, hidden) if hidden > 0 else None
        self.out = PerGameLinear(hidden if hidden > 0 else 2 * dim, num_actions)

    def forward(self, current: torch.Tensor, nxt: torch.Tensor, game: torch.Tensor) -> torch.Tensor:
        x = torch.cat([current, nxt], dim=-1)
        if self.hidden is not None:
            x = F.relu(self.hidden(x, game))
        return self.out(x, game)


def action_loss(
    logits: torch.Tensor, action: torch.Tensor, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, Metrics]:
    """Cross-entropy of (N, A) logits against (N,) actions, averaged over the `valid` rows of the global
    batch, and this rank's accuracy on them."""
    ce = F.cross_entropy(logits, action, reduction="none")
    correct = (logits.argmax(-1) == action).float()
    if valid is None:
        return ce.mean(), {"acc": correct.mean()}
    w = valid.to(ce.dtype)
    _, size = world()
    # ranks hold different numbers of valid rows: dividing by the global count (times the world size DDP
    # averages over) makes the ranks' averaged gradient that of the mean over every valid row
    count = all_sum(w.sum().detach()).clamp(min=1.0)
    loss = (ce * w).sum() * size / count
    return loss, {"acc": (correct * w).sum() / w.sum().clamp(min=1.0)}


@register
class IDM(Objective):
    name = "idm"
    Config = IDMConfig

    def __init__(self, cfg: IDMConfig, encoder, num_actions: int):
        super().__init__(cfg, encoder, num_actions)
        self.head = InverseHead(encoder.out_dim, num_actions, cfg.hidden)

    def sample_spec(self) -> SampleSpec:
        return SampleSpec(frames=self.encoder.cfg.frames, t_step=1, n_step=1)

    def forward(self, batch: Batch, rand: BatchRandom) -> tuple[torch.Tensor, Metrics]:
        game = self.game_ids(batch)
        # two draws: obs and next_obs get independent shifts and jitter, as Atari-PB augments them
        x = torch.cat([self.view(batch["obs"], rand), self.view(batch["next_obs"], rand)])
        current, nxt = self.encoder(x, torch.cat([game, game])).chunk(2)
        logits = self.head(current, nxt, game)
        # a pair across an episode end (done within the one step) has no action linking its two stacks
        valid = batch["done"].flatten() == 0
        return action_loss(logits, batch["action"].flatten(), valid)
