"""RND and PreND intrinsic rewards over frozen Atari-PB encoders, a PPO explorer that uses them, and the
PreND paper's diagnostics (arXiv 2410.01745).

    from atari_pb.games import get_game
    from atari_pb.prend import load_prend_config, train_prend

    cfg = load_prend_config(["train.env_steps=20000"])
    train_prend(get_game("boxing"), "runs/demo/curl/encoder.safetensors", "runs/prend/boxing-prend", cfg)

Modules: config (PrendConfig, prend/prend.yaml), intrinsic (RND, PreND, running statistics), ppo (policy,
GAE, update), diagnostics (probe set, k-NN novelty, correlations, plots), runner (the training loop).
"""

from atari_pb.prend.config import PrendConfig, load_prend_config
from atari_pb.prend.runner import train_prend

__all__ = ["PrendConfig", "load_prend_config", "train_prend"]
