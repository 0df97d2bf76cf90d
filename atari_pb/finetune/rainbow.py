"""Online Rainbow fine-tuning on one game (Atari-PB's online RL protocol), read top to bottom.

The agent keeps the evaluated encoder's backbone (frozen; trained too for the `e2e` baseline) and puts a
re-initialised spatial-MLP neck and a C51 head (no dueling, no noisy nets: Atari-PB's Rainbow explores
epsilon-greedily) on top. It learns by double-Q C51 on 10-step returns of sign-clipped rewards from a
prioritised replay, with random-shift + intensity augmentation of both the observation and its n-step
successor, Adam, gradient clipping, and an EMA target network that also chooses the actions (as in
Atari-PB, which explores and evaluates with the target network).

    cfg = load_rainbow_config(["train.env_steps=10000"])
    result = train_rainbow(get_game("freeway"), load_encoder("enc.safetensors"), cfg, seed=0)
    result.agent.act(obs_uint8)      # greedy actions, e.g. for atari_pb.eval.rollout

Registered as the `rainbow` protocol (finetune/rainbow.yaml); `train_backbone=True` is the `e2e` baseline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from atari_pb.augment import BatchRandom, augment
from atari_pb.core.device import pick_device
from atari_pb.core.episodes import EpisodeTracker
from atari_pb.core.policies import EpsilonGreedy
from atari_pb.core.schedules import linear
from atari_pb.core.timing import NO_TIMING, Sections
from atari_pb.envs.atari import EnvConfig, make_vector_env
from atari_pb.errors import UsageError
from atari_pb.finetune.base import (
    FinetuneResult,
    FinetuneTask,
    FleetFootprint,
    Protocol,
    load_protocol_config,
    register,
)
from atari_pb.finetune.buffer_log import BufferLog, BufferLogConfig
from atari_pb.finetune.replay import PrioritizedReplay, ReplayBatch
from atari_pb.finetune.resume import FrameMirror, JobCheckpoint
from atari_pb.games import Game
from atari_pb.models.agent import HEAD_INITS, AgentNet, build_agent_net, save_agent, set_backbone_precision
from atari_pb.models.distributional import project_distribution, q_values, select_greedy
from atari_pb.models.ema import ema_update, make_target
from atari_pb.models.encoder import Encoder
from atari_pb.models.memory import MAX_ACTIONS

log = logging.getLogger(__name__)


@dataclass
class AgentConfig:
    """The `agent:` section of finetune/rainbow.yaml: the learner."""

    num_atoms: int = 51
    v_min: float = -10.0
    v_max: float = 10.0
    gamma: float = 0.99
    n_step: int = 10
    double_q: bool = True  # the online network picks the next action, the target evaluates it
    target_tau: float = 0.99  # after each update: target <- tau * target + (1 - tau) * online
    lr: float = 1e-4  # Adam
    adam_eps: float = 1.5e-4
    grad_clip: float = 10.0  # max gradient norm; 0 = no clipping
    augment: bool = True  # random shift + intensity on the observation ...
    augment_target: bool = True  # ... and on the n-step successor the target is computed from
    head_init: str = "normal"  # released: C51 head weights and biases N(0, 1) (mh_distributional); torch
    act_with: str = "target"  # target | online: the network that explores and plays (Atari-PB: target)
    life_loss_terminal: bool = True  # a lost life ends n-step returns (learning only; the game goes on)


@dataclass
class ReplayConfig:
    """The `replay:` section: prioritised replay (see atari_pb.finetune.replay)."""

    capacity: int = 100_000  # frames; memory is committed only as they are written (7 KB each)
    priority_exponent: float = 0.5  # omega
    beta_start: float = 0.4  # importance-weight exponent, annealed linearly over the updates
    beta_end: float = 1.0


@dataclass
class TrainConfig:
    """The `train:` section: the acting and learning schedule, in agent steps (summed over envs)."""

    env_steps: int = 50_000
    num_envs: int = 1  # parallel envs; every vector step adds num_envs steps and their updates
    learning_starts: int = 2_000  # steps of random play before the first update
    updates_per_step: int = 2  # gradient updates per agent step (the replay ratio)
    batch_size: int = 32
    eps_start: float = 1.0
    eps_end: float = 0.01
    eps_decay_steps: int = 10_000  # linear decay, starting when learning starts (as Atari-PB)
    log_every: int = 1_000  # agent steps between progress-bar updates
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    fleet_env_workers: int = -1  # --fleet: processes stepping the agents' envs; -1: one per core but one (at
    # most one per agent; none on a 2-core machine); 0: the fleet's own process
    bf16: bool = False  # the backbone's pass under bfloat16 autocast (GPU speed; released: fp32 here)
    channels_last: bool = False  # the backbone's weights in channels-last order (GPU speed)


@dataclass
class RainbowConfig:
    """finetune/rainbow.yaml: one section per dataclass."""

    agent: AgentConfig = field(default_factory=AgentConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    buffer_log: BufferLogConfig = field(default_factory=BufferLogConfig)


def load_rainbow_config(overrides: Sequence[str] = (), path: str | Path | None = None) -> RainbowConfig:
    """finetune/rainbow.yaml (or `path`) over the defaults, then `key=value` overrides."""
    return load_protocol_config("rainbow", overrides, path)


def check(cfg: RainbowConfig) -> None:
    a, t = cfg.agent, cfg.train
    if a.num_atoms < 2 or a.v_max <= a.v_min:
        raise UsageError(
            f"agent: need num_atoms >= 2 and v_max > v_min (got {a.num_atoms}, {a.v_min}, {a.v_max})"
        )
    if a.n_step < 1 or not 0.0 <= a.target_tau <= 1.0:
        raise UsageError(f"agent: need n_step >= 1 and 0 <= target_tau <= 1 (got {a.n_step}, {a.target_tau})")
    if a.act_with not in ("target", "online"):
        raise UsageError(f"agent.act_with={a.act_with!r}; valid: target, online")
    if a.head_init not in HEAD_INITS:
        raise UsageError(f"agent.head_init={a.head_init!r}; valid: {', '.join(HEAD_INITS)}")
    if min(t.env_steps, t.num_envs, t.batch_size, t.eps_decay_steps, t.log_every) < 1:
        raise UsageError("train: env_steps, num_envs, batch_size, eps_decay_steps and log_every must be >= 1")
    if t.fleet_env_workers < -1:
        raise UsageError(
            f"train.fleet_env_workers={t.fleet_env_workers}; valid: -1 (auto), 0 (none) or a count"
        )
    if t.learning_starts < 0 or t.updates_per_step < 0:
        raise UsageError("train: learning_starts and updates_per_step must be >= 0")
    if cfg.replay.capacity // t.num_envs < 2 * (a.n_step + cfg.env.frames):
        raise UsageError(f"replay.capacity={cfg.replay.capacity} is too small for {t.num_envs} envs")
    b = cfg.buffer_log
    if b.dir and (t.num_envs != 1 or min(b.every, b.size, b.delay) < 1):
        raise UsageError(
            "buffer_log: the released buffer log needs train.num_envs=1 and every, size, delay >= 1 "
            f"(got num_envs={t.num_envs}, every={b.every}, size={b.size}, delay={b.delay})"
        )


class RainbowAgent(nn.Module):
    """The online network (backbone from the encoder + fresh neck + C51 head, atari_pb.models.agent) with an
    EMA target copy and Adam.

    With a frozen backbone the target shares it (an EMA of a constant is the constant), so the backbone
    runs once per update, on the observations and their successors together.
    """

    def __init__(
        self,
        encoder: Encoder,
        num_actions: int,
        cfg: AgentConfig,
        seed: int = 0,
        device: torch.device | str = "cpu",
        train_backbone: bool = False,
    ):
        super().__init__()
        self.cfg, self.num_actions, self.seed = cfg, num_actions, seed
        self.train_backbone = train_backbone
        self.online = build_agent_net(
            encoder, num_actions * cfg.num_atoms, train_backbone, head_init=cfg.head_init
        )
        self.target = AgentNet(
            make_target(self.online.backbone) if train_backbone else self.online.backbone,
            make_target(self.online.neck),
            make_target(self.online.head),
            train_backbone=False,
        )
        self.target.model_cfg = encoder.cfg
        self.register_buffer("support", torch.linspace(cfg.v_min, cfg.v_max, cfg.num_atoms), persistent=False)
        self.to(device)
        self.online_params = [p for p in self.online.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.online_params, lr=cfg.lr, eps=cfg.adam_eps)
        parts = ("neck", "head", "backbone") if train_backbone else ("neck", "head")
        self.ema_pairs = [(getattr(self.online, p), getattr(self.target, p)) for p in parts]
        self.updates = 0

    def checkpoint_state(self) -> dict:
        return {"net": self.state_dict(), "optimizer": self.optimizer.state_dict(), "updates": self.updates}

    def load_checkpoint_state(self, state: dict) -> None:
        self.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = int(state["updates"])

    # the parts by name, for readers and tests
    backbone = property(lambda self: self.online.backbone)
    neck = property(lambda self: self.online.neck)
    head = property(lambda self: self.online.head)
    target_backbone = property(lambda self: self.target.backbone)
    target_neck = property(lambda self: self.target.neck)
    target_head = property(lambda self: self.target.head)

    @property
    def acting_net(self) -> AgentNet:
        return self.target if self.cfg.act_with == "target" else self.online

    @property
    def device(self) -> torch.device:
        return self.support.device

    def features(self, x: torch.Tensor, target: bool = False) -> torch.Tensor:
        """uint8 stacks or augmented floats in [0, 1] -> backbone features."""
        return (self.target if target else self.online).features(x)

    def logits(self, features: torch.Tensor, target: bool = False) -> torch.Tensor:
        """Backbone features -> (B, actions, atoms) logits of the return distributions."""
        net = self.target if target else self.online
        return net.from_features(features).view(-1, self.num_actions, self.cfg.num_atoms)

    def q_values(self, logits: torch.Tensor) -> torch.Tensor:
        return q_values(logits, self.support)

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """Greedy actions (B,) int64 for uint8 (B, frames, 84, 84) stacks, with the acting network."""
        obs = torch.as_tensor(obs).to(self.device)
        return self.greedy(self.features(obs, self.cfg.act_with == "target"))

    @torch.no_grad()
    def greedy(self, features: torch.Tensor) -> torch.Tensor:
        """Greedy actions (B,) from the acting network's backbone features (`act`, or a fleet's shared pass)."""
        target = self.cfg.act_with == "target"
        return self.q_values(self.logits(features, target)).argmax(-1)

    def save(self, game: Game, path: str | Path) -> Path:
        """The acting network as an agent file (`collect --policy eps-greedy:<path>`)."""
        head = {
            "kind": "c51",
            "num_atoms": self.cfg.num_atoms,
            "v_min": self.cfg.v_min,
            "v_max": self.cfg.v_max,
        }
        return save_agent(self.acting_net, game, path, self.num_actions, head)

    def update(
        self, batch: ReplayBatch, weights: np.ndarray | torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """One gradient step of double-Q C51 on `batch` (returns already n-step and of clipped rewards),
        each sample's loss scaled by its importance weight. Returns each sample's cross-entropy (the new
        priorities) and a few scalars."""
        b = len(batch.actions)
        pair = self.augmented_pair(batch)
        if self.train_backbone:
            features = self.features(pair[:b])
            with torch.no_grad():
                next_features = self.features(pair[b:])
                next_target_features = self.features(pair[b:], target=True)
        else:
            with torch.no_grad():
                features, next_features = self.features(pair).split(b)
            next_target_features = next_features
        loss_per_sample, metrics = self.learn(batch, weights, features, next_features, next_target_features)
        return loss_per_sample, {k: float(v) for k, v in metrics.items()}

    def augmented_pair(self, batch: ReplayBatch) -> torch.Tensor:
        """The batch's observations and n-step successors stacked (2B, F, 84, 84), as this update's backbone
        pass sees them. The pair is augmented in one call, so obs and next_obs get independent shifts and
        jitters, drawn from (seed, updates)."""
        cfg, dev, b = self.cfg, self.device, len(batch.actions)
        next_obs = torch.from_numpy(batch.next_obs).to(dev)
        pair = torch.cat([torch.from_numpy(batch.obs).to(dev), next_obs])
        if cfg.augment:
            rand = BatchRandom.for_batch(self.seed, self.updates, 2 * b, dev)
            aug = augment(pair, rand)
            pair = aug if cfg.augment_target else torch.cat([aug[:b], next_obs.float().div(255.0)])
        return pair

    def learn(
        self,
        batch: ReplayBatch,
        weights: np.ndarray | torch.Tensor,
        features: torch.Tensor,
        next_features: torch.Tensor,
        next_target_features: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The update from the backbone's features of the pair (`update`, or a fleet's shared pass): the
        C51 target, the weighted cross-entropy, Adam with gradient clipping, the EMA target. The metrics stay
        0-d tensors on the device, so a fleet reads every agent's in one transfer."""
        cfg, dev = self.cfg, self.device
        actions = torch.from_numpy(batch.actions).to(dev)
        returns = torch.from_numpy(batch.returns).to(dev)
        discounts = torch.from_numpy(batch.discounts).to(dev)
        weights = torch.as_tensor(weights, dtype=torch.float32).to(dev)
        with torch.no_grad():
            next_target_logits = self.logits(next_target_features, target=True)  # (B, A, K)
            next_online_logits = self.logits(next_features) if cfg.double_q else None
            target = c51_target(next_target_logits, next_online_logits, returns, discounts, self.support)

        log_probs = taken_log_probs(self.logits(features), actions)
        loss_per_sample = -(target * log_probs).sum(-1)
        loss = (weights * loss_per_sample).mean()

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = (
            nn.utils.clip_grad_norm_(self.online_params, cfg.grad_clip)
            if cfg.grad_clip > 0
            else torch.zeros((), device=dev)
        )
        self.optimizer.step()
        self.update_target()
        self.updates += 1
        q_taken = (log_probs.detach().exp() * self.support).sum(-1)
        metrics = {"loss": loss.detach(), "q": q_taken.mean(), "grad_norm": grad_norm.detach()}
        return loss_per_sample.detach(), metrics

    def update_target(self) -> None:
        ema_update(self.ema_pairs, self.cfg.target_tau)


def c51_target(
    next_target_logits: torch.Tensor,
    next_online_logits: torch.Tensor | None,
    returns: torch.Tensor,
    discounts: torch.Tensor,
    support: torch.Tensor,
) -> torch.Tensor:
    """The C51 target distributions (B, atoms): the target network's distribution of the next action, which
    the online network picks (double Q; `next_online_logits` None: the target picks), projected through the
    n-step return. Logits are (B, actions, atoms)."""
    q_select = q_values(next_online_logits if next_online_logits is not None else next_target_logits, support)
    next_probs = next_target_logits.softmax(-1)
    return project_distribution(select_greedy(q_select, next_probs), returns, discounts, support)


def taken_log_probs(logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """The log-distribution (B, atoms) of each sample's taken action, from logits (B, actions, atoms)."""
    return logits[torch.arange(len(actions), device=logits.device), actions].log_softmax(-1)


@dataclass
class TrainResult:
    agent: RainbowAgent
    env_steps: int  # agent steps, summed over envs
    updates: int
    episode_returns: np.ndarray  # raw game scores of the training episodes that finished, in order
    episode_lengths: np.ndarray
    seconds: float
    metrics: dict[str, float]  # the last update's loss, q, grad_norm
    buffer_files: list[str] = field(default_factory=list)  # the buffer log's dumps (buffer_log.dir)


def train_rainbow(
    game: Game,
    encoder: Encoder,
    cfg: RainbowConfig,
    seed: int,
    progress: bool = True,
    train_backbone: bool = False,
    sections: Sections = NO_TIMING,
    checkpoint: JobCheckpoint | None = None,
) -> TrainResult:
    """Fine-tune a Rainbow agent on `game` for cfg.train.env_steps agent steps from `encoder` (which is
    only read: the agent copies the backbone and re-initialises neck and head). `train_backbone` trains the
    backbone too (the `e2e` baseline); `sections` times the loop's parts (bench/); `checkpoint` saves the
    whole run every so many updates and continues a saved one (atari_pb.finetune.resume)."""
    check(cfg)
    t = cfg.train
    run = RainbowRun(
        game, encoder, cfg, seed, pick_device(t.device, "train.device"), train_backbone, sections
    )
    checkpoint = run.usable(checkpoint)
    state = checkpoint.load() if checkpoint is not None else None
    run.restore(state, checkpoint.dir if checkpoint is not None else None)
    bar = tqdm(total=t.env_steps, initial=run.steps, unit="step", desc=f"rainbow {game.name}",
               disable=None if progress else True)  # fmt: skip
    start = time.perf_counter()
    try:
        while run.steps < t.env_steps:
            run.act()
            if run.learning:
                run.learner.learn(run.updates_due)
            bar.update(t.num_envs)
            if checkpoint is not None and checkpoint.due(run.learner.updates):
                with sections("checkpoint"):
                    checkpoint.save(run.learner.updates, run.state())
                    run.saved()
            if run.steps % t.log_every < t.num_envs:
                bar.set_postfix(run.postfix())
    finally:
        bar.close()
        run.env.close()
    return run.result(time.perf_counter() - start)


class RainbowRun:
    """Everything one Rainbow agent's run holds, and its step, read in `train_rainbow`'s loop (and stepped in
    lockstep with others by the fleet, rainbow_fleet.py): the env and its current observations, the agent,
    the replay and its learner, the exploration policy with a generator per env, the episode bookkeeping and
    the released buffer log. `state()` / `restore()` save and restore all of it, so a resumed run continues
    the interrupted one exactly; the replay's and the buffer log's frames are mirrored incrementally
    (resume.FrameMirror) in the checkpoint's directory, under `prefix` (a fleet's members share one)."""

    def __init__(
        self, game, encoder, cfg, seed, device, train_backbone=False, sections=NO_TIMING, prefix="", env=None
    ):
        """`env`: (env, first observations) made elsewhere (a fleet's env pool); None: made here."""
        a, n = cfg.agent, cfg.train.num_envs
        self.game, self.cfg, self.seed, self.sections, self.prefix = game, cfg, seed, sections, prefix
        torch.manual_seed(seed)
        self.env, self.obs = env if env is not None else make_vector_env(game, n, cfg.env, seed)
        num_actions = int(self.env.single_action_space.n)
        self.agent = RainbowAgent(encoder, num_actions, a, seed, device, train_backbone)
        self.set_precision()
        self.replay = PrioritizedReplay(
            cfg.replay.capacity, n, a.n_step, a.gamma, cfg.replay.priority_exponent, cfg.env.frames, seed=seed
        )
        sections.keep(replay=self.replay, agent=self.agent)
        # env i explores with its own generator, seeded (seed, i)
        self.policy = EpsilonGreedy(self._greedy, num_actions, [[seed, i] for i in range(n)])
        self.learner = _Learner(self.agent, self.replay, cfg, sections)
        self.episodes = EpisodeTracker(n)
        # the released Far-OOD data generator's log of its training buffer; run = seed + 1 (seed 0 -> run 1)
        self.buffer_log = BufferLog(cfg.buffer_log, game, run=seed + 1) if cfg.buffer_log.dir else None
        self.steps, self.finished, self.eps = 0, [], 1.0
        self.mirrors: dict[str, FrameMirror] = {}

    def set_precision(self) -> None:
        """train.bf16 / train.channels_last on the online and target networks (again after a fleet swaps in
        its shared backbone)."""
        t = self.cfg.train
        set_backbone_precision([self.agent.online, self.agent.target], t.bf16, t.channels_last)

    def _greedy(self, rows: np.ndarray) -> np.ndarray:
        with self.sections("agent.act"):
            return self.agent.act(torch.from_numpy(rows)).cpu().numpy()

    def usable(self, checkpoint: JobCheckpoint | None) -> JobCheckpoint | None:
        if checkpoint is not None and not hasattr(self.env, "state_dict"):
            log.warning("rainbow: this env cannot save its emulators' state (env: not the released one); "
                        "the job runs without checkpoints")  # fmt: skip
            return None
        return checkpoint

    @property
    def epsilon(self) -> float:
        """1 until learning starts, then linearly down to eps_end."""
        t = self.cfg.train
        return linear(t.eps_start, t.eps_end, (self.steps - t.learning_starts) / t.eps_decay_steps)

    @property
    def learning(self) -> bool:
        return self.steps >= self.cfg.train.learning_starts and self.replay.tree.total > 0

    @property
    def updates_due(self) -> int:
        """The replay ratio is per agent step: a vector step of n envs earns n times the updates."""
        return self.cfg.train.updates_per_step * self.cfg.train.num_envs

    def act(self) -> None:
        """One vector step: choose epsilon-greedily, step the envs, store the transitions."""
        actions = self.choose()
        with self.sections("env.step"):
            outcome = self.env.step(actions)
        self.store(actions, outcome)

    def choose(self, actions: np.ndarray | None = None) -> np.ndarray:
        """This step's actions, epsilon-greedy (or the `actions` a fleet chose with this run's policy,
        `self.policy.explore`)."""
        self.eps = self.epsilon
        return self.policy.act(self.obs, self.eps) if actions is None else actions

    def store(self, actions: np.ndarray, outcome: tuple) -> None:
        """The envs' answer to `actions` (obs, reward, terminated, truncated, info): into the replay, the
        buffer log and the episode bookkeeping; the observations move on."""
        a, t, n = self.cfg.agent, self.cfg.train, self.cfg.train.num_envs
        next_obs, reward, terminated, truncated, info = outcome
        if not np.array_equal(info["env_id"], np.arange(n)):  # the replay's streams assume env order
            raise RuntimeError(f"the vector env returned envs {info['env_id']} out of order")
        ended = terminated | truncated
        # a life lost in an episode that goes on, by the env's rule (the released env's: lives below
        # the count at its last reset or loss); after one the released env restarts its stack from zeros
        lost_life = info["lost_life"] & a.life_loss_terminal
        final = info["final_obs"][:, -1] if ended.any() else None
        with self.sections("replay.add"):  # rewards are clipped for learning only; scores stay raw
            self.replay.add(
                self.obs[:, -1],
                actions,
                np.sign(reward),
                terminated | lost_life,
                ended,
                final,
                info["stack_reset"],
            )
        if self.buffer_log is not None:  # one env; a lost life ends a logged episode, as the released `done`
            self.buffer_log.add_step(
                self.obs, actions, reward, ended | info["lost_life"], self.steps + n, t.learning_starts
            )
        self.finished += [(ret, length) for _, ret, length in self.episodes.step(reward, ended)]
        self.obs = next_obs
        self.steps += n

    def postfix(self) -> dict[str, str]:
        recent = [r for r, _ in self.finished[-10:]]
        loss = self.learner.metrics.get("loss", float("nan"))
        return {
            "eps": f"{self.eps:.2f}",
            "loss": f"{loss:.3f}",
            "ret": f"{np.mean(recent):.1f}" if recent else "-",
        }

    def result(self, seconds: float) -> TrainResult:
        return TrainResult(
            agent=self.agent.eval(),
            env_steps=self.steps,
            updates=self.learner.updates,
            episode_returns=np.array([r for r, _ in self.finished], dtype=np.float64),
            episode_lengths=np.array([length for _, length in self.finished], dtype=np.int64),
            seconds=seconds,
            metrics=self.learner.metrics,
            buffer_files=[str(f) for f in self.buffer_log.files] if self.buffer_log is not None else [],
        )

    # saving and restoring: `state()` is saved, then `saved()` writes its frames to the mirrors

    def restore(self, state: dict | None, directory: Path | None) -> None:
        """Continue from `state` (None: a fresh start) with the frame mirrors in `directory` (None: no
        checkpoints)."""
        if directory is not None:
            self.mirrors = {
                "replay": FrameMirror(directory, self.prefix + "replay_frames", self.replay.frame)
            }
            if self.buffer_log is not None:
                self.mirrors["buffer_log"] = FrameMirror(
                    directory, self.prefix + "buffer_log_frames", self.buffer_log.frames
                )
        if state is None:
            if self.buffer_log is not None:
                self.buffer_log.check_fresh()
            self._mark_saved()
            return
        self.agent.load_checkpoint_state(state["agent"])
        self.replay.load_state_dict(state["replay"])
        self.env.load_state_dict(state["env"])
        self.policy.draws.load_state_dict(state["policy"])
        self.episodes.load_state_dict(state["episodes"])
        self.learner.updates, self.learner.metrics = int(state["updates"]), dict(state["metrics"])
        if self.buffer_log is not None:
            self.buffer_log.load_state_dict(state["buffer_log"])
        for name, mirror in self.mirrors.items():
            mirror.restore(state[f"{name}_frames"])
        self.finished = [(float(r), int(n)) for r, n in state["finished"]]
        self.obs, self.steps = state["obs"].numpy(), int(state["steps"])
        self._mark_saved()

    def state(self) -> dict:
        logs = {"replay": self.replay} | (
            {"buffer_log": self.buffer_log} if self.buffer_log is not None else {}
        )
        self._deltas = {
            name: self.mirrors[name].delta(part.slots_written_since(self._written[name]))
            for name, part in logs.items()
        }
        state = {
            "agent": self.agent.checkpoint_state(),
            "replay": self.replay.state_dict(),
            "env": self.env.state_dict(),
            "policy": self.policy.draws.state_dict(),
            "episodes": self.episodes.state_dict(),
            "updates": self.learner.updates,
            "metrics": dict(self.learner.metrics),
            "finished": list(self.finished),
            "obs": torch.from_numpy(self.obs.copy()),
            "steps": self.steps,
            **{f"{name}_frames": delta for name, delta in self._deltas.items()},
        }
        if self.buffer_log is not None:
            state["buffer_log"] = self.buffer_log.state_dict()
        return state

    def saved(self) -> None:
        """The state is on disk: now its frames go to the mirrors (re-applied on load after a kill here)."""
        for name, delta in self._deltas.items():
            self.mirrors[name].apply(delta)
        self._mark_saved()

    def _mark_saved(self) -> None:
        self._written = {"replay": self.replay.written.copy()}
        if self.buffer_log is not None:
            self._written["buffer_log"] = self.buffer_log.written


class _Learner:
    """Prioritised-replay updates: sample with the annealed beta, update, write the new priorities."""

    def __init__(
        self, agent: RainbowAgent, replay: PrioritizedReplay, cfg: RainbowConfig, sections: Sections
    ):
        self.agent, self.replay, self.cfg, self.sections = agent, replay, cfg, sections
        t = cfg.train
        self.total = max(1, (t.env_steps - t.learning_starts) * t.updates_per_step)
        self.updates = 0
        self.metrics: dict[str, float] = {}

    def learn(self, count: int) -> None:
        for _ in range(count):
            batch = self.sample()
            with self.sections("agent.update"):
                loss_per_sample, metrics = self.agent.update(batch, batch.weights)
            self.finish(batch, loss_per_sample, metrics)

    def sample(self) -> ReplayBatch:
        r = self.cfg.replay
        beta = linear(r.beta_start, r.beta_end, self.updates / self.total)
        with self.sections("replay.sample"):
            return self.replay.sample(self.cfg.train.batch_size, beta)

    def finish(
        self, batch: ReplayBatch, loss_per_sample: torch.Tensor | np.ndarray, metrics: dict[str, float]
    ) -> None:
        """Write the update's per-sample losses as the new priorities and keep its metrics."""
        if isinstance(loss_per_sample, torch.Tensor):
            loss_per_sample = loss_per_sample.cpu().numpy()
        with self.sections("replay.update_priorities"):
            # a floor keeps a transition whose target the agent already fits from starving
            self.replay.update_priorities(batch.indices, np.maximum(loss_per_sample, np.float32(1e-5)))
        self.metrics = metrics
        self.updates += 1


def finetune_result(r: TrainResult) -> FinetuneResult:
    """What the sweep records of a run (standalone or in a fleet)."""
    return FinetuneResult(
        agent=r.agent,
        gradient_steps=r.updates,
        env_steps=r.env_steps,
        seconds=r.seconds,
        summary={
            "train_episode_returns": [float(x) for x in r.episode_returns[-10:]],
            **({"buffer_files": r.buffer_files} if r.buffer_files else {}),
        },
    )


@register
class Rainbow(Protocol):
    """Online Rainbow in the game (Atari-PB's online RL protocol)."""

    name = "rainbow"
    resumable = True
    fleet = True
    Config = RainbowConfig
    can_save_agent = True

    @staticmethod
    def check(cfg: RainbowConfig) -> None:
        check(cfg)

    @staticmethod
    def env_frames(cfg: RainbowConfig) -> int | None:
        return cfg.env.frames

    @staticmethod
    def train(cfg: RainbowConfig, task: FinetuneTask) -> FinetuneResult:
        r = train_rainbow(
            task.game,
            task.encoder,
            cfg,
            task.seed,
            task.progress,
            task.train_backbone,
            task.sections,
            task.checkpoint,
        )
        return finetune_result(r)

    @staticmethod
    def fleet_footprint(cfg: RainbowConfig) -> FleetFootprint:
        """Host: the replay when full, and the released buffer log if one is kept (frame + 3 float64 a row).
        Device: a learning round's batch of observations and successors (or a step's envs, if more)."""
        log_rows = cfg.buffer_log.size if cfg.buffer_log.dir else 0
        host = cfg.replay.capacity * PrioritizedReplay.slot_bytes() + log_rows * (84 * 84 + 3 * 8)
        rows = max(2 * cfg.train.batch_size, cfg.train.num_envs)
        return FleetFootprint(host, rows, MAX_ACTIONS * cfg.agent.num_atoms, cfg.train.device)

    @staticmethod
    def train_fleet(
        cfg: RainbowConfig,
        tasks: list[FinetuneTask],
        progress: bool = True,
        checkpoint: JobCheckpoint | None = None,
    ) -> list[FinetuneResult]:
        from atari_pb.finetune.rainbow_fleet import train_rainbow_fleet

        return [finetune_result(r) for r in train_rainbow_fleet(cfg, tasks, progress, checkpoint)]

    @staticmethod
    def save_agent(result: FinetuneResult, game: Game, path: Path) -> Path:
        return result.agent.save(game, path)
