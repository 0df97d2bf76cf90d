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
from atari_pb.finetune.base import FinetuneResult, FinetuneTask, Protocol, load_protocol_config, register
from atari_pb.finetune.buffer_log import BufferLog, BufferLogConfig
from atari_pb.finetune.replay import PrioritizedReplay, ReplayBatch
from atari_pb.finetune.resume import FrameMirror, JobCheckpoint
from atari_pb.games import Game
from atari_pb.models.agent import HEAD_INITS, AgentNet, build_agent_net, save_agent
from atari_pb.models.distributional import project_distribution, q_values, select_greedy
from atari_pb.models.ema import ema_update, make_target
from atari_pb.models.encoder import Encoder

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
        target = self.cfg.act_with == "target"
        obs = torch.as_tensor(obs).to(self.device)
        return self.q_values(self.logits(self.features(obs, target), target)).argmax(-1)

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
        cfg, dev, b = self.cfg, self.device, len(batch.actions)
        obs = torch.from_numpy(batch.obs).to(dev)
        next_obs = torch.from_numpy(batch.next_obs).to(dev)
        actions = torch.from_numpy(batch.actions).to(dev)
        returns = torch.from_numpy(batch.returns).to(dev)
        discounts = torch.from_numpy(batch.discounts).to(dev)
        weights = torch.as_tensor(weights, dtype=torch.float32).to(dev)

        # the pair is augmented in one call, so obs and next_obs get independent shifts and jitters
        pair = torch.cat([obs, next_obs])
        if cfg.augment:
            rand = BatchRandom.for_batch(self.seed, self.updates, 2 * b, dev)
            aug = augment(pair, rand)
            pair = aug if cfg.augment_target else torch.cat([aug[:b], next_obs.float().div(255.0)])
        if self.train_backbone:
            features = self.features(pair[:b])
            with torch.no_grad():
                next_features = self.features(pair[b:])
                next_target_features = self.features(pair[b:], target=True)
        else:
            with torch.no_grad():
                features, next_features = self.features(pair).split(b)
            next_target_features = next_features

        with torch.no_grad():
            next_target_logits = self.logits(next_target_features, target=True)  # (B, A, K)
            q_select = self.q_values(self.logits(next_features) if cfg.double_q else next_target_logits)
            next_probs = next_target_logits.softmax(-1)
            target = project_distribution(
                select_greedy(q_select, next_probs), returns, discounts, self.support
            )

        log_probs = self.logits(features)[torch.arange(b, device=dev), actions].log_softmax(-1)
        loss_per_sample = -(target * log_probs).sum(-1)
        loss = (weights * loss_per_sample).mean()

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = (
            nn.utils.clip_grad_norm_(self.online_params, cfg.grad_clip)
            if cfg.grad_clip > 0
            else torch.zeros(())
        )
        self.optimizer.step()
        self.update_target()
        self.updates += 1
        q_taken = (log_probs.detach().exp() * self.support).sum(-1)
        metrics = {"loss": loss.item(), "q": q_taken.mean().item(), "grad_norm": float(grad_norm)}
        return loss_per_sample.detach(), metrics

    def update_target(self) -> None:
        ema_update(self.ema_pairs, self.cfg.target_tau)


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
    a, t = cfg.agent, cfg.train
    device = pick_device(t.device, "train.device")
    n = t.num_envs
    torch.manual_seed(seed)

    env, obs = make_vector_env(game, n, cfg.env, seed)
    num_actions = int(env.single_action_space.n)
    agent = RainbowAgent(encoder, num_actions, a, seed, device, train_backbone)
    replay = PrioritizedReplay(
        cfg.replay.capacity, n, a.n_step, a.gamma, cfg.replay.priority_exponent, cfg.env.frames, seed=seed
    )
    sections.keep(replay=replay, agent=agent)

    def greedy(rows: np.ndarray) -> np.ndarray:
        with sections("agent.act"):
            return agent.act(torch.from_numpy(rows)).cpu().numpy()

    # env i explores with its own generator, seeded (seed, i)
    policy = EpsilonGreedy(greedy, num_actions, [[seed, i] for i in range(n)])
    learner = _Learner(agent, replay, cfg, sections)
    episodes = EpisodeTracker(n)
    # the released Far-OOD data generator's log of its training buffer; run = seed + 1 (seed 0 -> run 1)
    buffer_log = BufferLog(cfg.buffer_log, game, run=seed + 1) if cfg.buffer_log.dir else None
    run = _RunState(checkpoint, env, agent, replay, policy, episodes, learner, buffer_log, sections)
    obs, steps, finished = run.restore(obs)
    bar = tqdm(
        total=t.env_steps,
        initial=steps,
        unit="step",
        desc=f"rainbow {game.name}",
        disable=None if progress else True,
    )
    start = time.perf_counter()
    try:
        while steps < t.env_steps:
            # epsilon-greedy: 1 until learning starts, then linearly down to eps_end
            eps = linear(t.eps_start, t.eps_end, (steps - t.learning_starts) / t.eps_decay_steps)
            actions = policy.act(obs, eps)
            with sections("env.step"):
                next_obs, reward, terminated, truncated, info = env.step(actions)
            if not np.array_equal(info["env_id"], np.arange(n)):  # the replay's streams assume env order
                raise RuntimeError(f"the vector env returned envs {info['env_id']} out of order")
            ended = terminated | truncated
            # a life lost in an episode that goes on, by the env's rule (the released env's: lives below
            # the count at its last reset or loss); after one the released env restarts its stack from zeros
            lost_life = info["lost_life"] & a.life_loss_terminal
            final = info["final_obs"][:, -1] if ended.any() else None
            with sections("replay.add"):  # rewards are clipped for learning only; scores stay raw
                replay.add(
                    obs[:, -1],
                    actions,
                    np.sign(reward),
                    terminated | lost_life,
                    ended,
                    final,
                    info["stack_reset"],
                )
            if buffer_log is not None:  # one env; a lost life ends a logged episode, as the released `done`
                buffer_log.add_step(
                    obs, actions, reward, ended | info["lost_life"], steps + n, t.learning_starts
                )
            finished += [(ret, length) for _, ret, length in episodes.step(reward, ended)]
            obs = next_obs
            steps += n

            # the replay ratio is per agent step: a vector step of n envs earns n times the updates
            if steps >= t.learning_starts and replay.tree.total > 0:
                learner.learn(t.updates_per_step * n)
            bar.update(n)
            run.maybe_save(obs, steps, finished)
            if steps % t.log_every < n:
                recent = [r for r, _ in finished[-10:]]
                bar.set_postfix(
                    eps=f"{eps:.2f}",
                    loss=f"{learner.metrics.get('loss', float('nan')):.3f}",
                    ret=f"{np.mean(recent):.1f}" if recent else "-",
                )
    finally:
        bar.close()
        env.close()
    return TrainResult(
        agent=agent.eval(),
        env_steps=steps,
        updates=learner.updates,
        episode_returns=np.array([r for r, _ in finished], dtype=np.float64),
        episode_lengths=np.array([length for _, length in finished], dtype=np.int64),
        seconds=time.perf_counter() - start,
        metrics=learner.metrics,
        buffer_files=[str(f) for f in buffer_log.files] if buffer_log is not None else [],
    )


class _RunState:
    """Saves and restores everything a Rainbow run holds (agent, optimiser, replay, envs with their
    emulators, exploration and replay generators, counters, the buffer log), so a resumed run continues
    the interrupted one exactly. The replay's and the buffer log's frames are mirrored incrementally
    (resume.FrameMirror): a checkpoint carries only the frames written since the previous one."""

    def __init__(
        self, checkpoint, env, agent, replay, policy, episodes, learner, buffer_log, sections=NO_TIMING
    ):
        if checkpoint is not None and not hasattr(env, "state_dict"):
            log.warning("rainbow: this env cannot save its emulators' state (env: not the released one); "
                        "the job runs without checkpoints")  # fmt: skip
            checkpoint = None
        self.checkpoint, self.env, self.agent, self.replay = checkpoint, env, agent, replay
        self.policy, self.episodes, self.learner, self.buffer_log = policy, episodes, learner, buffer_log
        self.sections = sections  # times each save as "checkpoint" (bench/resume.py)
        if checkpoint is not None:
            self.replay_frames = FrameMirror(checkpoint.dir, "replay_frames", replay.frame)
            self.replay_written = replay.written.copy()
            if buffer_log is not None:
                self.log_frames = FrameMirror(checkpoint.dir, "buffer_log_frames", buffer_log.frames)
                self.log_written = buffer_log.written

    def restore(self, obs: np.ndarray) -> tuple[np.ndarray, int, list[tuple[float, int]]]:
        state = self.checkpoint.load() if self.checkpoint is not None else None
        if state is None:
            if self.buffer_log is not None:
                self.buffer_log.check_fresh()
            return obs, 0, []
        self.agent.load_checkpoint_state(state["agent"])
        self.replay.load_state_dict(state["replay"])
        self.replay_frames.restore(state["replay_frames"])
        self.replay_written = self.replay.written.copy()
        self.env.load_state_dict(state["env"])
        self.policy.draws.load_state_dict(state["policy"])
        self.episodes.load_state_dict(state["episodes"])
        self.learner.updates, self.learner.metrics = int(state["updates"]), dict(state["metrics"])
        if self.buffer_log is not None:
            self.buffer_log.load_state_dict(state["buffer_log"])
            self.log_frames.restore(state["buffer_log_frames"])
            self.log_written = self.buffer_log.written
        finished = [(float(r), int(n)) for r, n in state["finished"]]
        return state["obs"].numpy(), int(state["steps"]), finished

    def maybe_save(self, obs: np.ndarray, steps: int, finished: list[tuple[float, int]]) -> None:
        if self.checkpoint is None or not self.checkpoint.due(self.learner.updates):
            return
        with self.sections("checkpoint"):
            self._save(obs, steps, finished)

    def _save(self, obs: np.ndarray, steps: int, finished: list[tuple[float, int]]) -> None:
        replay_delta = self.replay_frames.delta(self.replay.slots_written_since(self.replay_written))
        state = {
            "agent": self.agent.checkpoint_state(),
            "replay": self.replay.state_dict(),
            "replay_frames": replay_delta,
            "env": self.env.state_dict(),
            "policy": self.policy.draws.state_dict(),
            "episodes": self.episodes.state_dict(),
            "updates": self.learner.updates,
            "metrics": dict(self.learner.metrics),
            "finished": list(finished),
            "obs": torch.from_numpy(obs.copy()),
            "steps": steps,
        }
        if self.buffer_log is not None:
            log_delta = self.log_frames.delta(self.buffer_log.slots_written_since(self.log_written))
            state |= {"buffer_log": self.buffer_log.state_dict(), "buffer_log_frames": log_delta}
        self.checkpoint.save(self.learner.updates, state)
        # the checkpoint is on disk: now its frames go to the mirrors (re-applied on load after a kill here)
        self.replay_frames.apply(replay_delta)
        self.replay_written = self.replay.written.copy()
        if self.buffer_log is not None:
            self.log_frames.apply(log_delta)
            self.log_written = self.buffer_log.written


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
        r, timed = self.cfg.replay, self.sections
        for _ in range(count):
            beta = linear(r.beta_start, r.beta_end, self.updates / self.total)
            with timed("replay.sample"):
                batch = self.replay.sample(self.cfg.train.batch_size, beta)
            with timed("agent.update"):
                loss_per_sample, self.metrics = self.agent.update(batch, batch.weights)
            with timed("replay.update_priorities"):
                # a floor keeps a transition whose target the agent already fits from starving
                self.replay.update_priorities(batch.indices, loss_per_sample.clamp_min(1e-5).cpu().numpy())
            self.updates += 1


@register
class Rainbow(Protocol):
    """Online Rainbow in the game (Atari-PB's online RL protocol)."""

    name = "rainbow"
    resumable = True
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

    @staticmethod
    def save_agent(result: FinetuneResult, game: Game, path: Path) -> Path:
        return result.agent.save(game, path)
