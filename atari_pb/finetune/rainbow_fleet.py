"""Online Rainbow for a fleet: every (game, seed) agent of one encoder trained in lockstep through one shared
frozen backbone (`finetune --protocol rainbow --fleet`).

Each member is a whole standalone run (rainbow.RainbowRun): its own env, replay, exploration generators,
epsilon schedule, neck, head, target, Adam, augmentation draws and episode bookkeeping, built and seeded as
`train_rainbow` builds them. What the fleet shares is the backbone's work:
  - acting: each member's own epsilon draws pick its envs that act greedily (EpsilonGreedy.explore), one
    backbone pass runs over the observations, and each member's acting network turns its rows into actions;
  - learning: each update round every member samples its own batch and augments it with its own draws, one
    backbone pass runs over all the (observation, successor) pairs, and each member takes its own gradient
    step (its loss, clipping, Adam, EMA target) on its share of the features;
  - the heads: in a fleet of several, the members' necks and heads are stacked (StackedHeads, one stack per
    number of actions) and run in one vmapped call, with one Adam over the stacked tensors. The per-agent
    loop would launch a few hundred small kernels per agent and update, which on a GPU costs more than the
    shared backbone pass; stacked, a round costs the same few hundred launches for the whole fleet.
The members' envs step in parallel in `train.fleet_env_workers` processes (atari_pb.envs.pool): ALE's step
holds the GIL, so threads would not overlap them (measured on 2 cores: 4 games stepped in 2 threads took
1.19x the sequential time). Every member's priorities and metrics reach the host in one transfer a round.

A fleet of one runs its agent's own modules and computes exactly what the standalone job computes. In a
larger fleet the stacked heads' batched matmuls and a bigger backbone batch may sum in another order (cuDNN's,
oneDNN's and BLAS's choices depend on the shapes), so an agent's numbers differ from its standalone run in the
last bits; should that ever flip a greedy action or a C51 target's argmax, the two runs then play different
actions and replay different data. tests/test_fleet.py states the tolerance and why.
"""

from __future__ import annotations

import logging
import math
import os
import time

import numpy as np
import torch
from tqdm import tqdm

from atari_pb.core.device import pick_device
from atari_pb.envs.pool import EnvPool, can_spawn
from atari_pb.finetune.base import FinetuneTask
from atari_pb.finetune.rainbow import (
    RainbowConfig,
    RainbowRun,
    TrainResult,
    c51_target,
    check,
    taken_log_probs,
)
from atari_pb.finetune.replay import ReplayBatch
from atari_pb.finetune.resume import JobCheckpoint
from atari_pb.finetune.stacking import (
    clip_per_agent_,
    gather_adam_states,
    meta_copy,
    run_stacked,
    scatter_,
    stack_parts,
)
from atari_pb.models.agent import NeckHead
from atari_pb.models.distributional import q_values

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
    pool = env_pool(cfg, tasks)
    runs = member_runs(cfg, tasks, pick_device(t.device, "train.device"), pool)
    checkpoint = runs[0].usable(checkpoint)
    state = checkpoint.load() if checkpoint is not None else None
    saved = state["members"] if state is not None else [None] * len(runs)
    for run, member_state in zip(runs, saved, strict=True):
        run.restore(member_state, checkpoint.dir if checkpoint is not None else None)

    heads = stacked_heads(runs)
    lead = runs[0]  # lockstep: every member is at the same step and update count
    bar = tqdm(total=t.env_steps, initial=lead.steps, unit="step", desc=f"rainbow fleet of {len(runs)}",
               disable=None if progress else True)  # fmt: skip
    start = time.perf_counter()
    try:
        while lead.steps < t.env_steps:
            act(runs, heads, pool)
            learn(runs, heads)
            bar.update(t.num_envs)
            if checkpoint is not None and checkpoint.due(lead.learner.updates):
                for group in heads:  # the agents' own modules and Adam states, up to date
                    group.unstack()
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
    for group in heads:
        group.unstack()
    return [run.result(seconds) for run in runs]


def member_runs(
    cfg: RainbowConfig, tasks: list[FinetuneTask], device, pool: EnvPool | None
) -> list[RainbowRun]:
    """Each task's run, built and seeded as the standalone job builds it, on the one shared backbone."""
    shared = tasks[0].encoder.backbone.to(device)
    runs = []
    for i, task in enumerate(tasks):
        env = (pool.member(i), pool.first_obs[i]) if pool is not None else None
        run = RainbowRun(task.game, task.encoder, cfg, task.seed, device, prefix=f"member{i}_", env=env)
        run.agent.online.backbone = run.agent.target.backbone = shared  # its own copy is dropped
        run.set_precision()
        runs.append(run)
    return runs


def act(runs: list[RainbowRun], heads: list[StackedHeads], pool: EnvPool | None) -> None:
    """One step of every member: actions from one backbone pass, every env stepped, transitions stored."""
    chosen = [run.choose(a) for run, a in zip(runs, choose_actions(runs, heads), strict=True)]
    if pool is not None:
        outcomes = pool.step(chosen)  # every agent's envs at once, in the pool's processes
    else:
        outcomes = [run.env.step(a) for run, a in zip(runs, chosen, strict=True)]
    for run, actions, outcome in zip(runs, chosen, outcomes, strict=True):
        run.store(actions, outcome)


def learn(runs: list[RainbowRun], heads: list[StackedHeads]) -> None:
    """The step's update rounds for the members that can learn (all, but for a step or two at the start
    when some have no transition to learn from yet: those rounds run on the agents' own modules)."""
    learning = [run for run in runs if run.learning]
    if not learning:
        return
    partial = heads if len(learning) < len(runs) else []
    for group in partial:
        group.unstack()
    for _ in range(runs[0].updates_due):
        learn_round(learning, [] if partial else heads)
    for group in partial:
        group.stack()


def stacked_heads(runs: list[RainbowRun]) -> list[StackedHeads]:
    """A fleet of several stacks its agents' heads, one stack per head shape (number of actions); a fleet of
    one runs its agent's own modules, exactly as the standalone job does."""
    if len(runs) < 2:
        return []
    shapes: dict[int, list[int]] = {}
    for i, run in enumerate(runs):
        shapes.setdefault(run.agent.num_actions, []).append(i)
    return [StackedHeads([runs[i] for i in at], at) for at in shapes.values()]


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


def choose_actions(runs: list[RainbowRun], heads: list[StackedHeads]) -> list[np.ndarray]:
    """Every member's actions for this step: its own epsilon draws pick the envs that act greedily, and one
    backbone pass over those observations gives their actions (each from its own acting network; with
    stacked heads, every env's, in one call per head shape)."""
    draws = [run.policy.explore(run.epsilon) for run in runs]
    greedy = [np.zeros(len(run.obs), dtype=np.int64) for run in runs]
    if any(mask.any() for mask, _ in draws):
        agent = runs[0].agent
        rows = [run.obs if heads else run.obs[mask] for run, (mask, _) in zip(runs, draws, strict=True)]
        with torch.no_grad():
            features = agent.features(torch.from_numpy(np.concatenate(rows)).to(agent.device))
        if heads:
            features = features.view(len(runs), -1, *features.shape[1:])
            for group in heads:
                at = group.at
                for i, actions in zip(at, group.greedy(features[at]).cpu().numpy(), strict=True):
                    greedy[i] = actions
        else:
            for i, f in enumerate(features.split([len(r) for r in rows])):
                if len(f):
                    greedy[i][draws[i][0]] = runs[i].agent.greedy(f).cpu().numpy()
    return [np.where(mask, g, random) for (mask, random), g in zip(draws, greedy, strict=True)]


def learn_round(runs: list[RainbowRun], heads: list[StackedHeads]) -> None:
    """One update of every member: its own batch and augmentation, one shared backbone pass, its own step
    (stacked heads: one call per head shape; else each agent's own modules); then every member's new
    priorities and metrics come to the host in one transfer."""
    batches = [run.learner.sample() for run in runs]
    pairs = [run.agent.augmented_pair(batch) for run, batch in zip(runs, batches, strict=True)]
    with torch.no_grad():  # the backbone is frozen
        features = runs[0].agent.features(torch.cat(pairs))
    outputs: list[torch.Tensor | None] = [None] * len(runs)
    if heads:
        features = features.view(len(runs), -1, *features.shape[1:])
        for group in heads:
            at = group.at
            for i, out in zip(at, group.learn([batches[i] for i in at], features[at]), strict=True):
                outputs[i] = out
    else:
        for i, (run, batch, f) in enumerate(
            zip(runs, batches, features.split([len(p) for p in pairs]), strict=True)
        ):
            obs_features, next_features = f.split(len(batch.actions))
            loss_per_sample, metrics = run.agent.learn(
                batch, batch.weights, obs_features, next_features, next_features
            )
            outputs[i] = torch.cat([loss_per_sample, torch.stack([metrics[k] for k in METRICS])])
    host = torch.cat(outputs).cpu().numpy()
    at = 0
    for run, batch in zip(runs, batches, strict=True):
        b = len(batch.actions)
        loss_per_sample, values = host[at : at + b], host[at + b : at + b + len(METRICS)]
        run.learner.finish(
            batch, loss_per_sample, {k: float(v) for k, v in zip(METRICS, values, strict=True)}
        )
        at += b + len(METRICS)


class StackedHeads:
    """The online and target necks and heads of K agents whose heads have one shape (the same number of
    actions), as stacked parameters (K, ...) run in one vmapped call, with one Adam over the stacked tensors
    (finetune/stacking.py; lockstep: the agents share Adam's step count and learning rate).

    Every step stays per agent: its loss is the mean over its own batch, its gradient norm is clipped on its
    own, Adam's and the EMA target's updates are elementwise, and its update counter (which seeds its
    augmentation) is its own. The agents' own modules and Adam states are stale while stacked: `unstack`
    writes the stacked state back (before a checkpoint and at the end), `stack` reads it (at the start and
    after a restore)."""

    def __init__(self, runs: list[RainbowRun], at: list[int]):
        self.runs, self.agents = runs, [run.agent for run in runs]
        self.at = at  # the runs' places among the fleet's members (rows of its shared backbone batches)
        first = self.agents[0]
        self.cfg, self.support, self.num_actions = first.cfg, first.support, first.num_actions
        self.base = meta_copy(NeckHead(first.online.neck, first.online.head))
        self.stack()

    def _parts(self, which: str) -> list[NeckHead]:
        return [NeckHead(getattr(a, which).neck, getattr(a, which).head) for a in self.agents]

    def stack(self) -> None:
        online = self._parts("online")
        self.online, self.online_buffers = stack_parts(online)
        target, self.target_buffers = stack_parts(self._parts("target"))
        self.target = {name: t.detach() for name, t in target.items()}
        self.optimizer = torch.optim.Adam(list(self.online.values()), lr=self.cfg.lr, eps=self.cfg.adam_eps)
        self.optimizer.state.update(
            gather_adam_states(self.online, online, [a.optimizer for a in self.agents])
        )

    def unstack(self) -> None:
        scatter_(self.online, self._parts("online"), self.optimizer.state, [a.optimizer for a in self.agents])
        scatter_(self.target, self._parts("target"))

    def logits(self, features: torch.Tensor, target: bool = False) -> torch.Tensor:
        """(K, B, C, H, W) backbone features -> (K, B, actions, atoms) logits, every agent its own head."""
        params, buffers = (self.target, self.target_buffers) if target else (self.online, self.online_buffers)
        out = run_stacked(self.base, params, buffers, features)
        return out.view(*features.shape[:2], self.num_actions, self.cfg.num_atoms)

    @torch.no_grad()
    def greedy(self, features: torch.Tensor) -> torch.Tensor:
        """(K, B, ...) features -> (K, B) greedy actions of each agent's acting network."""
        return q_values(self.logits(features, self.cfg.act_with == "target"), self.support).argmax(-1)

    def learn(self, batches: list[ReplayBatch], features: torch.Tensor) -> torch.Tensor:
        """One update of every agent from its batch and its features (K, 2B, ...) of (obs, next obs):
        returns (K, B + 3): each agent's per-sample losses, then its loss, q and gradient norm."""
        cfg, dev, b = self.cfg, self.support.device, len(batches[0].actions)
        actions, returns, discounts, weights = (
            torch.from_numpy(np.stack([getattr(x, key) for x in batches])).to(dev)
            for key in ("actions", "returns", "discounts", "weights")
        )
        obs_features, next_features = features[:, :b], features[:, b:]
        with torch.no_grad():
            next_target_logits = self.logits(next_features, target=True).flatten(0, 1)
            next_online_logits = self.logits(next_features).flatten(0, 1) if cfg.double_q else None
            target = c51_target(
                next_target_logits, next_online_logits, returns.flatten(), discounts.flatten(), self.support
            )
        log_probs = taken_log_probs(self.logits(obs_features).flatten(0, 1), actions.flatten())
        loss_per_sample = -(target * log_probs).sum(-1).view(len(batches), b)
        losses = (weights.float() * loss_per_sample).mean(1)  # each agent's own loss

        self.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()  # agent k's parameters get exactly agent k's gradient
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        grad_norms = clip_per_agent_([p.grad for p in self.online.values()], max_norm)  # (K,)
        self.optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(self.target.values()), list(self.online.values()), 1.0 - cfg.target_tau)
        for agent in self.agents:
            agent.updates += 1
        q_taken = (log_probs.detach().exp() * self.support).sum(-1).view(len(batches), b).mean(1)
        if cfg.grad_clip <= 0:  # as the standalone agent reports it: not computed
            grad_norms = torch.zeros_like(grad_norms)
        scalars = torch.stack([losses.detach(), q_taken, grad_norms.detach()], dim=1)
        return torch.cat([loss_per_sample.detach(), scalars], dim=1)
