"""Offline behaviour cloning on one game (Atari-PB's offline BC protocol), read top to bottom.

The backbone comes from the encoder being evaluated and stays frozen (trained too for the `e2e` baseline);
the neck and a linear action head are re-initialised; AdamW minimises the cross-entropy of the logged
actions over the game's shards (DQN-Replay runs 1-5, checkpoint 50, 10k transitions each: 100 epochs in
the reference). Held-out runs, when configured, give the action accuracy on logged data the agent never
trained on. The trained agent then plays the game (see atari_pb.eval.rollout).

Registered as the `offline_bc` protocol (finetune/offline_bc.yaml); `train_backbone=True` is `e2e`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from atari_pb.augment import BatchRandom, augment
from atari_pb.core.device import pick_device
from atari_pb.core.schedules import epoch_steps, warmup_cosine
from atari_pb.data import SampleSpec, ShardSet, ShardStream, make_loader
from atari_pb.envs.atari import num_actions as game_actions
from atari_pb.errors import DataError, UsageError
from atari_pb.finetune.base import (
    FinetuneResult,
    FinetuneTask,
    FleetFootprint,
    Protocol,
    load_protocol_config,
    register,
)
from atari_pb.finetune.resume import JobCheckpoint
from atari_pb.games import Game
from atari_pb.models.agent import HEAD_INITS, AgentNet, build_agent_net, set_backbone_precision
from atari_pb.models.encoder import Encoder
from atari_pb.models.memory import MAX_ACTIONS

log = logging.getLogger(__name__)


@dataclass
class BCTrainConfig:
    """The `train:` section of finetune/offline_bc.yaml."""

    epochs: float = 100.0  # passes over the game's training transitions (released: 100, ~9,800 steps)
    max_steps: int = 0  # > 0 caps the gradient steps (quick runs, the demo); the schedule spans the cap
    batch_size: int = 512
    lr: float = 1e-3  # the peak of the schedule (released configs/trainer/offline_bc.yaml)
    warmup: float = 0.1  # released: a cosine schedule with 10% linear warm-up ...
    min_lr_scale: float = 0.1  # ... from and back to lr * 0.1 (configs/trainer/base.yaml:38-43)
    grad_clip: float = 0.5  # max gradient norm (released configs/trainer/base.yaml:27); 0: none
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    head_init: str = "normal"  # released: head weights and biases N(0, 1) (mh_linear's embeddings); torch
    augment: bool = True
    holdout_runs: list[int] = field(default_factory=list)  # runs kept out of training, for accuracy
    loader_threads: int = 2
    device: str = "auto"
    bf16: bool = False  # the backbone's pass under bfloat16 autocast (GPU speed; released: fp16 autocast)
    channels_last: bool = False  # the backbone's weights in channels-last order (GPU speed)


@dataclass
class OfflineBCConfig:
    """finetune/offline_bc.yaml, one section per dataclass."""

    train: BCTrainConfig = field(default_factory=BCTrainConfig)


def load_offline_bc_config(overrides: Sequence[str] = (), path: str | Path | None = None) -> OfflineBCConfig:
    """finetune/offline_bc.yaml (or `path`) over the defaults, then `key=value` overrides."""
    return load_protocol_config("offline_bc", overrides, path)


def check(cfg: OfflineBCConfig) -> None:
    t = cfg.train
    if t.batch_size < 1 or t.epochs <= 0:
        raise UsageError(
            f"train.batch_size and train.epochs must be positive (got {t.batch_size}, {t.epochs})"
        )
    if t.head_init not in HEAD_INITS:
        raise UsageError(f"train.head_init={t.head_init!r}; valid: {', '.join(HEAD_INITS)}")


@dataclass
class BCResult:
    agent: AgentNet  # its `act(obs)` gives greedy actions
    steps: int
    train_accuracy: float
    holdout_accuracy: float | None
    seconds: float


def accuracy(agent: AgentNet, shards: ShardSet, samples: int, seed: int, device: torch.device) -> float:
    """Share of logged actions the agent's greedy choice matches, on `samples` random transitions."""
    batch = shards.sample(samples, n_step=0, seed=seed)
    agent.eval()
    with torch.no_grad():
        pred = agent(batch["obs"][:, 0].to(device)).argmax(-1).cpu()
    agent.train()
    return (pred == batch["action"][:, 0]).float().mean().item()


@dataclass
class BCRun:
    """One agent's offline BC set-up: its data, network, optimiser, schedule and length (shared by the
    standalone job below and the fleet, offline_bc_fleet.py)."""

    shards: ShardSet
    held: ShardSet | None
    agent: AgentNet
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    steps: int
    clip: float
    batch_size: int
    seed: int
    device: torch.device

    def inputs(self, batch: dict, step: int, augmented: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """A loader batch as (observations, logged actions) on the device, augmented as a function of
        (seed, step)."""
        obs, action = batch["obs"][:, 0].to(self.device), batch["action"][:, 0].to(self.device)
        if augmented:
            obs = augment(obs, BatchRandom.for_batch(self.seed, step, len(obs), self.device))
        return obs, action

    def learn(self, logits: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """One update from the agent's logits on a batch: cross-entropy, clipping, AdamW, the schedule."""
        loss = F.cross_entropy(logits, action)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
        self.scheduler.step()
        return loss

    def state_dict(self) -> dict:
        """What a checkpoint keeps: the trained weights (a frozen backbone is the encoder's and is not saved),
        AdamW's state and the schedule's."""
        frozen = not self.agent.train_backbone
        weights = {
            k: v for k, v in self.agent.state_dict().items() if not (frozen and k.startswith("backbone."))
        }
        return {
            "agent": weights,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        missing, unexpected = self.agent.load_state_dict(state["agent"], strict=False)
        if unexpected or any(not k.startswith("backbone.") for k in missing):
            raise DataError(
                f"an offline BC checkpoint of another network (missing {missing[:3]}, extra {unexpected[:3]})"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def accuracies(self) -> tuple[float, float | None]:
        """(train, held-out) accuracy of the logged actions, each on 1,024 transitions drawn from the seed."""
        train = accuracy(self.agent, self.shards, 1024, self.seed + 1, self.device)
        held = (
            accuracy(self.agent, self.held, 1024, self.seed + 2, self.device)
            if self.held is not None
            else None
        )
        return train, held

    def stream(self, first: int = 0) -> ShardStream:
        """The run's batches from step `first` on (a function of (seed, step): resumable)."""
        spec = SampleSpec(n_step=0)
        return ShardStream(
            self.shards, self.batch_size, spec, seed=self.seed, start_step=first, num_steps=self.steps - first
        )


def setup_bc_run(
    game: Game,
    encoder: Encoder,
    shards_dir: Path,
    num_actions: int,
    cfg: BCTrainConfig,
    seed: int,
    train_backbone: bool = False,
) -> BCRun:
    """Seed torch's generator with `seed`, then build the agent (its neck and head initialised from it),
    AdamW and the warm-up + cosine schedule over the run's steps."""
    device = pick_device(cfg.device, "train.device")
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

    agent = build_agent_net(encoder, num_actions, train_backbone, head_init=cfg.head_init).to(device)
    set_backbone_precision([agent], cfg.bf16, cfg.channels_last)
    params = [p for p in agent.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay
    )
    spec = SampleSpec(n_step=0)
    steps = epoch_steps(
        cfg.epochs, len(shards.valid_starts(spec.frames, spec.t_step, spec.n_step)), cfg.batch_size
    )
    if cfg.max_steps > 0:
        steps = min(steps, cfg.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(steps, cfg.warmup, cfg.min_lr_scale)
    )
    clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    return BCRun(shards, held, agent, params, optimizer, scheduler, steps, clip, cfg.batch_size, seed, device)


def train_offline_bc(
    game: Game,
    encoder: Encoder,
    shards_dir: Path,
    num_actions: int,
    cfg: BCTrainConfig,
    seed: int,
    train_backbone: bool = False,
    progress: bool = True,
    checkpoint: JobCheckpoint | None = None,
) -> BCResult:
    """Offline BC on `game`'s shards; `checkpoint` saves the run every so many steps and continues a saved
    one exactly (the batches and augmentations are functions of (seed, step))."""
    run = setup_bc_run(game, encoder, shards_dir, num_actions, cfg, seed, train_backbone)
    state = checkpoint.load() if checkpoint is not None else None
    first = 0
    if state is not None:
        run.load_state_dict(state)
        first = int(state["step"])
    bar = tqdm(total=run.steps, initial=first, unit="step", desc=f"offline_bc {game.name}",
               disable=None if progress else True)  # fmt: skip
    start = time.perf_counter()
    for step, batch in enumerate(make_loader(run.stream(first), num_workers=cfg.loader_threads), start=first):
        obs, action = run.inputs(batch, step, cfg.augment)
        loss = run.learn(run.agent(obs), action)
        bar.update()
        if checkpoint is not None and step + 1 < run.steps and checkpoint.due(step + 1):
            checkpoint.save(step + 1, run.state_dict())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    seconds = time.perf_counter() - start
    train_accuracy, holdout_accuracy = run.accuracies()
    result = BCResult(run.agent.eval(), run.steps, train_accuracy, holdout_accuracy, seconds)
    log.info(
        "offline_bc %s seed %d: %d steps, accuracy %.3f (held out: %s)",
        game.name,
        seed,
        run.steps,
        result.train_accuracy,
        result.holdout_accuracy,
    )
    return result


@register
class OfflineBC(Protocol):
    """Behaviour cloning of the game's logged actions (Atari-PB's offline BC protocol)."""

    name = "offline_bc"
    resumable = True
    fleet = True
    Config = OfflineBCConfig
    needs_data = True

    @staticmethod
    def check(cfg: OfflineBCConfig) -> None:
        check(cfg)

    @staticmethod
    def train(cfg: OfflineBCConfig, task: FinetuneTask) -> FinetuneResult:
        r = train_offline_bc(
            task.game,
            task.encoder,
            task.data,
            game_actions(task.game),
            cfg.train,
            task.seed,
            task.train_backbone,
            task.progress,
            task.checkpoint,
        )
        summary = {"train_accuracy": r.train_accuracy, "holdout_accuracy": r.holdout_accuracy}
        return FinetuneResult(
            r.agent, gradient_steps=r.steps, env_steps=0, seconds=r.seconds, summary=summary
        )

    @staticmethod
    def fleet_footprint(cfg: OfflineBCConfig) -> FleetFootprint:
        """No replay on the host (its shards are read in batches); on the device its batch of observations."""
        return FleetFootprint(0, cfg.train.batch_size, MAX_ACTIONS, cfg.train.device)

    @staticmethod
    def train_fleet(
        cfg: OfflineBCConfig,
        tasks: list[FinetuneTask],
        progress: bool = True,
        checkpoint: JobCheckpoint | None = None,
    ) -> list[FinetuneResult]:
        from atari_pb.finetune.offline_bc_fleet import train_offline_bc_fleet

        return train_offline_bc_fleet(cfg.train, tasks, progress, checkpoint)
