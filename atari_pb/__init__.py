"""atari-pb: a pre-training benchmark suite for vision-based reinforcement learning on Atari."""

__version__ = "0.1.0"


def load_encoder(path, device="cpu"):
    """Rebuild an exported encoder (safetensors + JSON), frozen and in eval mode. See atari_pb.models.encoder."""
    from atari_pb.models.encoder import load_encoder as _load

    return _load(path, device)
