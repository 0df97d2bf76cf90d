"""PPO with two value heads, as in RND: the policy network, GAE, and one update over a rollout.

The policy / value network is RND's own (Nature-CNN convolutions, 256 -> 448 hidden units, an extra
residual layer for the values) on the uint8 4-frame stack / 255, trained from scratch: the pre-trained
encoder feeds only the intrinsic reward. The extrinsic and intrinsic values have separate heads because
their returns differ in kind (episodic, gamma 0.999, sign-clipped game rewards vs non-episodic, gamma 0.99,
normalised intrinsic rewards); the advantage the policy follows is ext_coef * A_ext + int_coef * A_int.

The predictor of the intrinsic reward is trained inside the same update, on a random `update_proportion`
of each minibatch, in its own optimiser parameter group (learning rate scaled for PreND).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from atari_pb.prend.config import PPOConfig
from atari_pb.prend.intrinsic import IntrinsicReward


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    last_value: torch.Tensor,
    dones: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over a (T, N) rollout.

    values[t] = V(s_t); last_value = V(s_T), the observation after the last step; dones[t] = 1 when the
    episode ended with transition t (nothing after it is bootstrapped). Returns (advantages, returns =
    advantages + values):
        delta_t = r_t + gamma * (1 - d_t) * V(s_{t+1}) - V(s_t)
        A_t = delta_t + gamma * lam * (1 - d_t) * A_{t+1}
    Non-episodic returns (RND's intrinsic ones) pass dones = 0."""
    steps = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(last_value)
    next_value = last_value
    for t in reversed(range(steps)):
        keep = 1.0 - dones[t]
        delta = rewards[t] + gamma * keep * next_value - values[t]
        next_adv = delta + gamma * lam * keep * next_adv
        advantages[t] = next_adv
        next_value = values[t]
    return advantages, advantages + values


def _layer(module: nn.Module, gain: float = math.sqrt(2)) -> nn.Module:
    nn.init.orthogonal_(module.weight, gain)
    nn.init.zeros_(module.bias)
    return module


class PolicyNet(nn.Module):
    """uint8 (B, F, 84, 84) -> (action logits (B, A), V_ext (B,), V_int (B,)). RND's architecture."""

    def __init__(self, frames: int, num_actions: int):
        super().__init__()
        self.trunk = nn.Sequential(
            _layer(nn.Conv2d(frames, 32, 8, 4)),
            nn.ReLU(),
            _layer(nn.Conv2d(32, 64, 4, 2)),
            nn.ReLU(),
            _layer(nn.Conv2d(64, 64, 3, 1)),
            nn.ReLU(),
            nn.Flatten(),
            _layer(nn.Linear(64 * 7 * 7, 256)),
            nn.ReLU(),
            _layer(nn.Linear(256, 448)),
            nn.ReLU(),
        )
        self.extra = nn.Sequential(_layer(nn.Linear(448, 448), 0.1), nn.ReLU())
        self.actor = nn.Sequential(
            _layer(nn.Linear(448, 448), 0.01), nn.ReLU(), _layer(nn.Linear(448, num_actions), 0.01)
        )
        self.value_ext = _layer(nn.Linear(448, 1), 0.01)
        self.value_int = _layer(nn.Linear(448, 1), 0.01)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.trunk(obs.float() / 255.0)
        v = self.extra(h) + h
        return self.actor(h), self.value_ext(v).squeeze(-1), self.value_int(v).squeeze(-1)


def make_optimizer(
    policy: PolicyNet, intrinsic: IntrinsicReward | None, cfg: PPOConfig, predictor_scale: float
) -> torch.optim.Adam:
    """One Adam with two parameter groups: `policy` at ppo.lr and `predictor` at ppo.lr * scale. The
    frozen parts of the intrinsic reward (RND's target, PreND's backbone and target neck) are in none."""
    groups = [{"params": list(policy.parameters()), "lr": cfg.lr, "name": "policy"}]
    if intrinsic is not None:
        groups.append(
            {"params": intrinsic.predictor_parameters(), "lr": cfg.lr * predictor_scale, "name": "predictor"}
        )
    return torch.optim.Adam(groups, lr=cfg.lr, eps=cfg.adam_eps)


@dataclass
class Batch:
    """A rollout flattened to B = T * N samples (on the learner's device)."""

    obs: torch.Tensor  # uint8 (B, F, 84, 84)
    actions: torch.Tensor  # int64 (B,)
    logprobs: torch.Tensor  # (B,) of the acting policy
    advantages: torch.Tensor  # (B,) ext_coef * A_ext + int_coef * A_int
    returns_ext: torch.Tensor
    returns_int: torch.Tensor
    intrinsic_inputs: torch.Tensor | None  # (B, ...) what the predictor reads, for the next observations


def ppo_update(
    policy: PolicyNet,
    intrinsic: IntrinsicReward | None,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    cfg: PPOConfig,
    update_proportion: float,
    generator: torch.Generator,
) -> dict[str, float]:
    """cfg.epochs passes of cfg.minibatches minibatches of clipped PPO + the predictor's loss."""
    b = batch.actions.shape[0]
    size = b // cfg.minibatches
    policy_params = list(policy.parameters())
    sums: dict[str, float] = {}
    count = 0
    for _ in range(cfg.epochs):
        order = torch.randperm(b, generator=generator).to(batch.actions.device)
        for start in range(0, b, size):
            idx = order[start : start + size]
            logits, v_ext, v_int = policy(batch.obs[idx])
            logp_all = F.log_softmax(logits, -1)
            logp = logp_all.gather(1, batch.actions[idx, None]).squeeze(1)
            entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
            log_ratio = logp - batch.logprobs[idx]
            ratio = log_ratio.exp()
            adv = batch.advantages[idx]
            if cfg.norm_adv:
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip, 1 + cfg.clip)).mean()
            v_ext_loss = 0.5 * (v_ext - batch.returns_ext[idx]).pow(2).mean()
            v_int_loss = 0.5 * (v_int - batch.returns_int[idx]).pow(2).mean()
            loss = pg_loss - cfg.ent_coef * entropy + cfg.vf_coef * (v_ext_loss + v_int_loss)

            predictor_loss = torch.zeros((), device=loss.device)
            if intrinsic is not None and batch.intrinsic_inputs is not None:
                # RND trains its predictor on a random share of each minibatch so that it does not learn
                # faster when more envs collect the same experience
                keep = torch.rand(len(idx), generator=generator).to(loss.device) < update_proportion
                if keep.any():
                    predictor_loss = intrinsic.error(batch.intrinsic_inputs[idx][keep]).mean()
                loss = loss + predictor_loss

            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = (
                nn.utils.clip_grad_norm_(policy_params, cfg.max_grad_norm)
                if cfg.max_grad_norm > 0
                else torch.zeros(())
            )
            optimizer.step()
            with torch.no_grad():
                approx_kl = ((ratio - 1) - log_ratio).mean()
                clipfrac = ((ratio - 1).abs() > cfg.clip).float().mean()
            for key, value in (
                ("pg_loss", pg_loss),
                ("v_ext_loss", v_ext_loss),
                ("v_int_loss", v_int_loss),
                ("entropy", entropy),
                ("approx_kl", approx_kl),
                ("clipfrac", clipfrac),
                ("predictor_loss", predictor_loss),
                ("grad_norm", grad_norm),
            ):
                sums[key] = sums.get(key, 0.0) + float(value.detach())
            count += 1
    return {f"ppo/{k}": v / count for k, v in sums.items()}
