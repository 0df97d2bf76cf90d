"""Q-learning math shared by CQL pre-training and Rainbow fine-tuning: C51's categorical projection and
double-Q action selection. Pure functions on tensors."""

from __future__ import annotations

import torch


def project_distribution(
    probs: torch.Tensor, ret: torch.Tensor, discount: torch.Tensor, support: torch.Tensor
) -> torch.Tensor:
    """C51's categorical projection (Bellemare et al. 2017, Algorithm 1): the distribution `probs` (B, K)
    on the evenly spaced `support` (K,), shifted to ret + discount * z ((B,) each; discount = gamma^n *
    (1 - done)) and clipped to the support's ends, put back onto the support: (B, K).

    Each shifted atom splits its mass between its two neighbouring support points in proportion to
    closeness: the hat weight max(0, 1 - |Tz_j - z_i| / dz) of atom j on point i. That is the same split
    as the floor/ceil form, with no special case for atoms landing exactly on a support point.
    """
    delta = (support[-1] - support[0]) / (len(support) - 1)
    tz = (ret[:, None] + discount[:, None] * support).clamp(support[0], support[-1])  # (B, K) atoms j
    hat = (1.0 - (tz[:, None, :] - support[None, :, None]).abs() / delta).clamp(min=0.0)  # (B, i, j)
    return (hat * probs[:, None, :]).sum(-1)  # elementwise, not a matmul: stays float32 under autocast


def select_greedy(q_select: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Row b of `values` (B, A, ...) at argmax_a q_select[b] ((B, A)): double Q selects the next action
    with the online network and evaluates it with the target."""
    rows = torch.arange(len(values), device=values.device)
    return values[rows, q_select.argmax(-1)]


def q_values(logits: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Expected returns (B, A) of C51 logits (B, A, K) on `support` (K,)."""
    return (logits.softmax(-1) * support).sum(-1)
