"""The network every fine-tuning protocol trains on an encoder, built one way, and its file format.

    net = build_agent_net(encoder, out_dim=num_actions, train_backbone=False)
    net(obs_uint8)        # backbone (a copy of the encoder's, frozen) -> fresh neck -> fresh head

The backbone is copied from the encoder and frozen (trained too for the `e2e` baseline); the neck is a fresh
Atari-PB spatial-MLP neck (the released linear neck for the Nature CNN) with one spatial embedding (Atari-PB's per-game neck restricted to the one game
being fine-tuned: its other rows would never be read); the head is a fresh linear layer, or an MLP with
`head_hidden` layers. Offline BC (logits over the actions), Rainbow (C51 logits) and PreND's predictor (an
embedding) are all this network.

An agent file is such a network as safetensors, with a JSON beside it naming the game, the encoder's model
config and how to read the head (`logits` or `c51`); loading it executes nothing:

    save_agent(net, get_game("surround"), "agents/seed0.safetensors", head={"kind": "c51", ...})
    agent, game = load_agent("agents/seed0.safetensors")
    agent.act(obs_uint8)                          # greedy actions
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from atari_pb.errors import DataError
from atari_pb.games import Game, get_game
from atari_pb.models.distributional import q_values
from atari_pb.models.encoder import (
    Encoder,
    ModelConfig,
    config_path,
    make_neck,
    read_config,
    read_tensors,
    write_weights,
)
from atari_pb.models.layers import mlp

AGENT_FORMAT = "atari-pb-agent/1"
HEAD_KINDS = ("logits", "c51")
# normal: weights and biases N(0, 1), as the released fine-tuning heads (src/models/heads/mh_linear.py:18-19,
# mh_distributional.py:21-22 are nn.Embedding rows); torch: nn.Linear's default U(+-1/sqrt(fan_in))
HEAD_INITS = ("normal", "torch")


class NeckHead(nn.Module):
    """An agent net's neck and head as one module, backbone features -> outputs (what a fleet stacks, what
    memory estimates measure)."""

    def __init__(self, neck: nn.Module, head: nn.Module):
        super().__init__()
        self.neck, self.head = neck, head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        game = torch.zeros(len(features), dtype=torch.long, device=features.device)  # the one game's row
        return self.head(self.neck(features, game))


class AgentNet(nn.Module):
    """uint8 (B, F, 84, 84) stacks (or augmented floats in [0, 1]) -> (B, out_dim)."""

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module, train_backbone: bool):
        super().__init__()
        self.backbone, self.neck, self.head = backbone, neck, head
        self.train_backbone = train_backbone
        self.bf16 = False  # the backbone runs under bfloat16 autocast (set_backbone_precision)

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """Backbone features (float32); no graph is built through a frozen backbone."""
        grad = self.train_backbone and torch.is_grad_enabled()
        with torch.set_grad_enabled(grad), torch.autocast(obs.device.type, torch.bfloat16, enabled=self.bf16):
            features = self.backbone(obs)
        return features.float()  # the neck and head stay float32 (a no-op without autocast)

    def from_features(self, features: torch.Tensor) -> torch.Tensor:
        return NeckHead.forward(self, features)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.from_features(self.features(obs))

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """Greedy actions (B,) of a head that gives one logit per action (offline BC)."""
        return self(torch.as_tensor(obs).to(next(self.parameters()).device)).argmax(-1)


def build_agent_net(
    encoder: Encoder,
    out_dim: int,
    train_backbone: bool = False,
    head_hidden: Sequence[int] = (),
    head_init: str = "torch",
) -> AgentNet:
    """Copy the encoder's backbone, freeze or train it, put a fresh neck and head on it (`head_init`: the last
    layer's initialisation, see HEAD_INITS). The encoder itself is only read. Initialisation follows
    torch's global generator."""
    backbone = copy.deepcopy(encoder.backbone).requires_grad_(train_backbone)
    neck = make_neck(encoder.cfg, encoder.neck.in_shape, num_games=1)
    head = mlp([neck.out_dim, *head_hidden, out_dim])
    if head_init == "normal":
        nn.init.normal_(head[-1].weight)
        nn.init.normal_(head[-1].bias)
    net = AgentNet(backbone, neck, head, train_backbone)
    net.model_cfg = encoder.cfg  # what a saved agent needs to rebuild its backbone
    return net


def set_backbone_precision(nets: Sequence[AgentNet], bf16: bool, channels_last: bool) -> None:
    """The fine-tuning protocols' `train.bf16` / `train.channels_last`: the nets' backbone pass under bfloat16
    autocast, their backbone weights in channels-last memory order (GPU speed options; neck, head and the
    optimiser stay float32). Off, nothing changes."""
    for net in nets:
        net.bf16 = bf16
        if channels_last:
            net.backbone.to(memory_format=torch.channels_last)


class GreedyAgent(nn.Module):
    """A loaded agent: `act(obs)` -> greedy actions (B,) int64, reading the head as its file says."""

    def __init__(self, net: AgentNet, num_actions: int, head: dict[str, Any]):
        super().__init__()
        self.net, self.num_actions, self.head_cfg = net, num_actions, head
        if head["kind"] == "c51":
            support = torch.linspace(head["v_min"], head["v_max"], head["num_atoms"])
            self.register_buffer("support", support, persistent=False)

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        out = self.net(torch.as_tensor(obs).to(next(self.net.parameters()).device))
        if self.head_cfg["kind"] == "c51":
            out = q_values(out.view(len(out), self.num_actions, -1), self.support)
        return out.argmax(-1)


def save_agent(net: AgentNet, game: Game, path: str | Path, num_actions: int, head: dict[str, Any]) -> Path:
    """Write an agent network and the JSON that rebuilds it (`head`: {"kind": "logits"} or {"kind": "c51",
    "num_atoms", "v_min", "v_max"})."""
    config = {
        "format": AGENT_FORMAT,
        "game": game.name,
        "num_actions": num_actions,
        "out_dim": net.head[-1].out_features,
        "head_hidden": [m.out_features for m in net.head if isinstance(m, nn.Linear)][:-1],
        "model": asdict(net.model_cfg),
        "head": head,
    }
    return write_weights(path, net.state_dict(), config)


def load_agent(path: str | Path, device: str | torch.device = "cpu") -> tuple[GreedyAgent, Game]:
    """Rebuild a saved agent (frozen, eval mode) and its game."""
    path = Path(path)
    config = read_config(path, AGENT_FORMAT, "an agent")
    try:
        game = get_game(config["game"])
        if config["head"]["kind"] not in HEAD_KINDS:
            raise ValueError(f"head kind {config['head']['kind']!r}; valid: {', '.join(HEAD_KINDS)}")
        net = build_agent_net(
            Encoder(ModelConfig(**config["model"])), config["out_dim"], False, config["head_hidden"]
        )
        agent = GreedyAgent(net, int(config["num_actions"]), config["head"])
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{config_path(path)}: not an atari-pb agent config ({err})") from None
    try:
        net.load_state_dict(read_tensors(path))
    except RuntimeError as err:  # missing, unexpected or misshapen tensors
        raise DataError(f"{path}: weights do not fit its config ({str(err).splitlines()[0]})") from None
    agent.to(device).eval().requires_grad_(False)
    return agent, game
