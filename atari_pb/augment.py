"""Per-sample randomness for a training step, and the augmentations drawn from it (DrQ's random shift,
SPR's intensity jitter), run on whatever device the batch is on.

`BatchRandom` draws every random number for the *global* batch of a step from a generator seeded with
(seed, step) and hands this rank (and micro-batch) its rows. So a run's randomness depends only on those
numbers: a resumed run draws what the uninterrupted one drew, and W DDP ranks, or A accumulated
micro-batches, draw exactly what one process with the same global batch draws. (Each micro-batch redraws
the global batch's numbers and keeps its rows: a few random numbers per sample, negligible.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class BatchRandom:
    def __init__(
        self,
        seed: int,
        step: int,
        rows: slice = slice(None),
        global_batch: int | None = None,
        device: torch.device | str = "cpu",
    ):
        self.generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        self.rows = rows
        self.global_batch = global_batch
        self.device = torch.device(device)

    def _rows(self, full: torch.Tensor) -> torch.Tensor:
        return full[self.rows].to(self.device, non_blocking=True)

    def uniform(self, *shape: int) -> torch.Tensor:
        """(local batch, *shape) uniform in [0, 1)."""
        return self._rows(torch.rand(self.global_batch, *shape, generator=self.generator))

    def normal(self, *shape: int) -> torch.Tensor:
        return self._rows(torch.randn(self.global_batch, *shape, generator=self.generator))

    def integers(self, high: int, *shape: int) -> torch.Tensor:
        """(local batch, *shape) integers in [0, high)."""
        return self._rows(torch.randint(high, (self.global_batch, *shape), generator=self.generator))

    @classmethod
    def for_batch(
        cls, seed: int, step: int, batch_size: int, device: torch.device | str = "cpu"
    ) -> BatchRandom:
        """Single process: the whole batch is this process's."""
        return cls(seed, step, slice(None), batch_size, device)


def random_shift(x: torch.Tensor, shifts: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """DrQ: replicate-pad by `pad` and crop back at per-sample offsets `shifts` (B, 2) in [0, 2*pad]."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    rows = (shifts[:, 0, None] + torch.arange(h, device=x.device)).view(b, 1, h, 1)
    cols = (shifts[:, 1, None] + torch.arange(w, device=x.device)).view(b, 1, 1, w)
    batch = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    chan = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[batch, chan, rows, cols]


def intensity(x: torch.Tensor, noise: torch.Tensor, scale: float = 0.05) -> torch.Tensor:
    """SPR: scale each sample by 1 + scale * clip(noise, -2, 2), noise (B,) standard normal."""
    return x * (1.0 + scale * noise.clamp(-2.0, 2.0)).view(-1, *([1] * (x.dim() - 1)))


def augment(obs: torch.Tensor, rand: BatchRandom, pad: int = 4, scale: float = 0.05) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float in [0, 1] (about), shifted and intensity-jittered per sample. Every
    channel of a sample (its stacked frames, and any frames stacked along C) moves together."""
    x = obs.float().div_(255.0)
    x = random_shift(x, rand.integers(2 * pad + 1, 2), pad)
    return intensity(x, rand.normal(), scale)
