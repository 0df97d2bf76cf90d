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
    IMAGE_SIZE,
    PatchDecoder,
    TokenEncoder,
    check_dims,
    masked_means,
    neck_tokens,
    num_kept,
    random_masking,
    token_errors,
)
from atari_pb.objectives.base import Batch, Metrics, Objective, register


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
class SiamMAE(Objective):
    name = "siammae"
    Config = SiamMAEConfig

    def __init__(self, cfg: SiamMAEConfig, encoder, num_actions: int):
        super().__init__(cfg, encoder, num_actions)
        check_dims(encoder, (cfg.enc_heads, cfg.dec_heads))
        _, h, w = encoder.neck.in_shape
        dim = encoder.out_dim
        self.grid = (h, w)
        self.keep = num_kept(h * w, cfg.mask_ratio)
        patch_dim = encoder.cfg.frames * (IMAGE_SIZE // h) * (IMAGE_SIZE // w)
        self.vit = TokenEncoder(self.grid, dim, cfg.enc_depth, cfg.enc_heads, cfg.mlp_ratio)
        self.decoder = PatchDecoder(
            self.grid, dim, patch_dim, cfg.dec_depth, cfg.dec_heads, cfg.mlp_ratio, cross=True
        )

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
