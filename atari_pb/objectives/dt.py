"""Decision Transformer (Chen et al. 2021) as Atari-PB pre-trains it: a causal transformer over T steps of
(return-to-go, state, action) tokens predicts each step's logged action from that step's state token.

loss = mean over the B*T steps of cross-entropy(per-game head(transformer(tokens)[state token t]), a_t)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from atari_pb.data.stream import SampleSpec
from atari_pb.models.layers import PerGameLinear, Transformer, sincos_pos_embed
from atari_pb.objectives.base import Objective, register


@dataclass
class DTConfig:
    t_step: int = 8
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0  # tokens are as wide as the encoder's output: 512 / 2048 for resnet50, as Atari-PB
    rtg_scale: float = 0.01  # keeps the undiscounted return-to-go token small
    augment: bool = True


def _xavier(module: nn.Module) -> None:
    """Atari-PB's transformer initialisation: Xavier-uniform linear weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


@register
class DT(Objective):
    name = "dt"
    Config = DTConfig

    def __init__(self, cfg: DTConfig, encoder, num_actions: int):
        super().__init__(cfg, encoder, num_actions)
        dim = encoder.out_dim  # Atari-PB feeds its neck's 512-d output straight in as the state token
        self.rtg_embed = nn.Linear(1, dim)
        self.action_embed = nn.Embedding(num_actions, dim)
        # fixed sine-cosine position of each of the 3T tokens [R_1, s_1, a_1, ..., R_T, s_T, a_T]
        self.register_buffer("pos_embed", sincos_pos_embed(3 * cfg.t_step, dim), persistent=False)
        self.transformer = Transformer(dim, cfg.depth, cfg.heads, int(dim * cfg.mlp_ratio))
        self.transformer.apply(_xavier)
        self.head = PerGameLinear(dim, num_actions)

    def sample_spec(self) -> SampleSpec:
        # n_step 0: no future observation; rtg comes from the sampler, undiscounted to the episode end
        return SampleSpec(frames=self.encoder.cfg.frames, t_step=self.cfg.t_step, n_step=0, gamma=1.0)

    def action_logits(
        self, x: torch.Tensor, action: torch.Tensor, rtg: torch.Tensor, game_id: torch.Tensor
    ) -> torch.Tensor:
        """x (B*T, F, 84, 84) stacks (uint8 or float), action / rtg / game_id (B, T) -> (B, T, A) logits;
        step t's logits see the tokens up to its state token: R_<=t, s_<=t, a_<t."""
        b, t = action.shape
        game = game_id.flatten()
        state = self.encoder(x, game).view(b, t, -1)
        ret = self.rtg_embed(rtg.float().unsqueeze(-1) * self.cfg.rtg_scale)
        act = self.action_embed(action)
        tokens = torch.stack([ret, state, act], dim=2).flatten(1, 2) + self.pos_embed[: 3 * t]
        out = self.transformer(tokens, is_causal=True)[:, 1::3]  # the state tokens
        return self.head(out.flatten(0, 1), game).view(b, t, -1)

    def forward(self, batch, rand):
        x = self.view(batch["obs"], rand, self.cfg.augment)
        logits = self.action_logits(x, batch["action"], batch["rtg"], batch["game_id"]).flatten(0, 1)
        action = batch["action"].flatten()
        loss = F.cross_entropy(logits, action)
        return loss, {"acc": (logits.argmax(-1) == action).float().mean()}
