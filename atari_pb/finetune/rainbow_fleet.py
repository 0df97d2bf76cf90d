"""Online Rainbow for a fleet: every (game, seed) agent of one encoder trained in lockstep through one shared
frozen backbone (`finetune --protocol rainbow --fleet`).

Each member is a whole standalone run (rainbow.RainbowRun): its own env, replay, exploration generators,
epsilon schedule, neck, head, target, Adam, augmentation draws and episode bookkeeping, built and seeded as
`train_rainbow` builds them. What the fleet shares is the backbone's work:
  - acting: each member's own epsilon draws pick its envs that act greedily (EpsilonGreedy.explore), one
    backbone pass runs over all those observations, and each member's acting network turns its rows into
    actions;
  - learning: each update round every learning member samples its own batch and augments it with its own
    draws, one backbone pass runs over all the (observation, successor) pairs, and each member takes its
    gradient step (its loss, clipping, Adam, EMA target) on its share of the features.
The members' envs step in parallel in `train.fleet_env_workers` processes (atari_pb.envs.pool): ALE's step
holds the GIL, so threads would not overlap them (measured on 2 cores: 4 games stepped in 2 threads took
1.19x the sequential time).

A fleet of one computes exactly what the standalone job computes. In a larger fleet an agent's features come
from a bigger backbone batch; where a convolution's summation order depends on the batch size (cuDNN's and
oneDNN's algorithm choice) they differ in the last bits, and a greedy action or a C51 target can then differ
too. tests/test_fleet.py states the tolerance and why.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import torch
from tqdm import tqdm

from atari_pb.core.device import pick_device
from atari_pb.envs.pool import EnvPool, can_spawn
from atari_pb.finetune.base import FinetuneTask
from atari_pb.finetune.rainbow import RainbowConfig, RainbowRun, TrainResult, check
from atari_pb.finetune.resume import JobCheckpoint

log = logging.getLogger(__name__)
METRICS = ("loss", "q", "grad_norm")  # RainbowAgent.learn's, in order


def train_rainbow_fleet(
    cfg: RainbowConfig,
    tasks: list[FinetuneTask],
    progress: bool = True,
    checkpoint: JobCheckpoint | None = None,
) -> list[TrainResult]:
    """Train every task's agent in lockstep; one TrainResult per task, in order. The tasks share one encoder
    (its backbone frozen): their agents use one copy of it."""
    check(cfg)
    t = cfg.train
    device = pick_device(t.device, "train.device")
    shared = tasks[0].encoder.backbone.to(device)
    pool = env_pool(cfg, tasks)
    runs = []
    for i, task in enumerate(tasks):
        env = (pool.member(i), pool.first_obs[i]) if pool is not None else None
        run = RainbowRun(task.game, task.encoder, cfg, task.seed, device, prefix=f"member{i}_", env=env)
        run.agent.online.backbone = run.agent.target.backbone = shared  # its own copy is dropped
        run.set_precision()
        runs.append(run)
    checkpoint = runs[0].usable(checkpoint)
    state = checkpoint.load() if checkpoint is not None else None
    saved = state["members"] if state is not None else [None] * len(runs)
    for run, member_state in zip(runs, saved, strict=True):
        run.restore(member_state, checkpoint.dir if checkpoint is not None else None)

    lead = runs[0]  # lockstep: every member is at the same step and update count
    bar = tqdm(total=t.env_steps, initial=lead.steps, unit="step", desc=f"rainbow fleet of {len(runs)}",
               disable=None if progress else True)  # fmt: skip
    start = time.perf_counter()
    try:
        while lead.steps < t.env_steps:
            chosen = [run.choose(a) for run, a in zip(runs, choose_actions(runs), strict=True)]
            if pool is not None:
                outcomes = pool.step(chosen)  # every agent's envs at once, in the pool's processes
            else:
                outcomes = [run.env.step(a) for run, a in zip(runs, chosen, strict=True)]
            for run, actions, outcome in zip(runs, chosen, outcomes, strict=True):
                run.store(actions, outcome)
            learning = [run for run in runs if run.learning]
            for _ in range(lead.updates_due if learning else 0):
                learn_round(learning)
            bar.update(t.num_envs)
            if checkpoint is not None and checkpoint.due(lead.learner.updates):
                checkpoint.save(lead.learner.updates, {"members": [run.state() for run in runs]})
                for run in runs:
                    run.saved()
            if lead.steps % t.log_every < t.num_envs:
                bar.set_postfix(lead.postfix())
    finally:
        bar.close()
        for run in runs:
            run.env.close()
        if pool is not None:
            pool.close()
    seconds = time.perf_counter() - start
    return [run.result(seconds) for run in runs]


def env_pool(cfg: RainbowConfig, tasks: list[FinetuneTask]) -> EnvPool | None:
    """The members' envs in `train.fleet_env_workers` processes (None: in this process)."""
    asked = cfg.train.fleet_env_workers
    workers = min(len(tasks), asked if asked >= 0 else (os.cpu_count() or 1) - 1)  # -1: a core for learning
    if workers == 0 or (asked < 0 and workers < 2):  # by default one worker would only add a hop
        return None
    if not can_spawn():
        log.warning("rainbow fleet: a daemonic process cannot start env workers; the envs step in this one")
        return None
    specs = [(task.game, cfg.train.num_envs, cfg.env, task.seed) for task in tasks]
    return EnvPool(specs, workers)


def choose_actions(runs: list[RainbowRun]) -> list[np.ndarray]:
    """Every member's actions for this step: its own epsilon draws pick the envs that act greedily, and one
    backbone pass over all members' greedy rows gives their actions (each from its own acting network)."""
    draws = [run.policy.explore(run.epsilon) for run in runs]
    rows = [run.obs[greedy] for run, (greedy, _) in zip(runs, draws, strict=True)]
    if sum(len(r) for r in rows):
        agent = runs[0].agent
        with torch.no_grad():
            features = agent.features(torch.from_numpy(np.concatenate(rows)).to(agent.device))
        features = features.split([len(r) for r in rows])
    actions = []
    for i, (run, (greedy, random_actions)) in enumerate(zip(runs, draws, strict=True)):
        chosen = random_actions.copy()
        if greedy.any():
            chosen[greedy] = run.agent.greedy(features[i]).cpu().numpy()
        actions.append(chosen)
    return actions


def learn_round(runs: list[RainbowRun]) -> None:
    """One update of every member: its own batch and augmentation, one shared backbone pass, its own step;
    then every member's new priorities and metrics come to the host in one transfer."""
    batches = [run.learner.sample() for run in runs]
    pairs = [run.agent.augmented_pair(batch) for run, batch in zip(runs, batches, strict=True)]
    with torch.no_grad():  # the backbone is frozen
        features = runs[0].agent.features(torch.cat(pairs)).split([len(p) for p in pairs])
    outputs = []
    for run, batch, f in zip(runs, batches, features, strict=True):
        obs_features, next_features = f.split(len(batch.actions))
        loss_per_sample, metrics = run.agent.learn(
            batch, batch.weights, obs_features, next_features, next_features
        )
        outputs.append(torch.cat([loss_per_sample, torch.stack(list(metrics.values()))]))
    host = torch.cat(outputs).cpu().numpy()
    at = 0
    for run, batch in zip(runs, batches, strict=True):
        b = len(batch.actions)
        loss_per_sample, values = host[at : at + b], host[at + b : at + b + len(METRICS)]
        run.learner.finish(
            batch, loss_per_sample, {k: float(v) for k, v in zip(METRICS, values, strict=True)}
        )
        at += b + len(METRICS)
