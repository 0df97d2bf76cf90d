"""What every pre-training objective is: one class, one config dataclass, one YAML, one registry entry.

An objective owns the shared `Encoder` plus whatever heads and EMA targets it needs, and tells the runner
three things:
  - `sample_spec()`: what the sampler must deliver (frames, t_step, n_step, random future, extra futures);
  - `forward(batch, rand) -> (loss, metrics)`: the loss of one (micro-)batch, with `rand` for any
    randomness (augmentation, masks) so that resumed and distributed runs draw the same numbers;
  - `ema_pairs()`: (online, target) modules the runner moves toward each other after every optimiser step
    with the objective's tau schedule (`ema_tau(progress)`), through atari_pb.models.ema (as Rainbow does).
The runner knows no objective by name: adding one is a module here and a YAML in objectives/.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from atari_pb.augment import BatchRandom, augment
from atari_pb.data.stream import SampleSpec
from atari_pb.errors import UsageError
from atari_pb.models.encoder import Encoder

OBJECTIVES: dict[str, type[Objective]] = {}

Batch = dict[str, torch.Tensor]
Metrics = dict[str, torch.Tensor]


def register(cls: type[Objective]) -> type[Objective]:
    OBJECTIVES[cls.name] = cls
    return cls


def objective_class(name: str) -> type[Objective]:
    from atari_pb import objectives  # noqa: F401  (imports every objective module, filling the registry)

    if name not in OBJECTIVES:
        raise UsageError(f"unknown objective {name!r}; valid objectives: {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name]


class Objective(nn.Module):
    name: ClassVar[str]
    Config: ClassVar[type]

    def __init__(self, cfg: Any, encoder: Encoder, num_actions: int):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.num_actions = num_actions

    def sample_spec(self) -> SampleSpec:
        return SampleSpec(frames=self.encoder.cfg.frames)

    def forward(self, batch: Batch, rand: BatchRandom) -> tuple[torch.Tensor, Metrics]:
        raise NotImplementedError

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return []

    def ema_tau(self, progress: float) -> float:
        """tau at `progress` in [0, 1] of training (objectives with targets have ema_start / ema_end)."""
        start, end = getattr(self.cfg, "ema_start", 0.99), getattr(self.cfg, "ema_end", 0.99)
        return start + (end - start) * min(max(progress, 0.0), 1.0)

    # ------------------------------------------------------------------ helpers the objectives share
    @staticmethod
    def stack(obs: torch.Tensor) -> torch.Tensor:
        """(B, T, F, H, W) -> (B*T, F, H, W): every step's frame stack as one image of F channels."""
        return obs.flatten(0, 1)

    def view(self, obs: torch.Tensor, rand: BatchRandom, aug: bool = True) -> torch.Tensor:
        """One augmented view of uint8 (B, T, F, H, W) stacks as float (B*T, F, H, W); the T steps of a
        sample share its shift and jitter (they are one clip)."""
        b, t, f, h, w = obs.shape
        x = obs.reshape(b, t * f, h, w)
        x = augment(x, rand) if aug else x.float().div_(255.0)
        return x.view(b * t, f, h, w)

    @staticmethod
    def game_ids(batch: Batch) -> torch.Tensor:
        """(B*T,) game ids, matching `stack`."""
        return batch["game_id"].flatten()
