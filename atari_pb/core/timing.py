"""Timing of named sections of a training loop, through a hook the loop calls: a benchmark passes a
`Sections` and reads where the time went; a normal run passes nothing and `NO_TIMING` costs a no-op context.

    sections = Sections()
    train_rainbow(game, encoder, cfg, seed, sections=sections)
    sections.calls["env.step"]   # [(start, seconds), ...] of every call, in order
    sections.kept["replay"]      # objects the loop handed over (the Rainbow replay, to reuse its frames)
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any


class Sections:
    def __init__(self) -> None:
        self.calls: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self.kept: dict[str, Any] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.calls[name].append((start, time.perf_counter() - start))

    def keep(self, **objects: Any) -> None:
        self.kept.update(objects)


class _NoTiming(Sections):
    def __call__(self, name: str) -> contextlib.nullcontext:  # type: ignore[override]
        return contextlib.nullcontext()

    def keep(self, **objects: Any) -> None:
        pass


NO_TIMING = _NoTiming()
