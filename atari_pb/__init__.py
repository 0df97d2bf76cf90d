"""atari-pb: a pre-training benchmark suite for vision-based reinforcement learning on Atari."""

__version__ = "0.1.0"
