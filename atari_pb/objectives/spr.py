"""SPR (Schwarzer et al. 2021) as Atari-PB runs it: roll the present's embedding forward with the actions
and predict the EMA encoder's embeddings of the next K = T - 1 stacks.

z_0 = encoder(s_0); z_k = tanh-RNN(z_{k-1}, per-game action embedding(a_{k-1})); p_k = per-game linear(z_k);
loss = mean over samples and k = 1..K of -cos(p_k, EMA encoder(s_k))  ("cosine"; minimum -1), or InfoNCE of
p_k . target over every target of the global batch ("infonce", the loss of Atari-PB's spr trainer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from atari_pb.augment import BatchRandom
from atari_pb.data.stream import SampleSpec
from atari_pb.distributed import gather_keys, world
from atari_pb.errors import UsageError
from atari_pb.games import NUM_GAME_IDS
from atari_pb.models.ema import make_target
from atari_pb.models.layers import PerGameLinear
from atari_pb.objectives.base import Batch, Metrics, Objective, register

LOSSES = ("cosine", "infonce")


@dataclass
class SPRConfig:
    t_step: int = 5  # the first stack and K = t_step - 1 futures
    loss: str = "infonce"  # infonce (the released spr trainer) | cosine
    ema_start: float = 0.99
    ema_end: float = 0.999


class Transition(nn.Module):
    """Atari-PB's SPR transition model on the neck's vector: a tanh RNN whose hidden state is the latent,
    fed a learned per-game action embedding (a minimal action set's index means a different button in each
    game). z (B, D), actions and game ids (B, K) -> (B, K, D) latents after each action."""

    def __init__(self, dim: int, num_actions: int, num_games: int = NUM_GAME_IDS):
        super().__init__()
        self.num_actions = num_actions
        self.action_embed = nn.Embedding(num_games * num_actions, num_actions)
        self.cell = nn.RNNCell(num_actions, dim)  # the parameters and update of a one-layer nn.RNN

    def forward(self, z: torch.Tensor, action: torch.Tensor, game: torch.Tensor) -> torch.Tensor:
        embed = self.action_embed(action + self.num_actions * game)
        latents = []
        for k in range(action.shape[1]):  # K steps, each one batched
            z = self.cell(embed[:, k], z)
            latents.append(z)
        return torch.stack(latents, 1)


class Rollout(NamedTuple):
    latent: torch.Tensor  # (B, K+1, D): z_0 from the online encoder, z_1..z_K from the transition model
    target: torch.Tensor  # (B, K, D): the EMA encoder's embeddings of s_1..s_K, without gradient
    action: torch.Tensor  # (B, K): a_0..a_{K-1}, a_k taken at s_k
    game: torch.Tensor  # (B, K)


def spr_loss(pred: torch.Tensor, target: torch.Tensor, loss: str = "cosine") -> tuple[torch.Tensor, Metrics]:
    """(B, K, D) predictions against (B, K, D) targets; mean cosine similarity as a metric."""
    cos = F.cosine_similarity(pred, target, dim=-1)
    metrics = {"cos": cos.detach().mean()}
    if loss == "cosine":
        return -cos.mean(), metrics
    # infonce: the (sample, step) rows of this rank against every target of the global batch, unnormalised
    # dot products as in Atari-PB; the positive of row i of rank r is global row r * rows + i
    query = pred.flatten(0, 1)
    logits = query @ gather_keys(target.flatten(0, 1)).T
    rank, _ = world()
    labels = torch.arange(len(query), device=query.device) + rank * len(query)
    metrics["acc"] = (logits.argmax(-1) == labels).float().mean()
    return F.cross_entropy(logits, labels), metrics


@register
class SPR(Objective):
    name = "spr"
    Config = SPRConfig

    def __init__(self, cfg: SPRConfig, encoder, num_actions: int):
        super().__init__(cfg, encoder, num_actions)
        if cfg.loss not in LOSSES:
            raise UsageError(f"objective.loss={cfg.loss!r}; valid: {', '.join(LOSSES)}")
        if cfg.t_step < 2:
            raise UsageError(f"objective.t_step={cfg.t_step}: SPR needs at least one future step (>= 2)")
        dim = encoder.out_dim
        self.transition = Transition(dim, num_actions)
        self.predictor = PerGameLinear(dim, dim)
        self.target = make_target(encoder)  # backbone + neck: Atari-PB has no separate target projection

    def sample_spec(self) -> SampleSpec:
        # n_step 0: the sequence itself holds the futures. The sampler draws only sequences with no episode
        # end in their first T - 1 steps, so each s_k follows s_0 through a_0..a_{k-1}: nothing to mask.
        return SampleSpec(frames=self.encoder.cfg.frames, t_step=self.cfg.t_step, n_step=0)

    def ema_pairs(self):
        return [(self.encoder, self.target)]

    def rollout(self, batch: Batch, rand: BatchRandom) -> Rollout:
        obs, action, game = batch["obs"], batch["action"], batch["game_id"]
        b, t = action.shape
        # one shift and jitter for the whole clip, seen by the online and the target encoder alike
        x = self.view(obs, rand).view(b, t, *obs.shape[2:])
        z0 = self.encoder(x[:, 0], game[:, 0])
        latent = self.transition(z0, action[:, :-1], game[:, :-1])
        with torch.no_grad():
            target = self.target(x[:, 1:].flatten(0, 1), game[:, 1:].flatten()).view(b, t - 1, -1)
        return Rollout(torch.cat([z0[:, None], latent], 1), target, action[:, :-1], game[:, :-1])

    def predict(self, r: Rollout) -> torch.Tensor:
        """(B, K, D) predictions of the targets from the rolled-out latents z_1..z_K."""
        return self.predictor(r.latent[:, 1:].flatten(0, 1), r.game.flatten()).view_as(r.target)

    def forward(self, batch: Batch, rand: BatchRandom) -> tuple[torch.Tensor, Metrics]:
        r = self.rollout(batch, rand)
        return spr_loss(self.predict(r), r.target, self.cfg.loss)
