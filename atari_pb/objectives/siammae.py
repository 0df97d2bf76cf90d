"""Siamese MAE (Gupta et al. 2023) as Atari-PB runs it: reconstruct a 95%-masked future from the present.

loss = mean over all pixels of (sigmoid(decoder(future tokens, 95% masked; cross-attending to all current
tokens)) - next_obs)^2, with next_obs k ~ U{1..n} steps ahead, un-augmented, in [0, 1]; one shared
backbone and ViT encode both stacks (each augmented independently).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from atari_pb.augment import BatchRandom
from atari_pb.data.stream import SampleSpec
from atari_pb.objectives._vit import (
    MaskedAutoencoder,
    masked_means,
    neck_tokens,
    random_masking,
    token_errors,
)
from atari_pb.objectives.base import Batch, Metrics, register


@dataclass
class SiamMAEConfig:
    n_step: int = 3  # the future is k ~ U{1..n_step} steps ahead
    mask_ratio: float = 0.95  # of the future's tokens; the current stack is not masked
    mlp_ratio: float = 4.0  # the token width is the neck's output (512 for resnet50): MLP 2048
    enc_depth: int = 4
    enc_heads: int = 4
    dec_depth: int = 3
    dec_heads: int = 4
    augment: bool = True  # of the inputs only; the target is the un-augmented future


@register
class SiamMAE(MaskedAutoencoder):
    name = "siammae"
    Config = SiamMAEConfig
    cross = True

    def sample_spec(self) -> SampleSpec:
        return SampleSpec(frames=self.encoder.cfg.frames, n_step=self.cfg.n_step, random_future=True)

    def forward(self, batch: Batch, rand: BatchRandom) -> tuple[torch.Tensor, Metrics]:
        obs, future = batch["obs"], batch["next_obs"]
        game = self.game_ids(batch)
        views = torch.cat([self.view(obs, rand, self.cfg.augment), self.view(future, rand, self.cfg.augment)])
        tokens = neck_tokens(self.encoder.neck, self.encoder.backbone(views), game.repeat(2))
        current, future_tokens = tokens.chunk(2)
        noise = rand.uniform(obs.shape[1], tokens.shape[1]).flatten(0, 1)  # per sample: exact under DDP
        keep_idx, restore = random_masking(noise, self.keep)
        logits = self.decoder(self.vit(future_tokens, keep_idx), restore, game, context=self.vit(current))
        err = token_errors(torch.sigmoid(logits), self.stack(future).float() / 255.0, self.grid)
        return err.mean(), masked_means(err, restore >= self.keep)
