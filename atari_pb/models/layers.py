"""Necks and heads shared by the objectives and fine-tuning: per-game layers, MLPs, transformers.

Per-game layers index a table of parameters with the batch's game ids (Atari-PB's 60 ID + Near-OOD games;
every other game uses id 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from atari_pb.games import NUM_GAME_IDS


def mlp(dims: Sequence[int], last_activation: bool = False) -> nn.Sequential:
    """Linear layers with ReLU between them (and after the last one if asked)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2 or last_activation:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class SpatialMLPNeck(nn.Module):
    """Atari-PB's neck: a learnable per-game spatial embedding multiplied onto the feature map, average
    pool, LayerNorm, MLP C -> hidden... with ReLU. (B, C, H, W), (B,) game ids -> (B, hidden[-1])."""

    def __init__(
        self, in_shape: Sequence[int], hidden: Sequence[int] = (1024, 512), num_games: int = NUM_GAME_IDS
    ):
        super().__init__()
        c, h, w = in_shape
        self.in_shape = (c, h, w)
        self.spatial_embed = nn.Embedding(num_games, c * h * w)
        self.norm = nn.LayerNorm(c)
        self.mlp = mlp([c, *hidden], last_activation=True)
        self.out_dim = hidden[-1]

    def forward(self, x: torch.Tensor, game_id: torch.Tensor) -> torch.Tensor:
        x = x * self.spatial_embed(game_id).view(-1, *self.in_shape)
        return self.mlp(self.norm(x.mean(dim=(2, 3))))


class LinearNeck(nn.Module):
    """The released `linear` neck of the Nature-CNN agent (src/models/necks/linear.py): flatten the feature
    map, Linear C*H*W -> hidden, ReLU. (B, C, H, W), game ids (ignored: one game) -> (B, hidden)."""

    def __init__(self, in_shape: Sequence[int], hidden: int = 512):
        super().__init__()
        c, h, w = in_shape
        self.in_shape = (c, h, w)
        self.linear = nn.Linear(c * h * w, hidden)
        self.out_dim = hidden

    def forward(self, x: torch.Tensor, game_id: torch.Tensor | None = None) -> torch.Tensor:
        return F.relu(self.linear(x.flatten(1)))


class PerGameLinear(nn.Module):
    """One linear layer per game: (B, in), (B,) game ids -> (B, out)."""

    def __init__(self, in_dim: int, out_dim: int, num_games: int = NUM_GAME_IDS):
        super().__init__()
        bound = 1 / math.sqrt(in_dim)  # nn.Linear's default initialisation, per game
        self.weight = nn.Parameter(torch.empty(num_games, out_dim, in_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num_games, out_dim).uniform_(-bound, bound))
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor, game_id: torch.Tensor) -> torch.Tensor:
        out = None
        # one matmul per game present: memory stays B x out even for wide (C51) heads
        for g in torch.unique(game_id).tolist():
            rows = game_id == g
            y = F.linear(x[rows], self.weight[g], self.bias[g])
            if out is None:  # the matmul's dtype, which autocast may have changed
                out = y.new_empty(x.shape[0], self.out_dim)
            out[rows] = y
        return out if out is not None else x.new_empty(0, self.out_dim)


class Transformer(nn.Module):
    """Pre-norm transformer blocks (timm's ViT block) with a final LayerNorm."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_dim: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio=mlp_dim / dim, qkv_bias=True) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, is_causal: bool = False) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, is_causal=is_causal)
        return self.norm(x)


def sincos_pos_embed(num_tokens: int, dim: int) -> torch.Tensor:
    """Fixed 1-D sine-cosine position embeddings (num_tokens, dim), as in MAE."""
    pos = torch.arange(num_tokens, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    emb = torch.zeros(num_tokens, dim)
    emb[:, 0::2] = torch.sin(pos * freq)
    emb[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return emb
