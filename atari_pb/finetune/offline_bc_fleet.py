"""Offline BC for a fleet: every (game, seed) agent of one encoder trained in lockstep through one shared
frozen backbone (`finetune --fleet`).

Each step draws every agent's own batch (its game's shards, its seed: the batches and augmentations of its
standalone run), runs the frozen backbone once over all of them, and then updates every agent's neck and head
with its own loss, gradient clipping, AdamW and learning-rate schedule, as the standalone job does
(`offline_bc.train_offline_bc`). In a fleet of several the necks and heads are stacked, one stack per head
shape (number of actions), and updated in one vmapped call with a hand-written AdamW step that takes each
agent's own learning rate (finetune/stacking.py): the agents' schedules differ when their games' data sizes
do. Agents whose games have fewer steps stop early (their stacks are rebuilt without them); the others go on.

A fleet of one runs its agent's own modules and computes exactly what the standalone job computes. In a
larger fleet a bigger backbone batch and the stacked heads' batched matmuls may sum in another order (cuDNN's,
oneDNN's and BLAS's choices depend on the shapes), and the AdamW step rounds its per-agent factors from
float64 as torch rounds its Python floats, so an agent's updates match its standalone run to floating-point
tolerance rather than bit for bit (tests/test_fleet.py: 1e-3 on the weights; measured on a 2-core CPU with
the tiny preset, three agents of 199, 100 and 199 steps: at most 3e-7).
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from atari_pb.data import make_loader
from atari_pb.finetune.base import FinetuneResult, FinetuneTask
from atari_pb.finetune.offline_bc import BCRun, BCTrainConfig, game_actions, setup_bc_run
from atari_pb.finetune.resume import JobCheckpoint
from atari_pb.finetune.stacking import (
    adamw_step_,
    clip_per_agent_,
    gather_adam_states,
    meta_copy,
    run_stacked,
    scatter_,
    stack_parts,
)
from atari_pb.models.agent import NeckHead, set_backbone_precision

log = logging.getLogger(__name__)


@dataclass(eq=False)  # a member is itself: compared by identity
class _Member:
    task: FinetuneTask
    run: BCRun
    batches: object  # the iterator over its stream


def train_offline_bc_fleet(
    cfg: BCTrainConfig,
    tasks: list[FinetuneTask],
    progress: bool = True,
    checkpoint: JobCheckpoint | None = None,
) -> list[FinetuneResult]:
    """Train every task's agent in lockstep; one FinetuneResult per task, in order. The tasks share one
    encoder (its backbone frozen): their agents use one copy of it."""
    shared = tasks[0].encoder.backbone
    members = []
    for task in tasks:
        run = setup_bc_run(task.game, task.encoder, task.data, game_actions(task.game), cfg, task.seed, False)
        run.agent.backbone = shared.to(run.device)  # the copy build_agent_net made is dropped: one backbone
        set_backbone_precision([run.agent], cfg.bf16, cfg.channels_last)
        members.append(_Member(task, run, None))
    first = _restore(checkpoint, members)
    for m in members:
        m.batches = iter(make_loader(m.run.stream(first), num_workers=cfg.loader_threads))
    total = max(m.run.steps for m in members)
    bar = tqdm(total=total, initial=first, unit="step", desc=f"offline_bc fleet of {len(members)}",
               disable=None if progress else True)  # fmt: skip
    start = time.perf_counter()
    heads = StackedBCHeads.none()
    for step in range(first, total):
        active = [m for m in members if step < m.run.steps]
        if len(members) > 1 and heads.members != active:  # at the start and when a member's data runs out
            heads.unstack()
            heads = StackedBCHeads.of(active, cfg)
        inputs = [m.run.inputs(next(m.batches), step, cfg.augment) for m in active]  # its standalone batches
        with torch.no_grad():  # the backbone is frozen: one pass over every agent's batch
            features = members[0].run.agent.features(torch.cat([x for x, _ in inputs]))
        if heads.groups:
            heads.learn(features.view(len(active), -1, *features.shape[1:]), [a for _, a in inputs])
        else:  # a fleet of one: its agent's own modules, exactly the standalone job
            m, (_, action) = active[0], inputs[0]
            m.run.learn(m.run.agent.from_features(features), action)
        bar.update()
        if checkpoint is not None and step + 1 < total and checkpoint.due(step + 1):
            heads.unstack()  # the agents' own modules and AdamW states, up to date
            checkpoint.save(step + 1, {"members": [m.run.state_dict() for m in members]})
    heads.unstack()
    bar.close()
    seconds = time.perf_counter() - start
    results = []
    for m in members:
        train_accuracy, holdout_accuracy = m.run.accuracies()
        summary = {"train_accuracy": train_accuracy, "holdout_accuracy": holdout_accuracy}
        results.append(FinetuneResult(m.run.agent.eval(), m.run.steps, 0, seconds, summary))
    return results


class _Group:
    """The stacked necks and heads of the active members whose heads have one shape (number of actions)."""

    def __init__(self, members: list[_Member], at: list[int]):
        self.members, self.at = members, at  # `at`: their rows among the active members' batches
        self.parts = [NeckHead(m.run.agent.neck, m.run.agent.head) for m in members]
        self.optimizers = [m.run.optimizer for m in members]
        self.base = meta_copy(self.parts[0])
        self.params, self.buffers = stack_parts(self.parts)
        self.states = gather_adam_states(self.params, self.parts, self.optimizers)


class StackedBCHeads:
    """The active members' necks and heads, stacked per head shape (finetune/stacking.py), and each step's
    update of them all: every agent's own cross-entropy, gradient clipping, AdamW step at its own learning
    rate (its schedule, which follows its game's data size) and schedule step. The agents' own modules and
    optimisers are stale while stacked; `unstack` writes the stacks back (before a checkpoint, when the
    active members change, at the end)."""

    def __init__(self, members: list[_Member], groups: list[_Group], cfg: BCTrainConfig | None):
        self.members, self.groups, self.cfg = members, groups, cfg

    @classmethod
    def none(cls) -> StackedBCHeads:
        return cls([], [], None)

    @classmethod
    def of(cls, members: list[_Member], cfg: BCTrainConfig) -> StackedBCHeads:
        shapes: dict[int, list[int]] = {}
        for i, m in enumerate(members):
            shapes.setdefault(m.run.agent.head[-1].out_features, []).append(i)
        return cls(members, [_Group([members[i] for i in at], at) for at in shapes.values()], cfg)

    def learn(self, features: torch.Tensor, actions: list[torch.Tensor]) -> None:
        """One update of every active member from its (B, ...) features and logged actions."""
        for g in self.groups:
            logits = run_stacked(g.base, g.params, g.buffers, features[g.at])  # (K, B, actions)
            taken = torch.stack([actions[i] for i in g.at])
            per_sample = F.cross_entropy(logits.flatten(0, 1), taken.flatten(), reduction="none")
            loss = per_sample.view(taken.shape).mean(1)  # each agent's own mean
            for p in g.params.values():
                p.grad = None
            loss.sum().backward()  # agent k's slice gets exactly agent k's gradient
            params = list(g.params.values())
            clip_per_agent_([p.grad for p in params], g.members[0].run.clip)
            lrs = [opt.param_groups[0]["lr"] for opt in g.optimizers]  # each agent's scheduled rate
            t = self.cfg
            adamw_step_(params, g.states, lrs, tuple(t.betas), t.eps, t.weight_decay)
            _schedule_steps([m.run.scheduler for m in g.members])

    def unstack(self) -> None:
        for g in self.groups:
            scatter_(g.params, g.parts, g.states, g.optimizers)


def _schedule_steps(schedulers: list[torch.optim.lr_scheduler.LRScheduler]) -> None:
    """Each agent's schedule advances as its standalone run's does; its own optimiser did not step (the stack
    did), which torch would warn about."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
        for scheduler in schedulers:
            scheduler.step()


def _restore(checkpoint: JobCheckpoint | None, members: list[_Member]) -> int:
    state = checkpoint.load() if checkpoint is not None else None
    if state is None:
        return 0
    for m, saved in zip(members, state["members"], strict=True):
        m.run.load_state_dict(saved)
    return int(state["step"])
