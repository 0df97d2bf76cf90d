"""The one device rule of every run: `auto` takes a CUDA device when there is one, else the CPU."""

from __future__ import annotations

import torch

from atari_pb.errors import UsageError


def pick_device(name: str, key: str = "device") -> torch.device:
    """`auto` | cpu | cuda | cuda:N -> a torch device; `key` names the setting in the error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"{key}={name!r}: not a device; valid: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"{key}={name}: no CUDA device here; valid: auto, cpu")
    return device


def available_memory() -> int | None:
    """Bytes of host memory available to new work (Linux's MemAvailable); None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
