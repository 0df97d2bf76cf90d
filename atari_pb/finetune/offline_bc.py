"""Offline behaviour cloning on one game (Atari-PB's offline BC protocol), read top to bottom.

The backbone comes from the encoder being evaluated and stays frozen (trained too for the `e2e` baseline);
the neck and a linear action head are re-initialised; AdamW minimises the cross-entropy of the logged
actions over the game's shards (DQN-Replay runs 1-5, checkpoint 50, 10k transitions each: 100 epochs in
the reference). Held-out runs, when configured, give the action accuracy on logged data the agent never
trained on. The trained agent then plays the game (see atari_pb.eval.rollout).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from atari_pb.augment import BatchRandom, augment
from atari_pb.config import load_config
from atari_pb.data import SampleSpec, ShardSet, ShardStream, make_loader
from atari_pb.errors import UsageError
from atari_pb.games import Game
from atari_pb.models.encoder import Encoder
from atari_pb.models.layers import SpatialMLPNeck

log = logging.getLogger(__name__)


@dataclass
class BCTrainConfig:
    """The `train:` section of finetune/offline_bc.yaml."""

    epochs: float = 100.0  # passes over the game's training transitions
    max_steps: int = 0  # > 0 caps the gradient steps (quick runs, the demo)
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    augment: bool = True
    holdout_runs: list[int] = field(default_factory=list)  # runs kept out of training, for accuracy
    loader_threads: int = 2
    device: str = "auto"


@dataclass
class OfflineBCConfig:
    """finetune/offline_bc.yaml, one section per dataclass."""

    train: BCTrainConfig = field(default_factory=BCTrainConfig)


FINETUNE_DIR = Path(__file__).resolve().parents[2] / "finetune"


def load_offline_bc_config(overrides: Sequence[str] = (), path: str | Path | None = None) -> OfflineBCConfig:
    """finetune/offline_bc.yaml (or `path`) over the defaults, then `key=value` overrides."""
    if path is None and (FINETUNE_DIR / "offline_bc.yaml").is_file():
        path = FINETUNE_DIR / "offline_bc.yaml"
    cfg = load_config(OfflineBCConfig, path, overrides)
    if cfg.train.batch_size < 1 or cfg.train.epochs <= 0:
        raise UsageError(
            f"train.batch_size and train.epochs must be positive (got {cfg.train.batch_size}, {cfg.train.epochs})"
        )
    return cfg


class BCAgent(nn.Module):
    """Encoder (frozen backbone, fresh neck) + linear head over the game's minimal action set."""

    def __init__(self, encoder: Encoder, num_actions: int, game_id: int, train_backbone: bool = False):
        super().__init__()
        self.backbone = copy.deepcopy(encoder.backbone).requires_grad_(train_backbone)
        self.train_backbone = train_backbone
        self.neck = SpatialMLPNeck(encoder.neck.in_shape, encoder.cfg.neck_dims())  # re-initialised
        self.head = nn.Linear(self.neck.out_dim, num_actions)
        self.register_buffer("game_id", torch.tensor(game_id), persistent=False)

    def logits(self, obs: torch.Tensor) -> torch.Tensor:
        """uint8 (B, F, 84, 84), or float in [0, 1] -> (B, actions)."""
        with torch.set_grad_enabled(self.train_backbone and torch.is_grad_enabled()):
            features = self.backbone(obs)
        return self.head(self.neck(features, self.game_id.expand(len(obs))))

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """Greedy actions (B,) for evaluation rollouts."""
        return self.logits(obs).argmax(-1)


@dataclass
class BCResult:
    agent: BCAgent
    steps: int
    train_accuracy: float
    holdout_accuracy: float | None
    seconds: float


def accuracy(agent: BCAgent, shards: ShardSet, samples: int, seed: int, device: torch.device) -> float:
    """Share of logged actions the agent's greedy choice matches, on `samples` random transitions."""
    batch = shards.sample(samples, n_step=0, seed=seed)
    agent.eval()
    with torch.no_grad():
        pred = agent.logits(batch["obs"][:, 0].to(device)).argmax(-1).cpu()
    agent.train()
    return (pred == batch["action"][:, 0]).float().mean().item()


def train_offline_bc(
    game: Game,
    encoder: Encoder,
    shards_dir: Path,
    num_actions: int,
    cfg: BCTrainConfig,
    seed: int,
    train_backbone: bool = False,
    progress: bool = True,
) -> BCResult:
    from atari_pb.pretrain.runner import pick_device  # the same device rule as pre-training

    device = pick_device(cfg.device)
    torch.manual_seed(seed)
    all_runs = ShardSet(shards_dir, games=[game.name])
    runs = sorted({s.run for s in all_runs.shards})
    train_runs = [r for r in runs if r not in cfg.holdout_runs]
    if not train_runs:
        raise UsageError(
            f"train.holdout_runs={cfg.holdout_runs} leaves no run of {game.name} to train on (runs: {runs})"
        )
    shards = ShardSet(shards_dir, games=[game.name], runs=train_runs)
    held = ShardSet(shards_dir, games=[game.name], runs=cfg.holdout_runs) if cfg.holdout_runs else None

    agent = BCAgent(encoder, num_actions, game.game_id, train_backbone).to(device)
    params = [p for p in agent.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay
    )
    steps = max(1, int(cfg.epochs * len(shards) / cfg.batch_size))
    if cfg.max_steps > 0:
        steps = min(steps, cfg.max_steps)
    stream = ShardStream(shards, cfg.batch_size, SampleSpec(n_step=0), seed=seed, num_steps=steps)
    bar = tqdm(total=steps, unit="step", desc=f"offline_bc {game.name}", disable=None if progress else True)
    start = time.perf_counter()
    for step, batch in enumerate(make_loader(stream, num_workers=cfg.loader_threads)):
        obs, action = batch["obs"][:, 0].to(device), batch["action"][:, 0].to(device)
        x = augment(obs, BatchRandom.for_batch(seed, step, len(obs), device)) if cfg.augment else obs
        loss = F.cross_entropy(agent.logits(x), action)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bar.update()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    result = BCResult(
        agent=agent.eval(),
        steps=steps,
        train_accuracy=accuracy(agent, shards, 1024, seed + 1, device),
        holdout_accuracy=accuracy(agent, held, 1024, seed + 2, device) if held is not None else None,
        seconds=time.perf_counter() - start,
    )
    log.info(
        "offline_bc %s seed %d: %d steps, accuracy %.3f (held out: %s)",
        game.name,
        seed,
        steps,
        result.train_accuracy,
        result.holdout_accuracy,
    )
    return result
