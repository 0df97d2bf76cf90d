"""`atari-pb prend`: PPO exploration with an RND or PreND intrinsic reward, read top to bottom.

    fresh run: RND's frame statistics from random-agent steps (not counted as env steps); the probe set
    every update u (rollout of ppo.num_steps x ppo.num_envs agent steps):
        act: policy samples with a generator seeded by (seed, u)
        next observations (info["final_obs"] where an episode ended: the transition into the terminal
        state is rewarded for the state it reached, not for the next episode's first frame)
        -> [RND: frame statistics] -> intrinsic inputs, once -> raw intrinsic rewards (stop if not finite)
        -> reservoir of target embeddings -> rewards / running std of intrinsic returns
        -> GAE: extrinsic episodic (sign-clipped rewards), intrinsic non-episodic -> A = 2 A_ext + 1 A_int
        -> PPO epochs, the predictor trained on a quarter of each minibatch
        -> metrics.jsonl / TensorBoard; diagnostics every `diagnostics.every` updates
        -> checkpoint.pt (atomic) every `train.save_every` updates, and the PNG plots

Run directory: config.yaml, metrics.jsonl, tb/, checkpoint.pt, intrinsic_reward.png, correlation.png,
episode_return.png.

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
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from tqdm import tqdm

from atari_pb.config import to_dict
from atari_pb.distributed import DistInfo
from atari_pb.envs.atari import make_vector_env, num_actions
from atari_pb.errors import DataError, UsageError
from atari_pb.games import Game
from atari_pb.prend.config import PrendConfig, check
from atari_pb.prend.diagnostics import Reservoir, collect_probes, knn_novelty, pearson, spearman, write_plots
from atari_pb.prend.intrinsic import RewardNormalizer, build_intrinsic, mode_of, predictor_lr_scale
from atari_pb.prend.ppo import Batch, PolicyNet, gae, make_optimizer, ppo_update
from atari_pb.pretrain.checkpoint import kept_note, load_checkpoint, save_checkpoint
from atari_pb.pretrain.runner import CHECKPOINT, METRICS, RunWriter, pick_device

log = logging.getLogger(__name__)

KIND = "prend"
CHECKED_SECTIONS = ("intrinsic", "ppo", "env", "diagnostics")
MODE_NAMES = {"rnd": "RND", "prend": "PreND", "none": "PPO"}


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


def _same_run(saved: dict, cfg: PrendConfig, game: Game, encoder: str, path: Path) -> None:
    """A checkpoint continues only the run it came from."""
    if saved.get("kind") != KIND:
        raise UsageError(f"{path} is not a prend checkpoint")
    if saved["game"] != game.name:
        raise UsageError(
            f"{path}: the run plays {saved['game']}, not {game.name}; resume with --game {saved['game']}"
        )
    if saved["mode"] != mode_of(encoder):
        raise UsageError(
            f"{path}: the run is {saved['mode']} (--encoder {saved['encoder']}), not {mode_of(encoder)}"
        )
    if saved["encoder"] != encoder:
        log.warning(
            "resuming with the checkpoint's copy of %s (the run's encoder), not %s", saved["encoder"], encoder
        )
    now = to_dict(cfg)
    for section in CHECKED_SECTIONS:
        if saved["config"][section] != now[section]:
            raise UsageError(
                f"{path}: the run was made with {section}={saved['config'][section]}, not {now[section]}"
            )
    if saved["config"]["train"]["seed"] != cfg.train.seed:
        raise UsageError(f"{path}: the run was made with train.seed={saved['config']['train']['seed']}")


def train_prend(
    game: Game, encoder: str, out: Path, cfg: PrendConfig, resume: bool = False, progress: bool = True
) -> Path:
    """Run (or continue) PPO with the intrinsic reward `encoder` names (an encoder file: PreND; `random`:
    RND; `none`: no intrinsic reward) on `game` for cfg.train.env_steps agent steps. Returns `out`."""
    check(cfg)
    p, t, d, ic = cfg.ppo, cfg.train, cfg.diagnostics, cfg.intrinsic
    out = Path(out)
    mode = mode_of(encoder)
    checkpoint_path = out / CHECKPOINT
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a run directory")
    if not resume and checkpoint_path.exists():
        raise UsageError(f"{out} already holds a run; continue it with --resume or choose another --out")
    if resume and not checkpoint_path.exists():
        raise UsageError(f"--resume: {checkpoint_path} does not exist")
    device = pick_device(t.device)

    # everything that can refuse the request does so before anything is written
    torch.manual_seed(t.seed)
    intrinsic = build_intrinsic(encoder, game, cfg.env.frames, ic, device)
    policy = PolicyNet(cfg.env.frames, num_actions(game)).to(device)
    optimizer = make_optimizer(policy, intrinsic, p, predictor_lr_scale(ic, mode))
    reward_norm = RewardNormalizer(p.num_envs, p.gamma_int).to(device)
    reservoir = Reservoir(d.reservoir, intrinsic.out_dim) if intrinsic is not None else None
    batch_steps = p.num_envs * p.num_steps
    total_updates = math.ceil(t.env_steps / batch_steps)

    start, env_steps, episodes, probes = 0, 0, 0, None
    if resume:
        saved = load_checkpoint(checkpoint_path)
        _same_run(saved, cfg, game, encoder, checkpoint_path)
        policy.load_state_dict(saved["policy"])
        if intrinsic is not None:
            intrinsic.load_state_dict(saved["intrinsic"])
            reservoir.load_state_dict(saved["reservoir"])
            probes = saved["probes"]
        optimizer.load_state_dict(saved["optimizer"])
        reward_norm.load_state_dict(saved["reward_norm"])
        start, env_steps, episodes = saved["update"], saved["env_steps"], saved["episodes"]
        log.info("resuming %s at update %d (%d env steps) of %d", out, start, env_steps, total_updates)
    writer = RunWriter(out, DistInfo(), env_steps if resume else None)
    (out / "config.yaml").write_text(
        f"# atari-pb prend --encoder {encoder} --game {game.name}\n"
        + OmegaConf.to_yaml(OmegaConf.structured(cfg))
    )
    if start >= total_updates:
        log.info("%s: %d env steps already done (train.env_steps=%d)", out, env_steps, t.env_steps)
        writer.close()
        return out

    env, obs = make_vector_env(game, p.num_envs, cfg.env, derive_seed(t.seed, start, 0))
    n, steps_per_env, frames = p.num_envs, p.num_steps, cfg.env.frames
    running_return, running_length = np.zeros(n), np.zeros(n, dtype=np.int64)
    window_returns: list[float] = []
    window_lengths: list[int] = []
    probe_inputs = None

    def save(update: int) -> None:
        save_checkpoint(
            checkpoint_path,
            {
                "kind": KIND,
                "game": game.name,
                "encoder": encoder,
                "mode": mode,
                "config": to_dict(cfg),
                "update": update,
                "env_steps": env_steps,
                "episodes": episodes,
                "policy": policy.state_dict(),
                "intrinsic": intrinsic.state_dict() if intrinsic is not None else None,
                "optimizer": optimizer.state_dict(),
                "reward_norm": reward_norm.state_dict(),
                "probes": probes,
                "reservoir": reservoir.state_dict() if reservoir is not None else None,
            },
        )
        write_plots(out / METRICS, out, f"{game.name} {MODE_NAMES[mode]}")

    bar = tqdm(
        total=total_updates * batch_steps,
        initial=env_steps,
        unit="step",
        desc=f"prend {mode} {game.name}",
        disable=None if progress else True,
    )
    try:
        if intrinsic is not None and not resume:
            probes = collect_probes(game, cfg.env, d.probe_size, d.probe_seed, d.probe_stride)
            if intrinsic.mode == "rnd":
                # RND initialises its frame statistics from a random agent before training starts
                init_rng = np.random.default_rng(derive_seed(t.seed, 0, 1))
                seen = []
                for _ in range(ic.obs_norm_init_steps):
                    obs, reward, terminated, trunc, _ = env.step(
                        init_rng.integers(env.single_action_space.n, size=n)
                    )
                    seen.append(obs[:, -1:].copy())
                    running_return += reward  # these steps are part of the episodes' scores
                    running_length += 1
                    running_return[terminated | trunc], running_length[terminated | trunc] = 0.0, 0
                    if len(seen) * n >= 1024:
                        intrinsic.update_obs_stats(torch.from_numpy(np.concatenate(seen)))
                        seen = []
                if seen:
                    intrinsic.update_obs_stats(torch.from_numpy(np.concatenate(seen)))
                log.info("RND: frame statistics from %d random-agent steps", ic.obs_norm_init_steps * n)
        if intrinsic is not None and intrinsic.fixed_inputs:
            probe_inputs = intrinsic.inputs(probes)  # a frozen backbone's features: computed once

        for update in range(start, total_updates):
            t_start = time.perf_counter()
            rng = np.random.default_rng(derive_seed(t.seed, update, 2))
            gen = torch.Generator().manual_seed(derive_seed(t.seed, update, 3))

            # ------------------------------------------------------------------------------ rollout
            obs_buf = torch.empty((steps_per_env + 1, n, frames, 84, 84), dtype=torch.uint8)
            actions = torch.empty((steps_per_env, n), dtype=torch.long)
            logprobs = torch.empty((steps_per_env, n))
            values_ext = torch.empty((steps_per_env, n))
            values_int = torch.empty((steps_per_env, n))
            rewards_ext = torch.zeros((steps_per_env, n))
            dones = torch.zeros((steps_per_env, n))
            finals: dict[tuple[int, int], np.ndarray] = {}
            truncated: list[tuple[int, int]] = []
            for step in range(steps_per_env):
                obs_buf[step] = torch.from_numpy(obs)
                with torch.no_grad():
                    logits, v_ext, v_int = policy(obs_buf[step].to(device))
                    logp_all = F.log_softmax(logits.float().cpu(), -1)
                    action = torch.multinomial(logp_all.exp(), 1, generator=gen).squeeze(1)
                actions[step] = action
                logprobs[step] = logp_all.gather(1, action[:, None]).squeeze(1)
                values_ext[step], values_int[step] = v_ext.cpu(), v_int.cpu()

                obs, reward, terminated, trunc, info = env.step(action.numpy())
                if not np.array_equal(info["env_id"], np.arange(n)):
                    raise RuntimeError(f"the vector env returned envs {info['env_id']} out of order")
                ended = terminated | trunc
                rewards_ext[step] = torch.from_numpy(np.sign(reward) if p.clip_ext_reward else reward)
                dones[step] = torch.from_numpy(ended.astype(np.float32))
                for i in np.flatnonzero(ended):
                    finals[(step, i)] = info["final_obs"][i].copy()
                    if trunc[i] and not terminated[i]:
                        truncated.append((step, i))
                running_return += reward
                running_length += 1
                for i in np.flatnonzero(ended):
                    window_returns.append(float(running_return[i]))
                    window_lengths.append(int(running_length[i]))
                    episodes += 1
                running_return[ended], running_length[ended] = 0.0, 0
            obs_buf[steps_per_env] = torch.from_numpy(obs)
            env_steps += batch_steps
            next_flat = next_observations(obs_buf, finals).view(-1, frames, 84, 84)
            t_rollout = time.perf_counter()

            # ---------------------------------------------------------------------- intrinsic reward
            values: dict[str, float] = {}
            intrinsic_inputs = None
            rewards_int = torch.zeros((steps_per_env, n))
            if intrinsic is not None:
                intrinsic.update_obs_stats(next_flat)  # RND: before the inputs, so both use the same stats
                intrinsic_inputs = intrinsic.inputs(next_flat)
                raw, targets = intrinsic.reward(intrinsic_inputs)
                if not torch.isfinite(raw).all():
                    raise DataError(
                        f"{mode} intrinsic reward is not finite at env step {env_steps} (update {update + 1}, "
                        f"{int((~torch.isfinite(raw)).sum())} of {raw.numel()} rewards); "
                        + kept_note(checkpoint_path, "env_steps")
                    )
                reservoir.add(targets, rng)
                raw = raw.cpu().view(steps_per_env, n)
                rewards_int = reward_norm.normalize(raw.to(device)).cpu()
                values.update(
                    {
                        "intrinsic/raw_mean": raw.mean().item(),
                        "intrinsic/raw_var": raw.var(unbiased=False).item(),
                        "intrinsic/norm_mean": rewards_int.mean().item(),
                        "intrinsic/norm_var": rewards_int.var(unbiased=False).item(),
                        "intrinsic/return_std": reward_norm.rms.std.item(),
                    }
                )
            t_intrinsic = time.perf_counter()

            # ----------------------------------------------------------------------------- returns
            with torch.no_grad():
                _, last_ext, last_int = policy(obs_buf[steps_per_env].to(device))
                if truncated:
                    # a time limit is no terminal state: bootstrap from the state the episode was cut at
                    cut = torch.stack([torch.from_numpy(finals[k]) for k in truncated]).to(device)
                    cut_values = policy(cut)[1].cpu()
                    for (step, i), v in zip(truncated, cut_values):
                        rewards_ext[step, i] += p.gamma_ext * v
            adv_ext, ret_ext = gae(rewards_ext, values_ext, last_ext.cpu(), dones, p.gamma_ext, p.gae_lambda)
            adv_int, ret_int = gae(
                rewards_int, values_int, last_int.cpu(), torch.zeros_like(dones), p.gamma_int, p.gae_lambda
            )
            advantages = p.ext_coef * adv_ext + (p.int_coef * adv_int if intrinsic is not None else 0.0)

            # --------------------------------------------------------------------------- PPO update
            batch = Batch(
                obs=obs_buf[:steps_per_env].reshape(-1, frames, 84, 84).to(device),
                actions=actions.reshape(-1).to(device),
                logprobs=logprobs.reshape(-1).to(device),
                advantages=advantages.reshape(-1).to(device),
                returns_ext=ret_ext.reshape(-1).to(device),
                returns_int=ret_int.reshape(-1).to(device),
                intrinsic_inputs=intrinsic_inputs,
            )
            values.update(ppo_update(policy, intrinsic, optimizer, batch, p, ic.update_proportion, gen))
            t_update = time.perf_counter()

            # ------------------------------------------------------------------------- diagnostics
            done = update + 1
            diag = intrinsic is not None and (done % d.every == 0 or update == start or done == total_updates)
            if diag:
                inputs = probe_inputs if probe_inputs is not None else intrinsic.inputs(probes)
                probe_rewards, probe_targets = intrinsic.reward(inputs)
                size = reservoir.size
                novelty = knn_novelty(probe_targets.cpu(), reservoir.data[:size], d.knn).numpy()
                r = probe_rewards.cpu().double().numpy()
                values.update(
                    {
                        "diag/pearson": pearson(r, novelty),
                        "diag/spearman": spearman(r, novelty),
                        "diag/probe_reward_mean": float(r.mean()),
                        "diag/probe_reward_var": float(r.var()),
                        "diag/novelty_mean": float(novelty.mean()),
                        "diag/reservoir": float(size),
                    }
                )

            # ------------------------------------------------------------------------------ logging
            checkpoint_due = done % t.save_every == 0 or done == total_updates
            if done % t.log_every == 0 or diag or checkpoint_due:
                if window_returns:
                    values["episode_return"] = float(np.mean(window_returns))
                    values["episode_length"] = float(np.mean(window_lengths))
                values.update(
                    {
                        "update": float(done),
                        "episodes": float(episodes),
                        "time/steps_per_s": batch_steps / (t_update - t_start),
                        "time/rollout_s": t_rollout - t_start,
                        "time/intrinsic_s": t_intrinsic - t_rollout,
                        "time/update_s": t_update - t_intrinsic,
                    }
                )
                values = {k: (v if math.isfinite(v) else None) for k, v in values.items()}
                writer.metrics(env_steps, {k: v for k, v in values.items() if v is not None})
                bar.set_postfix(
                    ret=f"{values['episode_return']:.1f}" if window_returns else "-",
                    r_int=f"{values.get('intrinsic/raw_mean', 0.0):.3g}",
                    corr=f"{values['diag/spearman']:.2f}" if values.get("diag/spearman") is not None else "-",
                )
                window_returns, window_lengths = [], []
            if checkpoint_due:
                save(done)
            bar.update(batch_steps)
    finally:
        bar.close()
        env.close()
        writer.close()
    log.info("prend %s %s: %d env steps, %d episodes; run in %s", mode, game.name, env_steps, episodes, out)
    return out
