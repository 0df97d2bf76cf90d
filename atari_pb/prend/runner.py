"""`atari-pb prend`: PPO exploration with an RND or PreND intrinsic reward. `train_prend` is a loop over
named steps, each a function below, in this order:

    setup                   refuse a bad request before anything is written; build the networks (seeded)
    resume_from             --resume: the checkpoint's state, once it is known to continue this run
    start_envs, warm_up     the envs; a fresh run's probe set and RND's frame statistics from random-agent
                            steps (not counted as env steps)
    every update u (ppo.num_steps x ppo.num_envs agent steps), every random draw seeded by (seed, u):
    rollout                 policy samples; the observation each transition reached (info["final_obs"]
                            where an episode ended: the transition into the terminal state is rewarded for
                            the state it reached, not for the next episode's first frame)
    intrinsic_rewards       [RND: frame statistics] -> intrinsic inputs, once -> raw intrinsic rewards
                            (stop if not finite) -> reservoir of target embeddings -> rewards / running std
                            of intrinsic returns
    returns_and_advantages  GAE: extrinsic episodic (sign-clipped rewards), intrinsic non-episodic ->
                            A = 2 A_ext + 1 A_int
    ppo_epochs              PPO epochs, the predictor trained on a quarter of each minibatch
    probe_diagnostics       every `diagnostics.every` updates: the probe set's reward vs k-NN novelty
    log_metrics             metrics.jsonl / TensorBoard
    save                    checkpoint.pt (atomic) every `train.save_every` updates, and the PNG plots

Run directory: config.yaml (what ran: a null `intrinsic.predictor_lr_scale` is recorded as the value the
mode gives it), metrics.jsonl, tb/, checkpoint.pt, intrinsic_reward.png, correlation.png, episode_return.png.

Resume (`--resume`): the checkpoint holds the policy, the predictor (and the target), the optimiser, the
observation and reward statistics, the probe set, the reservoir, the update index and the env steps;
every random draw of update u derives from (seed, u). The emulators cannot be saved, so a resumed run
re-creates its envs seeded with (seed, u) at the update it resumes from (a fresh run seeds them with
(seed, 0)): resume is exact up to the environment state, and episodes that were running are lost.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from atari_pb.config import to_dict
from atari_pb.core.checkpoint import kept_note, load_checkpoint, same_run, save_checkpoint
from atari_pb.core.device import pick_device
from atari_pb.core.episodes import EpisodeTracker
from atari_pb.core.writer import METRICS, RunWriter
from atari_pb.envs.atari import make_vector_env, num_actions
from atari_pb.errors import DataError, UsageError
from atari_pb.games import Game
from atari_pb.prend.config import PrendConfig, check
from atari_pb.prend.diagnostics import Reservoir, collect_probes, knn_novelty, pearson, spearman, write_plots
from atari_pb.prend.intrinsic import (
    IntrinsicReward,
    RewardNormalizer,
    build_intrinsic,
    default_predictor_lr_scale,
    mode_of,
    predictor_lr_scale,
)
from atari_pb.prend.ppo import Batch, PolicyNet, gae, make_optimizer, ppo_update

log = logging.getLogger(__name__)

KIND = "prend"
CHECKPOINT = "checkpoint.pt"
# what a resumed run must share with its checkpoint; the budget, the intervals and the device may change
CHECKED_SECTIONS = ("intrinsic", "ppo", "env", "diagnostics")
CHECKED_KEYS = ("train.seed",)
MODE_NAMES = {"rnd": "RND", "prend": "PreND", "none": "PPO"}
RND_STATS_BATCH = 1024  # frames per update of RND's frame statistics during the warm-up


def derive_seed(*keys: int) -> int:
    """A 31-bit seed from a tuple of integers (seed, update, stream)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0] & 0x7FFFFFFF)


def next_observations(obs_buf: torch.Tensor, finals: dict[tuple[int, int], np.ndarray]) -> torch.Tensor:
    """The observation each transition of a rollout reached: obs_buf (T + 1, N, ...) holds what the agent
    saw at steps 0..T, where, with same-step autoreset, the observation after an episode's last step is
    the next episode's first; finals[(t, i)] is the real last observation of env i's episode that ended
    with step t (info["final_obs"]). Returns (T, N, ...)."""
    out = obs_buf[1:].clone()
    for (t, i), final in finals.items():
        out[t, i] = torch.from_numpy(final)
    return out


def default_out(game: Game, encoder: str) -> Path:
    return Path("runs/prend") / f"{game.name}-{mode_of(encoder)}"


def resolve_config(cfg: PrendConfig, mode: str) -> PrendConfig:
    """`cfg` with a null predictor_lr_scale replaced by the value `mode` runs at, so that config.yaml, the
    checkpoint and the "same run?" check all see what actually ran."""
    scale = predictor_lr_scale(cfg.intrinsic, mode)
    return replace(cfg, intrinsic=replace(cfg.intrinsic, predictor_lr_scale=scale))


def _resolve_saved_config(config: dict[str, Any], mode: str) -> dict[str, Any]:
    """The same resolution for a checkpoint's config (plain containers), which may hold a null."""
    if config["intrinsic"].get("predictor_lr_scale") is not None:
        return config
    intrinsic = {**config["intrinsic"], "predictor_lr_scale": default_predictor_lr_scale(mode)}
    return {**config, "intrinsic": intrinsic}


# -------------------------------------------------------------------------------------------- run state
@dataclass
class Rollout:
    """One update's experience, (T, N) per field; `obs` holds the T + 1 observations the agent saw."""

    obs: torch.Tensor  # uint8 (T + 1, N, F, 84, 84)
    actions: torch.Tensor
    logprobs: torch.Tensor
    values_ext: torch.Tensor
    values_int: torch.Tensor
    rewards_ext: torch.Tensor  # sign-clipped unless ppo.clip_ext_reward is off
    dones: torch.Tensor  # 1 where an episode ended with the step
    finals: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)  # (step, env): last observation
    truncated: list[tuple[int, int]] = field(default_factory=list)  # (step, env) cut by the time limit

    @classmethod
    def empty(cls, steps: int, num_envs: int, frames: int) -> Rollout:
        def per_step() -> torch.Tensor:
            return torch.empty((steps, num_envs))

        return cls(
            obs=torch.empty((steps + 1, num_envs, frames, 84, 84), dtype=torch.uint8),
            actions=torch.empty((steps, num_envs), dtype=torch.long),
            logprobs=per_step(),
            values_ext=per_step(),
            values_int=per_step(),
            rewards_ext=torch.zeros((steps, num_envs)),
            dones=torch.zeros((steps, num_envs)),
        )

    @property
    def steps(self) -> int:
        return self.actions.shape[0]

    def next_frames(self) -> torch.Tensor:
        """uint8 (T * N, F, 84, 84): the observation each transition reached."""
        return next_observations(self.obs, self.finals).flatten(0, 1)


@dataclass
class PrendRun:
    """Everything a run carries from one update to the next."""

    game: Game
    encoder: str
    mode: str
    out: Path
    cfg: PrendConfig  # resolved (resolve_config)
    device: torch.device
    policy: PolicyNet
    intrinsic: IntrinsicReward | None  # None: PPO on the game's reward alone
    optimizer: torch.optim.Optimizer
    reward_norm: RewardNormalizer
    reservoir: Reservoir | None
    total_updates: int
    start: int = 0  # the first update this process runs
    env_steps: int = 0
    episodes: int = 0
    probes: torch.Tensor | None = None
    probe_inputs: torch.Tensor | None = None  # cached when the intrinsic inputs depend on the frames alone
    env: Any = None
    obs: np.ndarray | None = None
    tracker: EpisodeTracker | None = None
    window: list[tuple[float, int]] = field(default_factory=list)  # (return, length) since the last log

    @property
    def checkpoint_path(self) -> Path:
        return self.out / CHECKPOINT

    @property
    def batch_steps(self) -> int:
        return self.cfg.ppo.num_envs * self.cfg.ppo.num_steps

    def diagnostics_due(self, update: int) -> bool:
        done = update + 1
        every = self.cfg.diagnostics.every
        return self.intrinsic is not None and (
            done % every == 0 or update == self.start or done == self.total_updates
        )

    def checkpoint_due(self, update: int) -> bool:
        done = update + 1
        return done % self.cfg.train.save_every == 0 or done == self.total_updates

    def log_due(self, update: int, diagnosed: bool) -> bool:
        return (update + 1) % self.cfg.train.log_every == 0 or diagnosed or self.checkpoint_due(update)


class Laps:
    """Seconds between successive `lap` calls, by name."""

    def __init__(self) -> None:
        self.last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name], self.last = now - self.last, now


# ------------------------------------------------------------------------------------- before training
def setup(game: Game, encoder: str, out: Path, cfg: PrendConfig, resume: bool) -> PrendRun:
    """Refuse a bad request before anything is written, then build the run's networks (torch's global
    generator seeded with train.seed)."""
    check(cfg)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a run directory")
    checkpoint_path = out / CHECKPOINT
    if not resume and checkpoint_path.exists():
        raise UsageError(f"{out} already holds a run; continue it with --resume or choose another --out")
    if resume and not checkpoint_path.exists():
        raise UsageError(f"--resume: {checkpoint_path} does not exist")
    mode = mode_of(encoder)
    cfg = resolve_config(cfg, mode)
    p, ic = cfg.ppo, cfg.intrinsic
    device = pick_device(cfg.train.device, "train.device")

    torch.manual_seed(cfg.train.seed)
    intrinsic = build_intrinsic(encoder, game, cfg.env.frames, ic, device)
    policy = PolicyNet(cfg.env.frames, num_actions(game, cfg.env.action_set)).to(device)
    return PrendRun(
        game=game,
        encoder=encoder,
        mode=mode,
        out=out,
        cfg=cfg,
        device=device,
        policy=policy,
        intrinsic=intrinsic,
        optimizer=make_optimizer(policy, intrinsic, p, predictor_lr_scale(ic, mode)),
        reward_norm=RewardNormalizer(p.num_envs, p.gamma_int).to(device),
        reservoir=Reservoir(cfg.diagnostics.reservoir, intrinsic.out_dim) if intrinsic is not None else None,
        total_updates=math.ceil(cfg.train.env_steps / (p.num_envs * p.num_steps)),
    )


def check_same_run(saved: dict[str, Any], run: PrendRun) -> None:
    """A checkpoint continues only the run it came from: its game, its mode, its settings."""
    path = run.checkpoint_path
    if saved["game"] != run.game.name:
        raise UsageError(
            f"{path}: the run plays {saved['game']}, not {run.game.name}; resume with --game {saved['game']}"
        )
    if saved["mode"] != run.mode:
        raise UsageError(f"{path}: the run is {saved['mode']} (--encoder {saved['encoder']}), not {run.mode}")
    if saved["encoder"] != run.encoder:
        log.warning(
            "resuming with the checkpoint's copy of %s (the run's encoder), not %s",
            saved["encoder"],
            run.encoder,
        )
    saved_config = _resolve_saved_config(saved["config"], saved["mode"])
    same_run(path, saved_config, to_dict(run.cfg), CHECKED_SECTIONS, CHECKED_KEYS)


def resume_from(run: PrendRun) -> None:
    """Load the checkpoint's state into `run`, which it must continue."""
    saved = load_checkpoint(run.checkpoint_path, KIND)
    check_same_run(saved, run)
    run.policy.load_state_dict(saved["policy"])
    if run.intrinsic is not None:
        run.intrinsic.load_state_dict(saved["intrinsic"])
        run.reservoir.load_state_dict(saved["reservoir"])
        run.probes = saved["probes"]
    run.optimizer.load_state_dict(saved["optimizer"])
    run.reward_norm.load_state_dict(saved["reward_norm"])
    run.start, run.env_steps, run.episodes = saved["update"], saved["env_steps"], saved["episodes"]
    log.info(
        "resuming %s at update %d (%d env steps) of %d", run.out, run.start, run.env_steps, run.total_updates
    )


def start_envs(run: PrendRun) -> None:
    """The vector env, seeded by (seed, first update): a resumed run cannot restore the emulators."""
    n = run.cfg.ppo.num_envs
    run.env, run.obs = make_vector_env(
        run.game, n, run.cfg.env, derive_seed(run.cfg.train.seed, run.start, 0)
    )
    run.tracker = EpisodeTracker(n)


def warm_up(run: PrendRun, fresh: bool) -> None:
    """A fresh run's probe set and RND frame statistics; the probe set's inputs when they can be cached."""
    if run.intrinsic is None:
        return
    if fresh:
        d = run.cfg.diagnostics
        run.probes = collect_probes(run.game, run.cfg.env, d.probe_size, d.probe_seed, d.probe_stride)
        if run.intrinsic.mode == "rnd":
            init_frame_statistics(run)
    if run.intrinsic.fixed_inputs:
        run.probe_inputs = run.intrinsic.inputs(run.probes)  # a frozen backbone's features: computed once


def init_frame_statistics(run: PrendRun) -> None:
    """RND initialises its frame statistics from a random agent before training starts. Its steps are part
    of the episodes' scores but not of the run's env steps, and no episode that ends here is logged."""
    n, init_steps = run.cfg.ppo.num_envs, run.cfg.intrinsic.obs_norm_init_steps
    rng = np.random.default_rng(derive_seed(run.cfg.train.seed, 0, 1))
    seen: list[np.ndarray] = []
    for _ in range(init_steps):
        run.obs, reward, terminated, truncated, _ = run.env.step(
            rng.integers(run.env.single_action_space.n, size=n)
        )
        seen.append(run.obs[:, -1:].copy())
        run.tracker.step(reward, terminated | truncated)
        if len(seen) * n >= RND_STATS_BATCH:
            run.intrinsic.update_obs_stats(torch.from_numpy(np.concatenate(seen)))
            seen = []
    if seen:
        run.intrinsic.update_obs_stats(torch.from_numpy(np.concatenate(seen)))
    log.info("RND: frame statistics from %d random-agent steps", init_steps * n)


# ----------------------------------------------------------------------------------------- each update
def rollout(run: PrendRun, generator: torch.Generator) -> Rollout:
    """ppo.num_steps steps of every env, actions sampled from the policy with `generator`."""
    p = run.cfg.ppo
    batch = Rollout.empty(p.num_steps, p.num_envs, run.cfg.env.frames)
    for step in range(p.num_steps):
        batch.obs[step] = torch.from_numpy(run.obs)
        with torch.no_grad():
            logits, v_ext, v_int = run.policy(batch.obs[step].to(run.device))
            logp_all = F.log_softmax(logits.float().cpu(), -1)
            action = torch.multinomial(logp_all.exp(), 1, generator=generator).squeeze(1)
        batch.actions[step] = action
        batch.logprobs[step] = logp_all.gather(1, action[:, None]).squeeze(1)
        batch.values_ext[step], batch.values_int[step] = v_ext.cpu(), v_int.cpu()
        run.obs, reward, terminated, truncated, info = run.env.step(action.numpy())
        record_step(run, batch, step, reward, terminated, truncated, info)
    batch.obs[p.num_steps] = torch.from_numpy(run.obs)
    run.env_steps += run.batch_steps
    return batch


def record_step(
    run: PrendRun,
    batch: Rollout,
    step: int,
    reward: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    info: dict[str, Any],
) -> None:
    """The env's answer to a step: rewards, episode ends, final observations, the episodes that finished."""
    if not np.array_equal(info["env_id"], np.arange(len(reward))):
        raise RuntimeError(f"the vector env returned envs {info['env_id']} out of order")
    ended = terminated | truncated
    batch.rewards_ext[step] = torch.from_numpy(np.sign(reward) if run.cfg.ppo.clip_ext_reward else reward)
    batch.dones[step] = torch.from_numpy(ended.astype(np.float32))
    for i in np.flatnonzero(ended):
        batch.finals[(step, i)] = info["final_obs"][i].copy()
        if truncated[i] and not terminated[i]:
            batch.truncated.append((step, i))
    for _, episode_return, length in run.tracker.step(reward, ended):
        run.window.append((episode_return, length))
        run.episodes += 1


def intrinsic_rewards(
    run: PrendRun, batch: Rollout, rng: np.random.Generator, update: int
) -> tuple[dict[str, float], torch.Tensor | None, torch.Tensor]:
    """(metrics, the predictor's inputs for the next observations, normalised intrinsic rewards (T, N));
    zero rewards and no inputs without an intrinsic reward. `rng` samples the reservoir."""
    shape = batch.rewards_ext.shape
    if run.intrinsic is None:
        return {}, None, torch.zeros(shape)
    next_frames = batch.next_frames()
    run.intrinsic.update_obs_stats(next_frames)  # RND: before the inputs, so both use the same stats
    inputs = run.intrinsic.inputs(next_frames)
    raw, targets = run.intrinsic.reward(inputs)
    if not torch.isfinite(raw).all():
        raise DataError(
            f"{run.mode} intrinsic reward is not finite at env step {run.env_steps} (update {update + 1}, "
            f"{int((~torch.isfinite(raw)).sum())} of {raw.numel()} rewards); "
            + kept_note(run.checkpoint_path, "env_steps")
        )
    run.reservoir.add(targets, rng)
    raw = raw.cpu().view(shape)
    rewards = run.reward_norm.normalize(raw.to(run.device)).cpu()
    values = {
        "intrinsic/raw_mean": raw.mean().item(),
        "intrinsic/raw_var": raw.var(unbiased=False).item(),
        "intrinsic/norm_mean": rewards.mean().item(),
        "intrinsic/norm_var": rewards.var(unbiased=False).item(),
        "intrinsic/return_std": run.reward_norm.rms.std.item(),
    }
    return values, inputs, rewards


def returns_and_advantages(
    run: PrendRun, batch: Rollout, rewards_int: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(combined advantages, extrinsic returns, intrinsic returns), each (T, N)."""
    p = run.cfg.ppo
    rewards_ext = batch.rewards_ext.clone()
    with torch.no_grad():
        _, last_ext, last_int = run.policy(batch.obs[batch.steps].to(run.device))
        if batch.truncated:
            # a time limit is no terminal state: bootstrap from the state the episode was cut at
            cut = torch.stack([torch.from_numpy(batch.finals[k]) for k in batch.truncated]).to(run.device)
            cut_values = run.policy(cut)[1].cpu()
            for (step, i), value in zip(batch.truncated, cut_values):
                rewards_ext[step, i] += p.gamma_ext * value
    adv_ext, ret_ext = gae(
        rewards_ext, batch.values_ext, last_ext.cpu(), batch.dones, p.gamma_ext, p.gae_lambda
    )
    never_done = torch.zeros_like(batch.dones)  # intrinsic returns run across episode ends
    adv_int, ret_int = gae(
        rewards_int, batch.values_int, last_int.cpu(), never_done, p.gamma_int, p.gae_lambda
    )
    advantages = p.ext_coef * adv_ext + (p.int_coef * adv_int if run.intrinsic is not None else 0.0)
    return advantages, ret_ext, ret_int


def ppo_epochs(
    run: PrendRun,
    batch: Rollout,
    advantages: torch.Tensor,
    returns_ext: torch.Tensor,
    returns_int: torch.Tensor,
    intrinsic_inputs: torch.Tensor | None,
    generator: torch.Generator,
) -> dict[str, float]:
    """PPO's epochs over the rollout, the predictor trained alongside; `generator` orders the minibatches and
    picks the predictor's share of each."""
    flat = Batch(
        obs=batch.obs[: batch.steps].flatten(0, 1).to(run.device),
        actions=batch.actions.reshape(-1).to(run.device),
        logprobs=batch.logprobs.reshape(-1).to(run.device),
        advantages=advantages.reshape(-1).to(run.device),
        returns_ext=returns_ext.reshape(-1).to(run.device),
        returns_int=returns_int.reshape(-1).to(run.device),
        intrinsic_inputs=intrinsic_inputs,
    )
    return ppo_update(
        run.policy,
        run.intrinsic,
        run.optimizer,
        flat,
        run.cfg.ppo,
        run.cfg.intrinsic.update_proportion,
        generator,
    )


def probe_diagnostics(run: PrendRun) -> dict[str, float]:
    """The probe set's intrinsic rewards against its k-NN novelty among the reservoir's target embeddings."""
    inputs = run.probe_inputs if run.probe_inputs is not None else run.intrinsic.inputs(run.probes)
    probe_rewards, probe_targets = run.intrinsic.reward(inputs)
    size = run.reservoir.size
    novelty = knn_novelty(probe_targets.cpu(), run.reservoir.data[:size], run.cfg.diagnostics.knn).numpy()
    rewards = probe_rewards.cpu().double().numpy()
    return {
        "diag/pearson": pearson(rewards, novelty),
        "diag/spearman": spearman(rewards, novelty),
        "diag/probe_reward_mean": float(rewards.mean()),
        "diag/probe_reward_var": float(rewards.var()),
        "diag/novelty_mean": float(novelty.mean()),
        "diag/reservoir": float(size),
    }


def log_metrics(
    run: PrendRun, writer: RunWriter, bar: tqdm, values: dict[str, float], laps: Laps, update: int
) -> None:
    """One metrics line (finite values only) with the episodes that ended since the last one."""
    if run.window:
        returns, lengths = zip(*run.window)
        values["episode_return"] = float(np.mean(returns))
        values["episode_length"] = float(np.mean(lengths))
    values.update(
        {
            "update": float(update + 1),
            "episodes": float(run.episodes),
            "time/steps_per_s": run.batch_steps / sum(laps.seconds.values()),
            "time/rollout_s": laps.seconds["rollout"],
            "time/intrinsic_s": laps.seconds["intrinsic"],
            "time/update_s": laps.seconds["update"],
        }
    )
    finite = {k: v for k, v in values.items() if math.isfinite(v)}
    writer.metrics(run.env_steps, finite)
    bar.set_postfix(
        ret=f"{finite['episode_return']:.1f}" if "episode_return" in finite else "-",
        r_int=f"{finite.get('intrinsic/raw_mean', 0.0):.3g}",
        corr=f"{finite['diag/spearman']:.2f}" if "diag/spearman" in finite else "-",
    )
    run.window.clear()


def save(run: PrendRun, update: int) -> None:
    """checkpoint.pt after `update`, then the plots re-drawn from metrics.jsonl."""
    save_checkpoint(
        run.checkpoint_path,
        KIND,
        {
            "game": run.game.name,
            "encoder": run.encoder,
            "mode": run.mode,
            "config": to_dict(run.cfg),
            "update": update + 1,
            "env_steps": run.env_steps,
            "episodes": run.episodes,
            "policy": run.policy.state_dict(),
            "intrinsic": run.intrinsic.state_dict() if run.intrinsic is not None else None,
            "optimizer": run.optimizer.state_dict(),
            "reward_norm": run.reward_norm.state_dict(),
            "probes": run.probes,
            "reservoir": run.reservoir.state_dict() if run.reservoir is not None else None,
        },
    )
    write_plots(run.out / METRICS, run.out, f"{run.game.name} {MODE_NAMES[run.mode]}")


# ---------------------------------------------------------------------------------------------- the run
def train_prend(
    game: Game, encoder: str, out: Path, cfg: PrendConfig, resume: bool = False, progress: bool = True
) -> Path:
    """Run (or continue) PPO with the intrinsic reward `encoder` names (an encoder file: PreND; `random`:
    RND; `none`: no intrinsic reward) on `game` for cfg.train.env_steps agent steps. Returns `out`."""
    run = setup(game, encoder, Path(out), cfg, resume)
    if resume:
        resume_from(run)
    writer = RunWriter(run.out, resume_step=run.env_steps if resume else None)
    writer.config(run.cfg, f"atari-pb prend --encoder {encoder} --game {game.name}")
    if run.start >= run.total_updates:
        log.info(
            "%s: %d env steps already done (train.env_steps=%d)", out, run.env_steps, cfg.train.env_steps
        )
        writer.close()
        return run.out

    bar = tqdm(
        total=run.total_updates * run.batch_steps,
        initial=run.env_steps,
        unit="step",
        desc=f"prend {run.mode} {game.name}",
        disable=None if progress else True,
    )
    try:
        start_envs(run)
        warm_up(run, fresh=not resume)
        for update in range(run.start, run.total_updates):
            reservoir_rng = np.random.default_rng(derive_seed(cfg.train.seed, update, 2))
            # actions, minibatch order and the predictor's share of each minibatch
            generator = torch.Generator().manual_seed(derive_seed(cfg.train.seed, update, 3))
            laps = Laps()
            batch = rollout(run, generator)
            laps.lap("rollout")
            values, intrinsic_inputs, rewards_int = intrinsic_rewards(run, batch, reservoir_rng, update)
            laps.lap("intrinsic")
            advantages, returns_ext, returns_int = returns_and_advantages(run, batch, rewards_int)
            values.update(
                ppo_epochs(run, batch, advantages, returns_ext, returns_int, intrinsic_inputs, generator)
            )
            laps.lap("update")
            diagnosed = run.diagnostics_due(update)
            if diagnosed:
                values.update(probe_diagnostics(run))
            if run.log_due(update, diagnosed):
                log_metrics(run, writer, bar, values, laps, update)
            if run.checkpoint_due(update):
                save(run, update)
            bar.update(run.batch_steps)
    finally:
        bar.close()
        if run.env is not None:
            run.env.close()
        writer.close()
    log.info(
        "prend %s %s: %d env steps, %d episodes; run in %s",
        run.mode,
        game.name,
        run.env_steps,
        run.episodes,
        out,
    )
    return run.out
