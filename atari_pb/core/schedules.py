"""Learning-rate schedules, as pure functions of the step.

`warmup_cosine` is the released Atari-PB schedule (src/common/schedulers.py, CosineAnnealingWarmupRestarts
with one cycle, configs/trainer/base.yaml:38-43): the optimiser's first step runs at min_scale x lr, the
rate rises linearly to lr over the first `warmup` share of the steps, then follows a cosine back down to
min_scale x lr at the last step.
"""

from __future__ import annotations

import math
from collections.abc import Callable


def warmup_cosine(steps: int, warmup: float, min_scale: float) -> Callable[[int], float]:
    """The lr multiplier of optimiser step s = 0, 1, ..., steps - 1 (for torch's LambdaLR)."""
    warm = int(warmup * steps)

    def scale(step: int) -> float:
        if step < warm:
            return min_scale + (1.0 - min_scale) * step / warm
        progress = (step - warm) / max(1, steps - warm)
        return min_scale + (1.0 - min_scale) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return scale


def epoch_steps(epochs: float, starts: int, batch_size: int) -> int:
    """Optimiser steps of `epochs` passes over `starts` samples: every pass ends with a partial batch, as a
    DataLoader without drop_last gives (the released trainers' epochs)."""
    return max(1, round(epochs * math.ceil(starts / batch_size)))


def linear(start: float, end: float, progress: float) -> float:
    """start -> end as progress goes 0 -> 1, constant outside."""
    return start + (end - start) * min(max(progress, 0.0), 1.0)
