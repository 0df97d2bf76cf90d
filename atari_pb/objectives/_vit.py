"""ViT pieces shared by the masked-autoencoder objectives (mae, siammae); registers no objective.

Atari-PB's MAE runs the conv backbone on the whole image and masks its 6x6 feature map, not the pixels:
each feature-map cell is one token (the encoder's neck applied per cell: per-game spatial embedding and
MLP), and each token's target is the 14x14 pixel patch of every stacked frame under that cell.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from atari_pb.errors import UsageError
from atari_pb.models.encoder import Encoder
from atari_pb.models.layers import PerGameLinear, SpatialMLPNeck, Transformer, sincos_pos_embed
from atari_pb.objectives.base import Objective

IMAGE_SIZE = 84


def check_dims(encoder: Encoder, heads: tuple[int, ...]) -> None:
    """The token width is the neck's output; it must split into the heads and into 2-D sin-cos halves."""
    dim = encoder.out_dim
    if dim % 4 or any(dim % h for h in heads):
        raise UsageError(
            f"token width {dim} (the neck's output) must be divisible by 4 and by the heads {list(heads)}"
        )
    _, h, w = encoder.neck.in_shape
    if IMAGE_SIZE % h or IMAGE_SIZE % w:
        raise UsageError(f"a {h}x{w} feature map does not tile a {IMAGE_SIZE}x{IMAGE_SIZE} image")


def pos_embed_2d(h: int, w: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embeddings (h*w, dim), row-major: the first half encodes the column,
    the second the row (MAE's layout)."""
    cols = sincos_pos_embed(w, dim // 2).repeat(h, 1)
    rows = sincos_pos_embed(h, dim // 2).repeat_interleave(w, dim=0)
    return torch.cat([cols, rows], dim=1)


def num_kept(num_tokens: int, mask_ratio: float) -> int:
    """Visible tokens per sample: int(L * (1 - ratio)) as in Atari-PB (36 tokens: 0.9 -> 3, 0.95 -> 1)."""
    return int(num_tokens * (1.0 - mask_ratio) + 1e-6)  # epsilon: 0.75 -> 9, not 8.999...


def random_masking(noise: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """noise (N, L) -> keep_idx (N, keep), the tokens with the smallest noise, and restore (N, L), each
    token's place in the shuffled order: token j is visible iff restore[:, j] < keep."""
    shuffle = noise.argsort(dim=1, stable=True)
    return shuffle[:, :keep], shuffle.argsort(dim=1, stable=True)


def take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (N, L, D), idx (N, K) -> (N, K, D): the tokens idx of each row."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def patchify(frames: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(N, F, H, W) -> (N, gh*gw, F*ph*pw): row-major patches, each holding (frame, row, col) pixels."""
    n, f, h, w = frames.shape
    gh, gw = grid
    x = frames.reshape(n, f, gh, h // gh, gw, w // gw)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(n, gh * gw, -1)


def neck_tokens(neck: SpatialMLPNeck, features: torch.Tensor, game_id: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) backbone features -> (N, H*W, D) tokens: the neck's per-game spatial embedding, then
    its LayerNorm and MLP on every cell instead of on the pooled map (Atari-PB's MAE neck)."""
    x = features * neck.spatial_embed(game_id).view(-1, *neck.in_shape)
    return neck.mlp(neck.norm(x.flatten(2).transpose(1, 2)))


def xavier_init(module: nn.Module) -> nn.Module:
    """Atari-PB's (and MAE's) transformer initialisation: xavier-uniform linears, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


class TokenEncoder(nn.Module):
    """Tokens (N, L, D) + fixed positions -> the kept ones, with a learnable CLS token in front, through
    pre-norm transformer blocks and a final LayerNorm -> (N, 1 + K, D)."""

    def __init__(self, grid: tuple[int, int], dim: int, depth: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.register_buffer("pos", pos_embed_2d(*grid, dim), persistent=False)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))  # Atari-PB: the CLS position's (zero) embedding
        self.blocks = xavier_init(Transformer(dim, depth, heads, int(dim * mlp_ratio)))

    def forward(self, tokens: torch.Tensor, keep_idx: torch.Tensor | None = None) -> torch.Tensor:
        x = tokens + self.pos
        if keep_idx is not None:
            x = take(x, keep_idx)
        return self.blocks(torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1))


class CrossBlock(nn.Module):
    """SiamMAE's decoder block: cross-attention of the (pre-normed) queries to a context, then timm's
    self-attention + MLP block. The context enters as given (Atari-PB normalises only the queries)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.block = Block(dim, heads, mlp_ratio=mlp_dim / dim, qkv_bias=True)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        return x.view(n, length, self.heads, dim // self.heads).transpose(1, 2)

    def cross(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The cross-attention residual branch alone: (N, Lq, D), (N, Lk, D) -> (N, Lq, D)."""
        q, k, v = (
            self._split(self.q(self.norm(x))),
            self._split(self.k(context)),
            self._split(self.v(context)),
        )
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.block(x + self.cross(x, context))


class CrossTransformer(nn.Module):
    """`CrossBlock`s with a final LayerNorm: queries (N, Lq, D), context (N, Lk, D) -> (N, Lq, D)."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_dim: int):
        super().__init__()
        self.blocks = nn.ModuleList(CrossBlock(dim, heads, mlp_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, context)
        return self.norm(x)


class PatchDecoder(nn.Module):
    """Encoder outputs (N, 1 + K, D) (CLS first) -> pixel predictions (N, L, patch_dim) for all L tokens.

    Atari-PB's MAE head: Linear + ReLU, mask tokens put back at the masked places, fixed positions (none
    for CLS), transformer (self-attention, or with `cross` SiamMAE's cross-attention to a context), then a
    per-game linear layer per token; CLS is dropped."""

    def __init__(
        self,
        grid: tuple[int, int],
        dim: int,
        patch_dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        cross: bool = False,
    ):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(dim, dim), nn.ReLU())
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos", pos_embed_2d(*grid, dim), persistent=False)
        make = CrossTransformer if cross else Transformer
        self.blocks = xavier_init(make(dim, depth, heads, int(dim * mlp_ratio)))
        self.head = PerGameLinear(dim, patch_dim)
        nn.init.normal_(self.head.weight, std=2.0 / math.sqrt(dim + patch_dim))  # Atari-PB's init
        nn.init.zeros_(self.head.bias)

    def tokens(self, latent: torch.Tensor, restore: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 1 + K, D) -> (N, 1 + L, D): embedded, unmasked with `restore` (None: nothing masked)."""
        x = self.embed(latent)
        cls, x = x[:, :1], x[:, 1:]
        if restore is not None:
            fill = self.mask_token.expand(len(x), restore.shape[1] - x.shape[1], -1)
            x = take(torch.cat([x, fill.to(x.dtype)], dim=1), restore)
        return torch.cat([cls, x + self.pos], dim=1)

    def forward(
        self,
        latent: torch.Tensor,
        restore: torch.Tensor | None,
        game_id: torch.Tensor,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.tokens(latent, restore)
        x = self.blocks(x) if context is None else self.blocks(x, self.tokens(context))
        x = x[:, 1:]
        n, length, dim = x.shape
        return self.head(x.reshape(n * length, dim), game_id.repeat_interleave(length)).view(n, length, -1)


def token_errors(pred: torch.Tensor, frames: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Per-token pixel MSE (N, L) of predictions (N, L, P) against float frame stacks (N, F, H, W); every
    token has P pixels, so the mean over tokens is the MSE over all pixels."""
    return (pred.float() - patchify(frames.float(), grid)).pow(2).mean(-1)


def masked_means(err: torch.Tensor, masked: torch.Tensor) -> dict[str, torch.Tensor]:
    """Metrics: the error on masked and on visible tokens (0 where there are none)."""
    m = masked.float()
    return {
        "mse_masked": (err * m).sum().detach() / m.sum().clamp(min=1),
        "mse_visible": (err * (1 - m)).sum().detach() / (1 - m).sum().clamp(min=1),
    }


class MaskedAutoencoder(Objective):
    """What MAE and SiamMAE build alike: the token grid, the number of tokens kept, the ViT encoder over
    them and the patch decoder (cross-attending to a second token set when `cross`). Registers nothing."""

    cross: bool = False

    def __init__(self, cfg, encoder: Encoder, num_actions: int):
        super().__init__(cfg, encoder, num_actions)
        check_dims(encoder, (cfg.enc_heads, cfg.dec_heads))
        _, h, w = encoder.neck.in_shape
        dim = encoder.out_dim
        self.grid = (h, w)
        self.keep = num_kept(h * w, cfg.mask_ratio)
        patch_dim = encoder.cfg.frames * (IMAGE_SIZE // h) * (IMAGE_SIZE // w)
        self.vit = TokenEncoder(self.grid, dim, cfg.enc_depth, cfg.enc_heads, cfg.mlp_ratio)
        self.decoder = PatchDecoder(
            self.grid, dim, patch_dim, cfg.dec_depth, cfg.dec_heads, cfg.mlp_ratio, cross=self.cross
        )
