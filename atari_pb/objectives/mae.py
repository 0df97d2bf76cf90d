"""MAE (He et al. 2022) as Atari-PB runs it: mask 90% of the backbone's 6x6 feature tokens, reconstruct pixels.

loss = mean over all pixels of (decoder(ViT(visible tokens of backbone(augmented obs))) - obs)^2: every
token (masked or visible) predicts its 14x14 patch of each stacked frame of the un-augmented stack, in
[0, 1], not normalised per patch (Atari-PB's trainer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from atari_pb.augment import BatchRandom
from atari_pb.objectives._vit import (
    MaskedAutoencoder,
    masked_means,
    neck_tokens,
    random_masking,
    token_errors,
)
from atari_pb.objectives.base import Batch, Metrics, register


@dataclass
class MAEConfig:
    mask_ratio: float = 0.9
    mlp_ratio: float = 4.0  # the token width is the neck's output (512 for resnet50): MLP 2048
    enc_depth: int = 4
    enc_heads: int = 4
    dec_depth: int = 3
    dec_heads: int = 4
    augment: bool = True  # of the input only; the target is the un-augmented stack


@register
class MAE(MaskedAutoencoder):
    name = "mae"
    Config = MAEConfig

    def forward(self, batch: Batch, rand: BatchRandom) -> tuple[torch.Tensor, Metrics]:
        obs = batch["obs"]
        game = self.game_ids(batch)
        tokens = neck_tokens(
            self.encoder.neck, self.encoder.backbone(self.view(obs, rand, self.cfg.augment)), game
        )
        # (B, T, L) drawn per sample, so every rank slices the same masks out of the global draw
        noise = rand.uniform(obs.shape[1], tokens.shape[1]).flatten(0, 1)
        keep_idx, restore = random_masking(noise, self.keep)
        pred = self.decoder(self.vit(tokens, keep_idx), restore, game)
        err = token_errors(pred, self.stack(obs).float() / 255.0, self.grid)
        return err.mean(), masked_means(err, restore >= self.keep)
