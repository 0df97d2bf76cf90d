"""Environment throughput: evaluation rollouts (ale_py's C++ AtariVectorEnv, one batched policy call per
vector step) vs gymnasium's wrapper stack, and vs raw ALE emulation, in agent steps/s (4 frames each).

    .venv/bin/python -m bench.env [--quick] [--steps N] [--rounds N] [--envs 1 16 64] [--torch-threads N]

Rows, all on Pong with the protocol's settings (frame skip 4 + max-pool, 84x84 grayscale, 4-frame stacks,
up to 30 no-ops, no sticky actions), epsilon-greedy at 0.001, every episode cut at the same horizon:
  ours       `atari_pb.eval.rollout.evaluate` on N envs: one policy call on the (N, 4, 84, 84) batch a step;
  gymnasium  gym.make("ALE/Pong-v5", frameskip=1, repeat_action_probability=0) + AtariPreprocessing +
             FrameStackObservation: one env with the policy called on one observation a step, and
             SyncVectorEnv over N of them with one batched policy call a step;
  raw ALE    one ALEInterface, frame_skip=4, random minimal-set actions, no preprocessing, no policy.
Policies: the tiny preset encoder + a linear head (argmax), and a constant action (env cost alone).
Every configuration runs once a round, rounds interleave the rows, the median round is reported.
Results: bench/out/env.json.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from torch import nn

from bench.common import finish, log, machine_info, med, table

GAME = "pong"
EPSILON = 0.001
MAX_HORIZON = 500  # agent steps; Pong can't end sooner with these policies, so every env ends together


def tiny_policy(num_actions: int, game_id: int, device: str = "cpu"):
    """The tiny preset encoder + a linear head: a stand-in for a fine-tuned agent's argmax."""
    from atari_pb.models.encoder import Encoder, ModelConfig

    torch.manual_seed(0)
    enc = Encoder(ModelConfig(preset="tiny")).eval().requires_grad_(False).to(device)
    head = nn.Linear(enc.out_dim, num_actions).requires_grad_(False).to(device)

    def policy(obs: torch.Tensor) -> torch.Tensor:
        obs = obs.to(device)
        return (
            head(enc(obs, torch.full((len(obs),), game_id, dtype=torch.long, device=device))).argmax(1).cpu()
        )

    return policy


def constant_policy(obs: torch.Tensor) -> torch.Tensor:
    return torch.zeros(len(obs), dtype=torch.long)


def horizon_for(steps: int, n: int) -> tuple[int, int]:
    """(horizon, episodes per env) so that n envs take about `steps` agent steps in all."""
    h = min(MAX_HORIZON, max(50, steps // n))
    return h, max(1, round(steps / (n * h)))


def run_ours(policy, n: int, steps: int, threads: int, device: str) -> tuple[float, dict]:
    from atari_pb.envs.atari import EnvConfig
    from atari_pb.eval.rollout import evaluate

    in_policy = [0.0]

    def timed_policy(obs: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        out = policy(obs)
        in_policy[0] += time.perf_counter() - t0
        return out

    h, per_env = horizon_for(steps, n)
    r = evaluate(
        timed_policy,
        GAME,
        episodes=n * per_env,
        num_envs=n,
        epsilon=EPSILON,
        env=EnvConfig(horizon=h),
        num_threads=min(n, threads),
        device=device,
    )
    assert (r.lengths == h).all(), "an episode ended before the horizon: the timed work is not n x horizon"
    loop = r.seconds - r.setup_seconds
    return r.steps / loop, {
        "steps": r.steps,
        "horizon": h,
        "setup_s": r.setup_seconds,
        "policy_share": in_policy[0] / loop,
    }


def gym_env(horizon: int):
    import ale_py
    import gymnasium as gym
    from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

    gym.register_envs(ale_py)
    env = gym.make(
        "ALE/Pong-v5", frameskip=1, repeat_action_probability=0.0, max_episode_steps=4 * horizon
    )  # the time limit counts emulator frames here (frameskip=1)
    env = AtariPreprocessing(
        env, noop_max=30, frame_skip=4, screen_size=84, terminal_on_life_loss=False, grayscale_obs=True
    )
    return FrameStackObservation(env, 4)


def run_gym_single(policy, steps: int, num_actions: int) -> tuple[float, dict]:
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    env = gym_env(MAX_HORIZON)
    obs, _ = env.reset(seed=0)
    t1 = time.perf_counter()
    with torch.no_grad():
        for _ in range(steps):
            if rng.random() < EPSILON:
                a = int(rng.integers(num_actions))
            else:
                a = int(policy(torch.from_numpy(np.asarray(obs))[None])[0])
            obs, _, term, trunc, _ = env.step(a)
            if term or trunc:
                obs, _ = env.reset()
    seconds = time.perf_counter() - t1
    env.close()
    return steps / seconds, {"steps": steps, "horizon": MAX_HORIZON, "setup_s": t1 - t0}


def run_gym_vector(policy, n: int, steps: int, num_actions: int) -> tuple[float, dict]:
    import gymnasium as gym

    h, per_env = horizon_for(steps, n)
    vsteps = h * per_env
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    env = gym.vector.SyncVectorEnv(
        [lambda: gym_env(h)] * n, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    obs, _ = env.reset(seed=0)
    t1 = time.perf_counter()
    with torch.no_grad():
        for _ in range(vsteps):
            actions = policy(torch.from_numpy(obs)).numpy()
            explore = rng.random(n) < EPSILON
            actions = np.where(explore, rng.integers(0, num_actions, n), actions)
            obs, *_ = env.step(actions)
    seconds = time.perf_counter() - t1
    env.close()
    return n * vsteps / seconds, {"steps": n * vsteps, "horizon": h, "setup_s": t1 - t0}


def run_raw_ale(steps: int) -> tuple[float, dict]:
    from ale_py import ALEInterface, LoggerMode, roms

    ALEInterface.setLoggerMode(LoggerMode.Error)
    ale = ALEInterface()
    ale.setInt("random_seed", 0)
    ale.setFloat("repeat_action_probability", 0.0)
    ale.setInt("frame_skip", 4)
    t0 = time.perf_counter()
    ale.loadROM(roms.get_rom_path(GAME))
    actions = ale.getMinimalActionSet()
    choice = np.random.default_rng(0).integers(0, len(actions), steps)
    t1 = time.perf_counter()
    for i in range(steps):
        ale.act(actions[choice[i]])
        if ale.game_over():
            ale.reset_game()
    return steps / (time.perf_counter() - t1), {"steps": steps, "setup_s": t1 - t0}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer steps, one round")
    p.add_argument("--steps", type=int, help="agent steps per row and round (default 3000; --quick 1000)")
    p.add_argument("--rounds", type=int, help="rounds (default 5; --quick 1)")
    p.add_argument(
        "--envs", type=int, nargs="+", help="env counts of our rows (default 1 16 64; --quick 1 16)"
    )
    p.add_argument("--device", default="cpu", help="where the tiny policy runs (cpu, cuda)")
    p.add_argument("--vector-envs", type=int, default=16, help="envs of the gymnasium SyncVectorEnv rows")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch intra-op threads for every policy (default 1: see the notes)",
    )
    args = p.parse_args(argv)
    q = args.quick
    steps = args.steps or (1000 if q else 3000)
    rounds = args.rounds or (1 if q else 5)
    envs = args.envs or ([1, 16] if q else [1, 16, 64])
    nv = args.vector_envs
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(args.torch_threads)
    try:
        import cv2  # noqa: F401  (gymnasium's AtariPreprocessing resizes with it)
    except ImportError:
        raise SystemExit(
            "bench.env needs opencv-python-headless for the gymnasium baseline: .venv/bin/pip install opencv-python-headless"
        ) from None

    from atari_pb.envs.atari import num_actions
    from atari_pb.games import get_game

    game = get_game(GAME)
    na = num_actions(game)
    policies = {"tiny": tiny_policy(na, game.game_id, args.device), "constant": constant_policy}

    configs: dict[tuple[str, str, int], object] = {}
    for pol_name, pol in policies.items():
        for n in envs:
            configs[("ours", pol_name, n)] = lambda pol=pol, n=n: run_ours(pol, n, steps, cores, args.device)
        configs[("gymnasium", pol_name, 1)] = lambda pol=pol: run_gym_single(pol, steps, na)
        configs[("gymnasium SyncVectorEnv", pol_name, nv)] = lambda pol=pol: run_gym_vector(
            pol, nv, steps, na
        )
    n1 = 16 if 16 in envs else max(envs)  # per-core efficiency: the same envs stepped by one ALE thread
    configs[("ours, 1 ALE thread", "constant", n1)] = lambda: run_ours(
        constant_policy, n1, steps, 1, args.device
    )
    configs[("raw ALE", "random", 1)] = lambda: run_raw_ale(3 * steps)

    t_start = time.perf_counter()
    rates: dict[tuple[str, str, int], list[float]] = {k: [] for k in configs}
    info: dict[tuple[str, str, int], dict] = {}
    setups: dict[tuple[str, str, int], list[float]] = {k: [] for k in configs}
    shares: dict[tuple[str, str, int], list[float]] = {k: [] for k in configs}
    for r in range(rounds):
        for key, fn in configs.items():
            sps, info[key] = fn()
            rates[key].append(sps)
            setups[key].append(info[key]["setup_s"])
            if "policy_share" in info[key]:
                shares[key].append(info[key]["policy_share"])
            log(
                f"round {r + 1}/{rounds} {key[0]} ({key[1]} policy, {key[2]} env(s)): {sps:,.0f} agent steps/s"
            )
    sps = {k: med(v) for k, v in rates.items()}
    setup = {k: med(v) for k, v in setups.items()}

    # policy cost alone, per observation, at the batch sizes used above
    tiny = policies["tiny"]
    policy_ms = {}
    with torch.no_grad():
        for n in sorted({1, nv, *envs}):
            x = torch.randint(0, 256, (n, 4, 84, 84), dtype=torch.uint8)
            tiny(x)  # includes the copy to the device and back, as in the rollouts
            k = max(3, 200 // n)
            policy_ms[n] = med([_timed(lambda x=x: tiny(x)) for _ in range(k)]) * 1e3

    def ratio(a: tuple, b: tuple, scale: float = 1.0) -> float:
        """Median over rounds of the per-round ratio: rows of one round ran minutes apart at most."""
        return med([x / (y * scale) for x, y in zip(rates[a], rates[b])])

    raw_key = ("raw ALE", "random", 1)
    raw = sps[raw_key]
    n_main = 16 if 16 in envs else max(envs)
    ale_threads = min(n_main, cores)
    ours = {pol: ("ours", pol, n_main) for pol in policies}
    gym1 = {pol: ("gymnasium", pol, 1) for pol in policies}
    gymv = {pol: ("gymnasium SyncVectorEnv", pol, nv) for pol in policies}
    rows = [
        [kind, pol, n, info[(kind, pol, n)].get("horizon", "-"), v, v / raw, setup[(kind, pol, n)]]
        for (kind, pol, n), v in sps.items()
    ]
    named = {
        "ours_over_gym_single_tiny": (
            f"ours ({n_main} envs) / gymnasium single env, tiny policy",
            ours["tiny"],
            gym1["tiny"],
        ),
        "ours_over_gym_single_constant": (
            f"ours ({n_main} envs) / gymnasium single env, constant policy",
            ours["constant"],
            gym1["constant"],
        ),
        "ours_tiny_over_raw_ale": (
            f"ours ({n_main} envs, tiny policy) / raw ALE (1 thread)",
            ours["tiny"],
            raw_key,
        ),
        "ours_constant_over_raw_ale": (
            f"ours ({n_main} envs, constant policy) / raw ALE (1 thread)",
            ours["constant"],
            raw_key,
        ),
    }
    for pol in policies:
        if ("ours", pol, nv) in rates:
            named[f"ours_over_gym_vector_{pol}"] = (
                f"ours / gymnasium SyncVectorEnv ({nv} envs each), {pol} policy",
                ("ours", pol, nv),
                gymv[pol],
            )
    values = {k: ratio(a, b) for k, (_, a, b) in named.items()}
    values["ours_constant_over_raw_ale_x_threads"] = ratio(ours["constant"], raw_key, ale_threads)
    values["ours_1_thread_constant_over_raw_ale"] = ratio(("ours, 1 ALE thread", "constant", n1), raw_key)
    ratio_rows = [[label, values[k]] for k, (label, _, _) in named.items()]
    ratio_rows.append(
        [
            f"ours ({n_main} envs, constant policy) / (raw ALE x {ale_threads} ALE threads)",
            values["ours_constant_over_raw_ale_x_threads"],
        ]
    )
    ratio_rows.append(
        [
            f"ours ({n1} envs, 1 ALE thread, constant policy) / raw ALE (1 thread): per-core efficiency",
            values["ours_1_thread_constant_over_raw_ale"],
        ]
    )
    policy_share = med(shares[ours["tiny"]])

    result = {
        "name": "env",
        "quick": q,
        "machine": machine_info(),
        "setup": [
            f"Game: {GAME}, protocol settings (frame skip 4 + max-pool, 84x84 grayscale, 4-frame stacks, up to 30 "
            f"no-ops, no sticky actions), epsilon {EPSILON}; episodes cut at the horizon shown (agent steps) so that "
            "all envs end together: no env idles while others finish.",
            f"About {steps:,} agent steps per row and round ({3 * steps:,} for raw ALE); {rounds} round(s), rows "
            "interleaved, median round reported; ratios are medians of per-round ratios. Steps/s are of "
            "stepping (policy + env) alone; making and seeding the envs is the 'setup s' column.",
            f"Policies: tiny preset encoder + linear head ({sum(p.numel() for p in _params(tiny)):,} parameters) "
            f"on {args.device}, torch on {args.torch_threads} intra-op thread(s); constant action (env cost alone). "
            f"ALE vector threads: min(envs, {cores} cores), or 1 where the row says so. Raw ALE grabs no screen "
            "and does no max-pool, resize or stacking: it is the emulator's own speed.",
        ],
        "tables": [
            table(
                "Agent steps/s",
                ["implementation", "policy", "envs", "horizon", "agent steps/s", "/ raw ALE", "setup s"],
                rows,
            ),
            table("Ratios (median over rounds of each round's ratio)", ["ratio", "value"], ratio_rows),
            table(
                "Tiny policy alone (one call, no environment)",
                ["batch", "ms/call", "ms/observation"],
                [[n, ms, ms / n] for n, ms in policy_ms.items()],
            ),
        ],
        "goals": [],
        "values": {
            "agent_steps_per_s": {f"{k[0]}|{k[1]}|{k[2]}": v for k, v in sps.items()},
            "agent_steps_per_s_rounds": {f"{k[0]}|{k[1]}|{k[2]}": v for k, v in rates.items()},
            "setup_s": {f"{k[0]}|{k[1]}|{k[2]}": v for k, v in setup.items()},
            "main_envs": n_main,
            "vector_envs": nv,
            "ale_threads": ale_threads,
            "torch_threads": args.torch_threads,
            "device": args.device,
            **values,
            "raw_ale_steps_per_s": raw,
            "policy_ms_per_call": {str(n): v for n, v in policy_ms.items()},
            "policy_share_of_rollout_tiny": policy_share,
        },
        "notes": [
            f"With the tiny policy, the policy calls take {policy_share:.0%} of our rollout time at {n_main} envs "
            f"(timed inside the rollouts). Alone, a call on {n_main} observations takes {policy_ms[n_main]:.1f} ms, "
            f"{policy_ms[n_main] / n_main / policy_ms[1]:.2f}x per observation what a call on one costs: on a CPU "
            "the encoder, not the environment, bounds evaluation, and batching buys little per observation there "
            "(its gain is on a GPU, where a batch costs about what one observation does).",
            f"torch runs on {args.torch_threads} intra-op thread(s) (--torch-threads): OpenMP threads spin-wait "
            "after each op and, on a machine with few cores, take them from ALE's worker threads and other "
            "processes.",
        ],
        "seconds": time.perf_counter() - t_start,
    }
    return finish("env", result)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _params(policy) -> list[torch.Tensor]:
    cells = [c.cell_contents for c in (policy.__closure__ or ())]
    return [p for m in cells if isinstance(m, nn.Module) for p in m.parameters()]


if __name__ == "__main__":
    main()
