"""atari-pb: a pre-training benchmark suite for vision-based reinforcement learning on Atari."""

import os

# torch's OpenMP threads spin-wait between parallel regions; next to ALE's emulator threads on a few cores
# the spinning takes the emulator's time (rollouts 3-6x slower, see BENCHMARKS.md). Waiting passively costs
# torch little. It must be set before torch loads OpenMP, hence here; a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"


def load_encoder(path, device="cpu"):
    """Rebuild an exported encoder (safetensors + JSON), frozen and in eval mode. See atari_pb.models.encoder."""
    from atari_pb.models.encoder import load_encoder as _load

    return _load(path, device)
