"""Stacked heads for fleets: the necks and heads of K agents of one shape as (K, ...) tensors, run in one
vmapped call, with each agent's gradient clipping and optimiser step still its own.

A fleet's agents share a frozen backbone; what differs is a small neck and head each. Run one by one they
cost a few hundred small kernel launches per agent and update, which on a GPU outweighs the shared backbone
pass; stacked (torch.func.stack_module_state + vmap) the whole fleet costs the same few hundred launches.

    parts = [NeckHead(net.neck, net.head) for net in nets]   # models.agent.NeckHead; one shape: the same number of actions
    params, buffers = stack_parts(parts)                     # {name: (K, ...) leaf tensor}
    out = run_stacked(meta_copy(parts[0]), params, buffers, features)   # (K, B, ...) -> (K, B, out_dim)
    clip_per_agent_([p.grad for p in params.values()], max_norm)

Every agent's loss is the mean over its own batch and the fleet's total is their sum, so each agent's slice
of a stacked tensor gets exactly its own gradient. Adam's and AdamW's updates are elementwise, so one
optimiser over the stacked tensors is each agent's own, as long as every agent's step count and learning
rate are the same (Rainbow's); `adamw_step_` takes one learning rate per agent (offline BC's schedules follow
each game's data size). `gather_adam_states` and `scatter_` move parameters and optimiser moments between
the stacks and the agents' own modules and optimisers, whose format checkpoints keep.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap


def meta_copy(part: nn.Module) -> nn.Module:
    """The module's structure without its storage: what `run_stacked` calls with each agent's tensors."""
    return copy.deepcopy(part).to("meta")


def stack_parts(parts: Sequence[nn.Module]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(parameters, buffers), each {name: (K, ...) tensor}; the parameters are new leaves with gradients."""
    return stack_module_state(list(parts))


def run_stacked(
    base: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    """(K, B, ...) inputs -> (K, B, ...) outputs, agent k's rows through agent k's parameters."""
    return vmap(lambda p, b, rows: functional_call(base, (p, b), (rows,)))(params, buffers, x)


@torch.no_grad()
def clip_per_agent_(grads: Sequence[torch.Tensor], max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_'s rule on each agent's slice of the stacked gradients (in place);
    returns the (K,) norms before clipping. An infinite `max_norm` clips nothing."""
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads]).norm(dim=0)
    if math.isfinite(max_norm):
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.view(-1, *[1] * (g.dim() - 1)))
    return norms


def gather_adam_states(
    params: dict[str, torch.Tensor], parts: Sequence[nn.Module], optimizers: Sequence[torch.optim.Optimizer]
) -> dict[torch.Tensor, dict]:
    """The agents' Adam/AdamW moments for the stacked tensors (restored agents); {} for fresh ones. Every
    agent must be at the same optimiser step (a fleet's agents are in lockstep)."""
    states = {}
    for name, stacked in params.items():
        own = [opt.state.get(part.get_parameter(name)) for opt, part in zip(optimizers, parts, strict=True)]
        if all(own):
            steps = {float(s["step"]) for s in own}
            if len(steps) != 1:
                raise ValueError(f"stacked agents must be at one optimiser step; got steps {sorted(steps)}")
            states[stacked] = {
                "step": own[0]["step"].clone(),
                "exp_avg": torch.stack([s["exp_avg"] for s in own]),
                "exp_avg_sq": torch.stack([s["exp_avg_sq"] for s in own]),
            }
    return states


@torch.no_grad()
def scatter_(
    params: dict[str, torch.Tensor],
    parts: Sequence[nn.Module],
    states: dict[torch.Tensor, dict] | None = None,
    optimizers: Sequence[torch.optim.Optimizer] = (),
) -> None:
    """Write each agent's slice of the stacked tensors back into its own modules (and, given `states` and
    the agents' optimisers, its slice of the moments into its own optimiser)."""
    for k, part in enumerate(parts):
        for name, param in part.named_parameters():
            param.copy_(params[name][k])
            state = states.get(params[name]) if states is not None else None
            if state:
                optimizers[k].state[param] = {
                    "step": state["step"].clone(),
                    "exp_avg": state["exp_avg"][k].clone(),
                    "exp_avg_sq": state["exp_avg_sq"][k].clone(),
                }


@torch.no_grad()
def adamw_step_(
    params: Sequence[torch.Tensor],
    states: dict[torch.Tensor, dict],
    lrs: Sequence[float],
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
) -> None:
    """One torch.optim.AdamW step (its single-tensor rule, decoupled weight decay, no amsgrad) on stacked
    tensors whose agent k runs at learning rate lrs[k]. The per-agent factors are computed in double
    precision and rounded to the parameters' dtype, as torch rounds its Python-float ones."""
    beta1, beta2 = betas
    live = [
        p for p in params if p.grad is not None
    ]  # as torch: a parameter without a gradient is not stepped
    if not live:
        return
    decay = _per_agent([1 - lr * weight_decay for lr in lrs], live[0])  # (K,), made once a step
    for p in live:
        state = states.get(p)
        if not state:
            state = states[p] = {
                "step": torch.tensor(0.0),
                "exp_avg": torch.zeros_like(p),
                "exp_avg_sq": torch.zeros_like(p),
            }
        state["step"] += 1
        step = float(state["step"])
        shape = (-1, *[1] * (p.dim() - 1))
        p.mul_(decay.view(shape))
        state["exp_avg"].lerp_(p.grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        bias_correction1 = 1 - beta1**step
        denom = (state["exp_avg_sq"].sqrt() / (1 - beta2**step) ** 0.5).add_(eps)
        step_size = _per_agent([-lr / bias_correction1 for lr in lrs], p)  # lockstep: one step count
        p.add_(state["exp_avg"] / denom * step_size.view(shape))


def _per_agent(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """(K,) per-agent factors, computed in float64 and rounded once to `like`'s dtype, on its device."""
    return torch.tensor(values, dtype=torch.float64).to(like)
