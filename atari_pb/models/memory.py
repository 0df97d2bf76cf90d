"""What a fleet's agents hold in device memory, estimated from the model's shapes alone: the model is built on
PyTorch's meta device (no storage, no arithmetic) and every layer's output size is read with hooks.

    backbone_row_bytes(cfg)          # the peak of a no-grad backbone pass, per input row
    head_row_bytes(cfg, outputs)     # what a neck and head keep per row for a training step
    head_param_bytes(cfg, outputs)   # one copy of a neck and head's parameters

Activations are counted as float32 (4 bytes): under bfloat16 autocast the convolutions' outputs halve, but
GroupNorm and the neck stay float32, so float32 is the bound. tests/test_memory.py checks the estimates
against a real pass's peak memory.
"""

from __future__ import annotations

from functools import cache

import torch
from torch import nn

from atari_pb.models.agent import NeckHead
from atari_pb.models.encoder import ModelConfig, make_neck
from atari_pb.models.layers import mlp

FLOAT_BYTES = 4
IMAGE = 84  # the observations' height and width
LIVE_OUTPUTS = 6  # layer outputs of the largest size alive at once in a no-grad pass, at most (calibrated)
MAX_ACTIONS = 18  # Atari's full action set: no game's head has more outputs per atom


def _leaf_output_numels(module: nn.Module, *inputs: torch.Tensor) -> list[int]:
    """Elements per row of every leaf module's output, in call order (a meta pass: shapes only)."""
    sizes: list[int] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: sizes.append(out[0].numel()))
        for m in module.modules()
        if not list(m.children())
    ]
    try:
        with torch.no_grad():
            module(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return sizes


@cache
def _meta_model(cfg_key: tuple, outputs: int) -> tuple[nn.Module, nn.Module, tuple[int, int, int]]:
    """(backbone, neck + head, feature shape) on the meta device."""
    from atari_pb.models.backbone import Backbone

    cfg = ModelConfig(preset=cfg_key[0], frames=cfg_key[1], neck_hidden=list(cfg_key[2]))
    with torch.device("meta"):
        backbone = Backbone(cfg.preset, cfg.frames)
        shape = tuple(backbone.body.forward_features(torch.zeros(1, cfg.frames, IMAGE, IMAGE)).shape[1:])
        neck = make_neck(cfg, shape, num_games=1)
        head = mlp([neck.out_dim, outputs])
    return backbone, NeckHead(neck, head), shape


def _key(cfg: ModelConfig) -> tuple:
    return (cfg.preset, cfg.frames, tuple(cfg.neck_hidden))


def backbone_row_bytes(cfg: ModelConfig) -> int:
    """Peak bytes per input row of a no-grad backbone pass: the uint8 stack, its float copy, and
    LIVE_OUTPUTS of the largest layer output. A residual block keeps its input for the shortcut while its
    projection, a convolution's output and its norm's exist, and the kernels add temporaries (GroupNorm's on a
    CPU): measured on CPU passes, 4.6 to 5.5 times the largest output besides the input (tests/test_memory.py
    checks the bound against real passes)."""
    backbone, _, _ = _meta_model(_key(cfg), 1)
    row = torch.zeros(1, cfg.frames, IMAGE, IMAGE, dtype=torch.uint8, device="meta")
    largest = max(_leaf_output_numels(backbone, row))
    pixels = cfg.frames * IMAGE * IMAGE
    return pixels + pixels * FLOAT_BYTES + LIVE_OUTPUTS * largest * FLOAT_BYTES


def head_row_bytes(cfg: ModelConfig, outputs: int) -> int:
    """Bytes per row of an agent's training step on its neck and head: its share of the backbone features,
    every layer output kept for the backward pass, and as much again for the gradients flowing back."""
    _, neck_head, shape = _meta_model(_key(cfg), outputs)
    features = torch.zeros(1, *shape, device="meta")
    kept = (
        sum(_leaf_output_numels(neck_head, features)) + features.numel()
    )  # the input scaled by the embedding
    return (features.numel() + 2 * kept) * FLOAT_BYTES


def head_param_bytes(cfg: ModelConfig, outputs: int) -> int:
    """One copy of an agent's neck and head parameters."""
    _, neck_head, _ = _meta_model(_key(cfg), outputs)
    return sum(p.numel() for p in neck_head.parameters()) * FLOAT_BYTES


def backbone_param_bytes(cfg: ModelConfig) -> int:
    backbone, _, _ = _meta_model(_key(cfg), 1)
    return sum(p.numel() for p in backbone.parameters()) * FLOAT_BYTES
