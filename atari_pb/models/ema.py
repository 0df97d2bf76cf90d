"""EMA target networks, one rule for pre-training objectives and fine-tuning agents alike.

Pairs are always (online, target); after each optimiser step: target <- tau * target + (1 - tau) * online,
parameter by parameter, with buffers copied.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn


def make_target(module: nn.Module) -> nn.Module:
    """A frozen copy of `module` to be moved toward it by `ema_update`."""
    return copy.deepcopy(module).requires_grad_(False)


@torch.no_grad()
def ema_update(pairs: Iterable[tuple[nn.Module, nn.Module]], tau: float) -> None:
    """Move every target of the (online, target) `pairs` toward its online module."""
    for online, target in pairs:
        torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), 1.0 - tau)
        for t, o in zip(target.buffers(), online.buffers()):
            t.copy_(o)
