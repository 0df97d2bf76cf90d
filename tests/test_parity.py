"""The parity table: every default that changes a published number equals the released Atari-PB code's value
(github dojeon-ai/Atari-PB at e989dfa; file:line in docs/parity.md, which lists every deliberate deviation
as a named option). One row per released value; a changed default fails its row."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from atari_pb.core.schedules import epoch_steps, warmup_cosine
from atari_pb.data.collect import CollectConfig
from atari_pb.data.download import FALLBACK_CKPTS
from atari_pb.eval.scores import dqn_normalized, human_normalized
from atari_pb.finetune.base import load_protocol_config
from atari_pb.models.agent import build_agent_net
from atari_pb.models.backbone import Backbone
from atari_pb.models.encoder import Encoder, ModelConfig
from atari_pb.objectives import OBJECTIVES
from atari_pb.pretrain.config import load_pretrain_config

# objective -> (epochs, batch size) of its released script (scripts/pretrain/*.sh over configs/trainer/base.yaml)
PRETRAIN_SCHEDULES = {name: (100, 512) for name in OBJECTIVES if name != "proto"}
PRETRAIN_SCHEDULES.update(spr=(25, 128), spr_idm=(25, 128), dt=(12, 64))


def released_rows():
    """(row, value here, released value)."""
    bc = load_protocol_config("offline_bc").train
    rainbow = load_protocol_config("rainbow").agent
    obj = {name: load_pretrain_config(name) for name in OBJECTIVES}
    curl = obj["curl"]
    return [
        # 3a-3b: pre-training length and schedule
        *[
            (
                f"3a {name}: epochs, batch size, steps from epochs",
                (o.trainer.epochs, o.trainer.batch_size, o.trainer.steps),
                (*PRETRAIN_SCHEDULES[name], 0),
            )
            for name, o in obj.items()
            if name in PRETRAIN_SCHEDULES
        ],
        (
            "3a 100 epochs of the 10M selection's 9,993,000 starts at 512",
            epoch_steps(100, 9_993_000, 512),
            1_951_800,
        ),
        (
            "3b warm-up share, min lr ratio, grad clip",
            (curl.optim.warmup, curl.optim.min_lr_scale, curl.optim.grad_clip),
            (0.1, 0.1, 0.5),
        ),
        # 3h, 3n, 3o, 3p: objectives
        (
            "3h ATC: key exactly n_step = 3 ahead",
            (obj["atc"].objective.n_step, obj["atc"].objective.random_future),
            (3, False),
        ),
        ("3n SPR: InfoNCE", obj["spr"].objective.loss, "infonce"),
        ("3o SPR+IDM: negative cosine", obj["spr_idm"].objective.loss, "cosine"),
        (
            "3p CQL: target never updated, picks the next action",
            (obj["cql"].objective.update_target, obj["cql"].objective.double_q),
            (False, False),
        ),
        # 4a-4b: offline BC
        ("4a download: checkpoint 50 falls back to 49, then 48", FALLBACK_CKPTS, {50: (49, 48)}),
        (
            "4b BC: epochs, batch, peak lr, weight decay",
            (bc.epochs, bc.batch_size, bc.lr, bc.weight_decay),
            (100, 512, 1e-3, 1e-4),
        ),
        (
            "4b BC: warm-up share, min lr ratio, grad clip",
            (bc.warmup, bc.min_lr_scale, bc.grad_clip),
            (0.1, 0.1, 0.5),
        ),
        ("4b BC: 100 epochs of 5 x 9,993 starts at 512", epoch_steps(100, 5 * 9_993, 512), 9_800),
        # 2d: fine-tuning heads
        ("2d heads: N(0, 1) init (BC, Rainbow)", (bc.head_init, rainbow.head_init), ("normal", "normal")),
        # DQN-Replay as logged
        ("collect: rewards stored clipped", CollectConfig().reward, "clipped"),
    ]


@pytest.mark.parametrize("row,ours,released", released_rows(), ids=lambda v: v if isinstance(v, str) else "")
def test_default_equals_the_released_value(row, ours, released):
    assert ours == released, row


def test_backbone_is_the_released_network():
    """2b: GroupNorm(4) without affine parameters and PyTorch's default conv init: the released parameter
    count, no norm tensors, every conv weight within nn.Conv2d's default bound 1/sqrt(fan_in)."""
    torch.manual_seed(0)
    backbone = Backbone("resnet50")
    assert sum(p.numel() for p in backbone.parameters()) == 23_458_048
    norms = [m for m in backbone.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_groups == 4 and not m.affine for m in norms)
    for conv in (m for m in backbone.modules() if isinstance(m, nn.Conv2d)):
        fan_in = conv.weight[0].numel()
        assert conv.weight.abs().max() <= 1 / math.sqrt(fan_in) + 1e-7
    features = backbone(torch.randint(0, 256, (8, 4, 84, 84), dtype=torch.uint8))
    assert features.shape == (8, 2048, 6, 6)
    # the audit's fresh released network: feature mean ~1.0, ~29% zeros (timm's zero-init gave 0.4, 49%)
    assert 0.8 < features.mean() < 1.2 and 0.2 < (features == 0).float().mean() < 0.4


def test_fine_tuning_heads_start_as_the_released_embeddings():
    """2d: the released heads are nn.Embedding rows, N(0, 1) weights and biases."""
    torch.manual_seed(0)
    encoder = Encoder(ModelConfig(preset="tiny"))
    head = build_agent_net(encoder, 18 * 51, head_init="normal").head[-1]
    assert abs(head.weight.std().item() - 1.0) < 0.02 and abs(head.bias.std().item() - 1.0) < 0.1
    default = build_agent_net(encoder, 18, head_init="torch").head[-1]
    assert default.weight.abs().max() <= 1 / math.sqrt(default.in_features)


def test_lr_schedule_is_the_released_one():
    """3b / 4b: CosineAnnealingWarmupRestarts with one cycle: the first step at min_lr, linear to lr over
    the warm-up, cosine back to min_lr (src/common/schedulers.py)."""
    steps, warm = 1000, 100
    scale = warmup_cosine(steps, 0.1, 0.1)
    assert scale(0) == pytest.approx(0.1)
    assert scale(50) == pytest.approx(0.1 + 0.9 * 50 / warm)
    assert scale(warm) == pytest.approx(1.0)
    mid = warm + (steps - warm) // 2
    assert scale(mid) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (mid - warm) / (steps - warm)))
    )
    assert scale(steps - 1) == pytest.approx(0.1, abs=1e-4)


def test_normalisation_is_the_released_formula():
    """6a: (s - min(r, d)) / (max(r, d) - min(r, d) + 1e-6), HNS with + 1e-6 (src/common/logger.py)."""
    assert dqn_normalized("montezuma_revenge", 400.0) == pytest.approx(400.0 / 1e-6)
    assert dqn_normalized("boxing", 50.0) == pytest.approx((50.0 - 0.1) / (77.99 - 0.1 + 1e-6), rel=1e-12)
    assert human_normalized("boxing", 6.1) == pytest.approx((6.1 - 0.1) / (12.1 - 0.1 + 1e-6), rel=1e-12)
