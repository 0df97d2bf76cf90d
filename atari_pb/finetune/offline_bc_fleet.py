"""Offline BC for a fleet: every (game, seed) agent of one encoder trained in lockstep through one shared
frozen backbone (`finetune --fleet`).

Each step draws every agent's own batch (its game's shards, its seed: the batches and augmentations of its
standalone run), runs the frozen backbone once over all of them, and then updates each agent's neck and head
with its own loss, gradient clipping, AdamW and learning-rate schedule, as the standalone job does
(`offline_bc.train_offline_bc`). Agents whose games have fewer steps stop early; the others go on.

A fleet of one computes exactly what the standalone job computes. In a larger fleet the only difference is
the backbone's batch: where a convolution's summation order depends on the batch size (cuDNN's and
oneDNN's algorithm choice), an agent's features, and from them its updates, match its standalone run to
floating-point tolerance rather than bit for bit (tests/test_fleet.py: 1e-3 on the weights after 200
updates; measured on a 2-core CPU with the tiny preset: equal, difference 0.0).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from atari_pb.data import make_loader
from atari_pb.finetune.base import FinetuneResult, FinetuneTask
from atari_pb.finetune.offline_bc import BCRun, BCTrainConfig, game_actions, setup_bc_run
from atari_pb.finetune.resume import JobCheckpoint
from atari_pb.models.agent import set_backbone_precision

log = logging.getLogger(__name__)


@dataclass
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
    for step in range(first, total):
        active = [m for m in members if step < m.run.steps]
        inputs = [m.run.inputs(next(m.batches), step, cfg.augment) for m in active]  # its standalone batches
        with torch.no_grad():  # the backbone is frozen: one pass over every agent's batch
            features = members[0].run.agent.features(torch.cat([x for x, _ in inputs]))
        features = features.split([len(x) for x, _ in inputs])
        for m, f, (_, action) in zip(active, features, inputs, strict=True):
            m.run.learn(m.run.agent.from_features(f), action)
        bar.update()
        if checkpoint is not None and step + 1 < total and checkpoint.due(step + 1):
            checkpoint.save(step + 1, {"members": [m.run.state_dict() for m in members]})
    bar.close()
    seconds = time.perf_counter() - start
    results = []
    for m in members:
        train_accuracy, holdout_accuracy = m.run.accuracies()
        summary = {"train_accuracy": train_accuracy, "holdout_accuracy": holdout_accuracy}
        results.append(FinetuneResult(m.run.agent.eval(), m.run.steps, 0, seconds, summary))
    return results


def _restore(checkpoint: JobCheckpoint | None, members: list[_Member]) -> int:
    state = checkpoint.load() if checkpoint is not None else None
    if state is None:
        return 0
    for m, saved in zip(members, state["members"], strict=True):
        m.run.load_state_dict(saved)
    return int(state["step"])
