"""Plain-data snapshots of run state for checkpoints read with `torch.load(weights_only=True)`, which accepts
tensors, containers and Python scalars but no numpy objects: numpy arrays travel as tensors, numpy
generators as their bit generator's state dict (Python ints), ALE emulator states as byte tensors.

    state = {"draws": arrays_state({"u": u, "a": a}), "rng": generator_state(rng)}
    arrays = arrays_from_state(state["draws"]); set_generator_state(rng, state["rng"])
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch


def arrays_state(arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """numpy arrays -> tensors (copies: the snapshot does not change with the live arrays)."""
    return {k: torch.from_numpy(np.array(v, copy=True)) for k, v in arrays.items()}


def arrays_from_state(state: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in state.items()}


def generator_state(rng: np.random.Generator) -> dict:
    return rng.bit_generator.state


def set_generator_state(rng: np.random.Generator, state: dict) -> None:
    rng.bit_generator.state = state


def bytes_state(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def bytes_from_state(state: torch.Tensor) -> bytes:
    return state.numpy().tobytes()
