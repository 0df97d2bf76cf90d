"""The configuration of an exploration run: prend/prend.yaml, one section per dataclass.

intrinsic:    IntrinsicConfig   the RND / PreND reward (atari_pb/prend/intrinsic.py)
ppo:          PPOConfig         the PPO learner and its rollouts (atari_pb/prend/ppo.py)
env:          EnvConfig         the Atari settings (atari_pb/envs/atari.py), RND's exploration ones by default
train:        TrainConfig       budget, seed, checkpoints (atari_pb/prend/runner.py)
diagnostics:  DiagnosticsConfig the probe set and the novelty it is compared with (atari_pb/prend/diagnostics.py)

Which intrinsic reward runs is not a key: it is the run's `--encoder` (a file: PreND; `random`: RND;
`none`: PPO on the game's reward alone), stored with the checkpoint like pre-training's objective name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from atari_pb.config import config_file, load_config
from atari_pb.envs.atari import ALE_VECTOR_SETTINGS, EnvConfig
from atari_pb.errors import UsageError


@dataclass
class IntrinsicConfig:
    """The `intrinsic:` section: how the intrinsic reward is made and how its predictor learns."""

    # predictor lr = ppo.lr * this; null: 0.01 for PreND (the paper's, to slow the reward's collapse)
    # and 1 for RND (RND trains its predictor at the PPO learning rate); a run's config.yaml records the
    # value it ran at
    predictor_lr_scale: float | None = None
    update_proportion: float = 0.25  # share of each minibatch the predictor trains on (RND)
    obs_clip: float = 5.0  # RND's normalised frame is clipped to [-clip, clip]
    obs_norm_init_steps: int = 128  # random-agent steps per env that initialise RND's frame statistics
    rnd_embed_dim: int = 512  # RND's target / predictor output size
    reward_chunk: int = 512  # frames per forward pass when the rollout's rewards are computed


@dataclass
class PPOConfig:
    """The `ppo:` section: RND's PPO (Burda et al. 2018) with its defaults, on fewer envs for a CPU."""

    num_envs: int = 8  # RND: 128
    num_steps: int = 128  # rollout length per env
    lr: float = 1e-4  # Adam, for the policy; the predictor's is lr * intrinsic.predictor_lr_scale
    adam_eps: float = 1e-5
    gamma_ext: float = 0.999
    gamma_int: float = 0.99
    gae_lambda: float = 0.95
    ext_coef: float = 2.0  # advantage = ext_coef * A_ext + int_coef * A_int
    int_coef: float = 1.0
    clip: float = 0.1  # the ratio's clip range
    ent_coef: float = 0.001
    vf_coef: float = 1.0  # times 0.5 * (MSE_ext + MSE_int)
    epochs: int = 4
    minibatches: int = 4
    max_grad_norm: float = 0.5  # the policy's gradient; 0 = no clipping (the predictor is never clipped)
    clip_ext_reward: bool = True  # sign-clip the game's reward for learning (scores stay raw)
    norm_adv: bool = True  # normalise the combined advantage per minibatch


def _exploration_env() -> EnvConfig:
    # RND's settings: sticky actions (p = 0.25) make the emulator stochastic, and an episode ends at game
    # over (a lost life is no reason to stop exploring)
    # RND's exploration env is not Atari-PB's: ale-py's own vector env (ALE_VECTOR_SETTINGS: its no-ops, FIRE
    # at reset, area resizing, no life-loss handling, the minimal action set), on its fast C++ engine
    return EnvConfig(**{**ALE_VECTOR_SETTINGS, "sticky_action_prob": 0.25, "episodic_life": False})


@dataclass
class TrainConfig:
    """The `train:` section: budget and bookkeeping. Intervals count PPO updates."""

    env_steps: int = 100_000  # agent steps summed over envs (4 frames each); rounded up to whole updates
    seed: int = 0
    save_every: int = 25  # updates between checkpoints (and at the end)
    log_every: int = 1  # updates between metrics lines
    device: str = "auto"  # auto | cpu | cuda | cuda:N


@dataclass
class DiagnosticsConfig:
    """The `diagnostics:` section: intrinsic reward vs novelty in the target's embedding space."""

    every: int = 10  # updates between probe evaluations (and the first and last update)
    probe_size: int = 256  # frames in the fixed probe set
    probe_seed: int = 12345  # the probe set's own environments and random actions
    probe_stride: int = 8  # random-agent steps between two probe frames of one env
    reservoir: int = 4096  # target embeddings of visited observations kept (reservoir sampling)
    knn: int = 10  # neighbours whose mean distance is a probe frame's novelty


@dataclass
class PrendConfig:
    """prend/prend.yaml: one section per dataclass."""

    intrinsic: IntrinsicConfig = field(default_factory=IntrinsicConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    env: EnvConfig = field(default_factory=_exploration_env)
    train: TrainConfig = field(default_factory=TrainConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)


def load_prend_config(overrides: Sequence[str] = (), path: str | Path | None = None) -> PrendConfig:
    """prend/prend.yaml (or `path`) over the defaults, then `key=value` overrides. A missing prend.yaml is
    an error: the run's settings are the file's, never the dataclasses' alone."""
    cfg = load_config(PrendConfig, config_file("prend", "prend") if path is None else path, overrides)
    check(cfg)
    return cfg


def check(cfg: PrendConfig) -> None:
    i, p, t, d = cfg.intrinsic, cfg.ppo, cfg.train, cfg.diagnostics
    if min(p.num_envs, p.num_steps, p.epochs, p.minibatches) < 1:
        raise UsageError("ppo: num_envs, num_steps, epochs and minibatches must be >= 1")
    if (p.num_envs * p.num_steps) % p.minibatches:
        raise UsageError(
            f"ppo: num_envs * num_steps = {p.num_envs * p.num_steps} does not split into {p.minibatches} minibatches"
        )
    for name in ("gamma_ext", "gamma_int", "gae_lambda"):
        if not 0.0 <= getattr(p, name) <= 1.0:
            raise UsageError(f"ppo.{name}={getattr(p, name)}: must be in [0, 1]")
    if p.lr <= 0 or p.clip <= 0:
        raise UsageError(f"ppo: lr and clip must be > 0 (got {p.lr}, {p.clip})")
    if i.predictor_lr_scale is not None and i.predictor_lr_scale < 0:
        raise UsageError(f"intrinsic.predictor_lr_scale={i.predictor_lr_scale}: must be >= 0")
    if not 0.0 < i.update_proportion <= 1.0:
        raise UsageError(f"intrinsic.update_proportion={i.update_proportion}: must be in (0, 1]")
    if i.obs_norm_init_steps < 1 or i.rnd_embed_dim < 1 or i.reward_chunk < 1 or i.obs_clip <= 0:
        raise UsageError(
            "intrinsic: obs_norm_init_steps, rnd_embed_dim, reward_chunk and obs_clip must be > 0"
        )
    if min(t.env_steps, t.save_every, t.log_every) < 1:
        raise UsageError("train: env_steps, save_every and log_every must be >= 1")
    if min(d.every, d.probe_size, d.probe_stride, d.reservoir, d.knn) < 1:
        raise UsageError("diagnostics: every, probe_size, probe_stride, reservoir and knn must be >= 1")
    if d.probe_size < 3:
        raise UsageError(f"diagnostics.probe_size={d.probe_size}: a correlation needs at least 3 frames")
