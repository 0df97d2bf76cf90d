"""Trained Rainbow agents as files, and the epsilon-greedy policy that plays one (`collect --policy
eps-greedy:<agent>`: how Far-OOD offline data comes from a trained agent, as in Atari-PB).

An agent file is the acting network (backbone, neck, C51 head) as safetensors with a JSON beside it that
names the game and the shapes needed to rebuild it; loading it executes nothing:

    save_agent(result.agent, get_game("surround"), "agents/seed0.safetensors")
    agent, game = load_agent("agents/seed0.safetensors")
    agent.act(obs_uint8)                          # greedy actions
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from atari_pb.errors import DataError, UsageError
from atari_pb.finetune.rainbow import AgentConfig, RainbowAgent
from atari_pb.games import Game, get_game
from atari_pb.models.encoder import (
    Encoder,
    ModelConfig,
    config_path,
    read_config,
    read_tensors,
    write_weights,
)

AGENT_FORMAT = "atari-pb-rainbow-agent/1"
_ACTING = ("backbone", "neck", "head")


def save_agent(agent: RainbowAgent, game: Game, path: str | Path) -> Path:
    """Write the network `agent` acts with (the EMA target under Atari-PB's `act_with: target`)."""
    target = agent.cfg.act_with == "target"
    modules = dict(
        zip(
            _ACTING,
            (agent.target_backbone, agent.target_neck, agent.target_head)
            if target
            else (agent.backbone, agent.neck, agent.head),
        )
    )
    state = {
        f"{name}.{key}": value
        for name, module in modules.items()
        for key, value in module.state_dict().items()
    }
    config = {
        "format": AGENT_FORMAT,
        "game": game.name,
        "num_actions": agent.num_actions,
        "model": asdict(agent.model_cfg),
        "agent": {k: getattr(agent.cfg, k) for k in ("num_atoms", "v_min", "v_max")},
    }
    return write_weights(path, state, config)


def load_agent(path: str | Path, device: str | torch.device = "cpu") -> tuple[RainbowAgent, Game]:
    """Rebuild a saved agent (frozen, eval mode, acting with the saved network) and its game."""
    path = Path(path)
    config = read_config(path, AGENT_FORMAT, "an agent")
    try:
        game = get_game(config["game"])
        model = ModelConfig(**config["model"])
        cfg = AgentConfig(**config["agent"], act_with="online")
        agent = RainbowAgent(Encoder(model), int(config["num_actions"]), cfg)
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{config_path(path)}: not an atari-pb agent config ({err})") from None
    state = read_tensors(path)
    for name in _ACTING:
        part = {k.split(".", 1)[1]: v for k, v in state.items() if k.split(".", 1)[0] == name}
        try:
            getattr(agent, name).load_state_dict(part)
        except RuntimeError as err:  # missing, unexpected or misshapen tensors
            raise DataError(f"{path}: weights do not fit its config ({str(err).splitlines()[0]})") from None
    agent.to(device).eval().requires_grad_(False)
    return agent, game


class EpsGreedyPolicy:
    """A saved agent's greedy action with probability 1 - epsilon, else uniform; one generator per run so
    each run is reproducible on its own (like collect's RandomPolicy)."""

    def __init__(self, path: str | Path, game: Game, num_actions: int, epsilon: float, seeds: Sequence[int]):
        self.agent, trained_on = load_agent(path)
        if trained_on.name != game.name:
            raise UsageError(f"agent {path} was trained on {trained_on.name}, not {game.name}")
        if self.agent.num_actions != num_actions:
            raise DataError(
                f"agent {path} has {self.agent.num_actions} actions; {game.name} has {num_actions}"
            )
        self.epsilon, self.num_actions = epsilon, num_actions
        self.rngs = [np.random.default_rng(s) for s in seeds]

    def act(self, obs: np.ndarray) -> np.ndarray:
        greedy = self.agent.act(torch.from_numpy(obs)).cpu().numpy()
        explore = np.array([rng.random() < self.epsilon for rng in self.rngs])
        random = np.array([rng.integers(self.num_actions) for rng in self.rngs])
        return np.where(explore, random, greedy).astype(np.int32)
