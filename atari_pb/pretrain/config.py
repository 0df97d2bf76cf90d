"""The configuration of a pre-training run: objectives/<name>.yaml, one section per module.

objective:  the objective's own dataclass (atari_pb/objectives/<name>.py)
model:      ModelConfig   (atari_pb/models/encoder.py)
optim:      OptimConfig   (this file: AdamW / Adam, cosine schedule with warm-up, clipping)
trainer:    TrainerConfig (this file: steps, batch, precision, checkpoints)
data:       DataConfig    (this file: which games of the shard directory)
"""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from atari_pb.config import config_file, load_config
from atari_pb.errors import UsageError
from atari_pb.models.backbone import NATURE, PRESET_NAMES
from atari_pb.models.encoder import ModelConfig


@dataclass
class OptimConfig:
    optimizer: str = "adamw"  # adamw | adam
    lr: float = 1e-4
    weight_decay: float = 1e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup: float = 0.1  # share of the steps spent warming up linearly
    min_lr_scale: float = 0.1  # the warm-up starts and the cosine ends at lr * min_lr_scale (released)
    grad_clip: float = 0.5  # max gradient norm; 0 = no clipping


@dataclass
class TrainerConfig:
    # The length of the run: `steps` optimiser steps, or with steps 0 (the default) `epochs` passes over the
    # data's valid starts at `batch_size`: the released schedule is 100 epochs of the 10M selection at 512
    # (~1.95M steps); objectives/spr*.yaml and dt.yaml set their own (25 at 128, 12 at 64).
    steps: int = 0
    epochs: float = 100.0
    batch_size: int = 512  # global: summed over ranks and micro-batches
    accumulate: int = 1  # micro-batches per optimiser step
    seed: int = 0
    save_every: int = 500  # steps between checkpoints (and at the end)
    log_every: int = 10
    bf16: bool = False  # autocast to bfloat16
    compile: bool = False  # torch.compile the objective
    channels_last: bool = False
    loader_threads: int = 2  # batches built ahead of the trainer
    device: str = "auto"  # auto | cpu | cuda | cuda:N


@dataclass
class DataConfig:
    games: list[str] = field(default_factory=list)  # empty: every game in the shard directory


@dataclass
class PretrainConfig:
    objective: Any = None  # replaced by the objective's own dataclass
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: DataConfig = field(default_factory=DataConfig)


def objective_yaml(name: str) -> Path:
    """objectives/<name>.yaml; a missing file is a one-line error (never the dataclass defaults alone)."""
    return config_file("objectives", name)


def load_pretrain_config(name: str, overrides: list[str] = (), path: Path | None = None) -> PretrainConfig:
    """objectives/<name>.yaml (or `path`) over the objective's defaults, then `key=value` overrides."""
    from atari_pb.objectives import objective_class

    cls = objective_class(name)

    # the same sections, with this objective's config as the type of `objective`
    schema = make_dataclass(
        f"{cls.__name__}PretrainConfig",
        [("objective", cls.Config, field(default_factory=cls.Config))],
        bases=(PretrainConfig,),
    )
    cfg = load_config(schema, path or objective_yaml(name), overrides)
    return PretrainConfig(cfg.objective, cfg.model, cfg.optim, cfg.trainer, cfg.data)


def check(cfg: PretrainConfig) -> None:
    t, o = cfg.trainer, cfg.optim
    if t.steps < 0 or t.epochs <= 0 or t.batch_size < 1 or t.accumulate < 1:
        raise UsageError(
            "trainer: steps >= 0 (0: from epochs), epochs > 0, batch_size and accumulate >= 1 "
            f"(got {t.steps}, {t.epochs}, {t.batch_size}, {t.accumulate})"
        )
    if t.batch_size % t.accumulate:
        raise UsageError(
            f"trainer.batch_size={t.batch_size} is not divisible by trainer.accumulate={t.accumulate}"
        )
    if o.optimizer not in ("adamw", "adam"):
        raise UsageError(f"optim.optimizer={o.optimizer!r}; valid: adamw, adam")
    if t.save_every < 1:
        raise UsageError(f"trainer.save_every={t.save_every}: must be >= 1")
    if cfg.model.preset == NATURE:  # its linear neck has no per-game spatial embedding, which objectives use
        valid = ", ".join(p for p in PRESET_NAMES if p != NATURE)
        raise UsageError(
            f"model.preset={NATURE}: the Nature CNN makes the Far-OOD data (fine-tuning only); valid: {valid}"
        )


def to_yaml(cfg: PretrainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
