"""Intrinsic rewards by distillation: RND (a random, fixed target) and PreND (a frozen pre-trained one).

Both reward a transition by how badly a trained predictor matches a fixed target on its next observation:

    r_int(s') = || predictor(s') - target(s') ||^2 / D      (the mean over the D output dims, as RND's code)

and train the predictor on that same error, so frames seen often stop paying.

RND (Burda et al. 2018; `--encoder random`). Target: RND's small CNN (three convolutions and a linear layer,
leaky ReLU, orthogonal initialisation) on the *normalised last frame* of the stack: per-pixel running
mean / std of the frames visited, initialised from random-agent steps, clipped to [-5, 5]. Predictor: the
same convolutions with two more linear layers. We keep RND's own networks rather than a random Atari-PB
backbone because RND as published is the baseline the PreND paper compares against.

PreND (arXiv 2410.01745; `--encoder PATH`). Target: the frozen pre-trained encoder (Atari-PB backbone +
per-game neck, with the game's id). Predictor: the project's agent network on that encoder
(`build_agent_net`: the *same* frozen backbone with a fresh, trainable one-row neck and a two-layer head),
trained at a scaled learning rate (0.01 by default) so the reward collapses slowly. The
backbone sees the encoder's native input, uint8 4-frame stacks, not normalised frames: it was pre-trained on
those, and normalising would move its input off that distribution. Because target and predictor share the
frozen backbone, it runs once per batch and its features are the inputs both heads read; they depend on
the frames alone, so a rollout's features are computed once and reused for the reward and for every
predictor update on that rollout.

The intrinsic returns are normalised by a running std (`RewardNormalizer`), the observation statistics
live in `RunningMeanStd`; both are small modules whose state is in the checkpoint.
"""

from __future__ import annotations

import copy
import json
import math

import torch
from torch import nn

from atari_pb.errors import UsageError
from atari_pb.games import Game
from atari_pb.models.agent import build_agent_net
from atari_pb.models.encoder import Encoder, config_path, load_encoder
from atari_pb.prend.config import IntrinsicConfig

MODES = ("rnd", "prend", "none")


def mode_of(encoder: str) -> str:
    """`random` -> rnd, `none` -> none (PPO alone), anything else is an encoder file -> prend."""
    return {"random": "rnd", "none": "none"}.get(encoder, "prend")


def default_predictor_lr_scale(mode: str) -> float:
    """What `intrinsic.predictor_lr_scale: null` means: 0.01 for PreND (the paper's), 1 for RND."""
    return 0.01 if mode == "prend" else 1.0


def predictor_lr_scale(cfg: IntrinsicConfig, mode: str) -> float:
    """The predictor's learning rate over ppo.lr that a run in `mode` trains at."""
    if cfg.predictor_lr_scale is not None:
        return cfg.predictor_lr_scale
    return default_predictor_lr_scale(mode)


# ------------------------------------------------------------------------------------------------ math
def merge_moments(mean, var, count, batch_mean, batch_var, batch_count):
    """Mean and (population) variance of two samples pooled, from their moments (Chan et al.), for
    numpy arrays or tensors alike."""
    delta = batch_mean - mean
    total = count + batch_count
    new_mean = mean + delta * (batch_count / total)
    m2 = var * count + batch_var * batch_count + delta**2 * (count * batch_count / total)
    return new_mean, m2 / total, total


def forward_filter(
    rewards: torch.Tensor, last: torch.Tensor, gamma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """RND's RewardForwardFilter: the running discounted sum u_t = gamma * u_{t-1} + r_t of each env's
    reward stream (T, N), continued from `last` (N,). Returns (u (T, N), u_T). Non-episodic: it runs
    across episode ends, as RND's intrinsic returns do."""
    out = torch.empty_like(rewards)
    u = last.to(rewards.dtype)
    for t in range(rewards.shape[0]):
        u = gamma * u + rewards[t]
        out[t] = u
    return out, u


class RunningMeanStd(nn.Module):
    """Running mean and variance of a stream of (B, *shape) batches (float64 buffers). The count starts
    at a tiny epsilon, as in OpenAI baselines, so the first batch sets the statistics almost alone."""

    def __init__(self, shape: tuple[int, ...] = ()):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.to(self.mean.device, torch.float64)
        mean, var, count = merge_moments(
            self.mean, self.var, self.count, x.mean(0), x.var(0, unbiased=False), float(x.shape[0])
        )
        self.mean.copy_(mean)
        self.var.copy_(var)
        self.count.fill_(float(count))

    @property
    def std(self) -> torch.Tensor:
        return (self.var + 1e-8).sqrt()


class RewardNormalizer(nn.Module):
    """RND's normalisation of intrinsic rewards: divide by the running std of the (non-episodic,
    gamma_int-discounted) intrinsic returns of every env's stream. No mean is subtracted."""

    def __init__(self, num_envs: int, gamma: float):
        super().__init__()
        self.gamma = gamma
        self.rms = RunningMeanStd()
        self.register_buffer("filtered", torch.zeros(num_envs, dtype=torch.float64))

    @torch.no_grad()
    def normalize(self, rewards: torch.Tensor) -> torch.Tensor:
        """(T, N) raw rewards -> normalised rewards; updates the statistics first (as RND)."""
        filtered, last = forward_filter(rewards.double(), self.filtered, self.gamma)
        self.filtered.copy_(last)
        self.rms.update(filtered.reshape(-1))
        return (rewards.double() / self.rms.std).to(rewards.dtype)


# -------------------------------------------------------------------------------------------- networks
def _orthogonal(module: nn.Module, gain: float = math.sqrt(2)) -> nn.Module:
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.orthogonal_(m.weight, gain)
            nn.init.zeros_(m.bias)
    return module


def rnd_convs(in_channels: int = 1) -> nn.Sequential:
    """RND's convolutions: 84x84 -> 64 x 7 x 7, leaky ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 8, 4),
        nn.LeakyReLU(),
        nn.Conv2d(32, 64, 4, 2),
        nn.LeakyReLU(),
        nn.Conv2d(64, 64, 3, 1),
        nn.LeakyReLU(),
        nn.Flatten(),
    )


class IntrinsicReward(nn.Module):
    """The common interface. `inputs(frames)` turns uint8 (B, F, 84, 84) next observations into what the
    two heads read; `error(inputs)` is each sample's squared prediction error (differentiable in the
    predictor only), which is both the reward and the predictor's loss."""

    mode: str
    fixed_inputs: bool  # inputs depend on the frames alone (and may be cached)
    chunk: int = 512

    def update_obs_stats(self, frames: torch.Tensor) -> None:
        """Observation statistics (RND's); a no-op for PreND."""

    def inputs(self, frames: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def heads(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(target (B, D) without gradient, prediction (B, D))."""
        raise NotImplementedError

    def predictor_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def error(self, inputs: torch.Tensor) -> torch.Tensor:
        target, prediction = self.heads(inputs)
        return (prediction - target).pow(2).mean(-1)

    @torch.no_grad()
    def reward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw intrinsic reward (B,), target embedding (B, D)), in chunks."""
        rewards, targets = [], []
        for part in inputs.split(self.chunk):
            target, prediction = self.heads(part)
            rewards.append((prediction - target).pow(2).mean(-1))
            targets.append(target)
        return torch.cat(rewards), torch.cat(targets)

    @torch.no_grad()
    def frame_rewards(self, frames: torch.Tensor) -> torch.Tensor:
        """Raw intrinsic rewards of uint8 frame stacks (the inputs made here)."""
        return self.reward(self.inputs(frames))[0]


class RND(IntrinsicReward):
    """RND: random fixed CNN target and a trained CNN predictor on the normalised last frame."""

    mode = "rnd"
    fixed_inputs = False  # the normalisation moves with the statistics

    def __init__(self, cfg: IntrinsicConfig, size: int = 84):
        super().__init__()
        self.clip, self.chunk = cfg.obs_clip, cfg.reward_chunk
        d = cfg.rnd_embed_dim
        self.obs_rms = RunningMeanStd((size, size))
        flat = 64 * 7 * 7
        self.target = _orthogonal(nn.Sequential(rnd_convs(), nn.Linear(flat, d))).requires_grad_(False)
        self.predictor = _orthogonal(
            nn.Sequential(
                rnd_convs(),
                nn.Linear(flat, 512),
                nn.ReLU(),
                nn.Linear(512, 512),
                nn.ReLU(),
                nn.Linear(512, d),
            )
        )
        self.out_dim = d

    def update_obs_stats(self, frames: torch.Tensor) -> None:
        self.obs_rms.update(frames[:, -1])

    @torch.no_grad()
    def inputs(self, frames: torch.Tensor) -> torch.Tensor:
        last = frames[:, -1:].to(self.obs_rms.mean.device, torch.float32)
        mean, std = self.obs_rms.mean.float(), self.obs_rms.std.float()
        return ((last - mean) / std).clamp_(-self.clip, self.clip)

    def heads(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            target = self.target(inputs)
        return target, self.predictor(inputs)

    def predictor_parameters(self) -> list[nn.Parameter]:
        return list(self.predictor.parameters())


class PreND(IntrinsicReward):
    """PreND: target = frozen encoder (backbone + neck at the game's id); predictor = `build_agent_net` on
    the encoder (the same frozen backbone + a fresh trainable neck with one spatial embedding + a two-layer
    head). The backbone is shared: it runs once per frame for both."""

    mode = "prend"
    fixed_inputs = True  # features of a frozen backbone

    def __init__(self, encoder: Encoder, game_id: int, cfg: IntrinsicConfig):
        super().__init__()
        self.chunk = cfg.reward_chunk
        d = encoder.out_dim
        # a fresh neck: a copy of the target's would predict it exactly and pay nothing from the start; the
        # neck ends in a ReLU, so a two-layer head lets the prediction take any value the target's can
        predictor = build_agent_net(encoder, d, head_hidden=[d])
        self.backbone = predictor.backbone.eval()
        self.target_neck = copy.deepcopy(encoder.neck).eval().requires_grad_(False)
        self.predictor_neck, self.predictor_head = predictor.neck, predictor.head
        self.register_buffer("game_id", torch.tensor(game_id, dtype=torch.long))
        self.out_dim = d

    def train(self, mode: bool = True) -> PreND:
        super().train(mode)
        self.backbone.eval()  # frozen parts stay in eval mode
        self.target_neck.eval()
        return self

    @torch.no_grad()
    def inputs(self, frames: torch.Tensor) -> torch.Tensor:
        dev = self.game_id.device
        return torch.cat([self.backbone(part.to(dev)) for part in frames.split(self.chunk)])

    def heads(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = inputs.shape[0]
        with torch.no_grad():
            target = self.target_neck(inputs, self.game_id.expand(b))
        # the agent network's neck reads its one spatial embedding, row 0 (AgentNet.from_features)
        z = self.predictor_neck(inputs, torch.zeros(b, dtype=torch.long, device=inputs.device))
        return target, self.predictor_head(z)

    def predictor_parameters(self) -> list[nn.Parameter]:
        return [*self.predictor_neck.parameters(), *self.predictor_head.parameters()]


# ------------------------------------------------------------------------------------------- building
def check_encoder_fits(encoder: Encoder, path: str, frames: int) -> None:
    """An encoder PreND can use: it takes the env's `frames`-frame stacks and gives (B, out_dim)."""
    if encoder.cfg.frames != frames:
        raise UsageError(
            f"{path}: the encoder takes {encoder.cfg.frames}-frame stacks but env.frames={frames}; "
            f"use an encoder made for {frames} frames or set env.frames={encoder.cfg.frames}"
        )
    try:
        declared = json.loads(config_path(path).read_text()).get("out_dim", encoder.out_dim)
    except (OSError, ValueError):
        declared = encoder.out_dim
    try:
        with torch.no_grad():
            out = encoder(
                torch.zeros(2, frames, 84, 84, dtype=torch.uint8, device=encoder.neck.norm.weight.device)
            )
    except RuntimeError as err:
        raise UsageError(
            f"{path}: the encoder does not take (B, {frames}, 84, 84) frame stacks ({str(err).splitlines()[0]})"
        ) from None
    if out.dim() != 2 or out.shape[0] != 2 or out.shape[1] != declared:
        raise UsageError(
            f"{path}: the encoder gives {tuple(out.shape[1:])} embeddings per frame stack, its config says "
            f"out_dim {declared}; PreND needs (B, out_dim)"
        )


def build_intrinsic(
    encoder: str, game: Game, frames: int, cfg: IntrinsicConfig, device: torch.device | str = "cpu"
) -> IntrinsicReward | None:
    """The intrinsic reward `--encoder` names: `random` (RND), `none` (None), or an encoder file (PreND).
    Its random initialisation follows torch's global generator (seed it first)."""
    mode = mode_of(encoder)
    if mode == "none":
        return None
    if mode == "rnd":
        return RND(cfg).to(device)
    enc = load_encoder(encoder)  # a missing or unreadable file is a one-line error naming it
    check_encoder_fits(enc, encoder, frames)
    return PreND(enc, game.game_id, cfg).to(device)
