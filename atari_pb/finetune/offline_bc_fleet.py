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
import torch.nn.functional as F
from tqdm import tqdm

from atari_pb.augment import BatchRandom, augment
from atari_pb.data import make_loader
from atari_pb.finetune.base import FinetuneResult, FinetuneTask
from atari_pb.finetune.offline_bc import BCRun, BCTrainConfig, accuracy, game_actions, setup_bc_run
from atari_pb.finetune.resume import JobCheckpoint

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
        members.append(_Member(task, run, None))
    device = members[0].run.device
    first = _restore(checkpoint, members)
    for m in members:
        m.batches = iter(make_loader(m.run.stream(first), num_workers=cfg.loader_threads))
    total = max(m.run.steps for m in members)
    bar = tqdm(total=total, initial=first, unit="step", desc=f"offline_bc fleet of {len(members)}",
               disable=None if progress else True)  # fmt: skip
    start = time.perf_counter()
    for step in range(first, total):
        active = [m for m in members if step < m.run.steps]
        inputs = [_inputs(m, step, cfg, device) for m in active]
        with torch.no_grad():  # the backbone is frozen: one pass over every agent's batch
            features = shared(torch.cat([x for x, _ in inputs])).split([len(x) for x, _ in inputs])
        for m, f, (_, action) in zip(active, features, inputs, strict=True):
            r = m.run
            loss = F.cross_entropy(r.agent.from_features(f), action)
            r.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(r.params, r.clip)
            r.optimizer.step()
            r.scheduler.step()
        bar.update()
        if checkpoint is not None and step + 1 < total and checkpoint.due(step + 1):
            checkpoint.save(step + 1, {"members": [_member_state(m) for m in members]})
    bar.close()
    seconds = time.perf_counter() - start
    results = []
    for m in members:
        r = m.run
        train_acc = accuracy(r.agent, r.shards, 1024, m.task.seed + 1, device)
        held = accuracy(r.agent, r.held, 1024, m.task.seed + 2, device) if r.held is not None else None
        summary = {"train_accuracy": train_acc, "holdout_accuracy": held}
        results.append(FinetuneResult(r.agent.eval(), r.steps, 0, seconds, summary))
    return results


def _inputs(m: _Member, step: int, cfg: BCTrainConfig, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The agent's batch of this step, augmented as its standalone run augments it."""
    batch = next(m.batches)
    obs, action = batch["obs"][:, 0].to(device), batch["action"][:, 0].to(device)
    x = augment(obs, BatchRandom.for_batch(m.task.seed, step, len(obs), device)) if cfg.augment else obs
    return x, action


def _member_state(m: _Member) -> dict:
    r = m.run
    trained = {k: v for k, v in r.agent.state_dict().items() if not k.startswith("backbone.")}
    return {"agent": trained, "optimizer": r.optimizer.state_dict(), "scheduler": r.scheduler.state_dict()}


def _restore(checkpoint: JobCheckpoint | None, members: list[_Member]) -> int:
    state = checkpoint.load() if checkpoint is not None else None
    if state is None:
        return 0
    for m, saved in zip(members, state["members"], strict=True):
        m.run.agent.load_state_dict(saved["agent"], strict=False)  # the shared backbone is the encoder's
        m.run.optimizer.load_state_dict(saved["optimizer"])
        m.run.scheduler.load_state_dict(saved["scheduler"])
    return int(state["step"])
