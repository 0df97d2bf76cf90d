"""Environment throughput: evaluation rollouts (ale_py's C++ AtariVectorEnv, one batched policy call per
vector step) vs gymnasium's wrapper stack, and vs raw ALE emulation, in agent steps/s (4 frames each).

Rows, all on Pong with the protocol's settings (frame skip 4 + max-pool, 84x84 grayscale, 4-frame stacks,
up to 30 no-ops, no sticky actions), epsilon-greedy at 0.001, every episode cut at the same horizon:
  ours       `atari_pb.eval.rollout.evaluate` on N envs: one policy call on the (N, 4, 84, 84) batch a step;
  gymnasium  gym.make("ALE/Pong-v5", frameskip=1, repeat_action_probability=0) + AtariPreprocessing +
             FrameStackObservation: one env with the policy called on one observation a step, and
             SyncVectorEnv over N of them with one batched policy call a step;
  raw ALE    one ALEInterface, frame_skip=4, random minimal-set actions, no preprocessing, no policy.
Policies: the tiny preset encoder + a linear head (argmax), and a constant action (env cost alone).
Every configuration runs once a round, rounds interleave the rows, the median round is reported.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch
from torch import nn

from bench.harness import Opt, Spec, Table, interleave, med, repeat

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

    policy.parameters = sum(p.numel() for m in (enc, head) for p in m.parameters())
    return policy


def constant_policy(obs: torch.Tensor) -> torch.Tensor:
    return torch.zeros(len(obs), dtype=torch.long)


def horizon_for(steps: int, n: int) -> tuple[int, int]:
    """(horizon, episodes per env) so that n envs take about `steps` agent steps in all."""
    h = min(MAX_HORIZON, max(50, steps // n))
    return h, max(1, round(steps / (n * h)))


def run_ours(policy, n: int, steps: int, threads: int, device: str) -> dict:
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
    return {
        "sps": r.steps / loop,
        "horizon": h,
        "setup_s": r.setup_seconds,
        "policy_share": in_policy[0] / loop,
    }


def gym_env(horizon: int):
    import ale_py
    import gymnasium as gym
    from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

    gym.register_envs(ale_py)
    # the time limit counts emulator frames here (frameskip=1)
    env = gym.make("ALE/Pong-v5", frameskip=1, repeat_action_probability=0.0, max_episode_steps=4 * horizon)
    env = AtariPreprocessing(
        env, noop_max=30, frame_skip=4, screen_size=84, terminal_on_life_loss=False, grayscale_obs=True
    )
    return FrameStackObservation(env, 4)


def run_gym_single(policy, steps: int, num_actions: int) -> dict:
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    env = gym_env(MAX_HORIZON)
    obs, _ = env.reset(seed=0)
    t1 = time.perf_counter()
    with torch.no_grad():
        for _ in range(steps):
            a = (
                int(rng.integers(num_actions))
                if rng.random() < EPSILON
                else int(policy(torch.from_numpy(np.asarray(obs))[None])[0])
            )
            obs, _, term, trunc, _ = env.step(a)
            if term or trunc:
                obs, _ = env.reset()
    seconds = time.perf_counter() - t1
    env.close()
    return {"sps": steps / seconds, "horizon": MAX_HORIZON, "setup_s": t1 - t0}


def run_gym_vector(policy, n: int, steps: int, num_actions: int) -> dict:
    import gymnasium as gym

    h, per_env = horizon_for(steps, n)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    env = gym.vector.SyncVectorEnv(
        [lambda: gym_env(h)] * n, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    obs, _ = env.reset(seed=0)
    t1 = time.perf_counter()
    with torch.no_grad():
        for _ in range(h * per_env):
            actions = policy(torch.from_numpy(obs)).numpy()
            explore = rng.random(n) < EPSILON
            obs, *_ = env.step(np.where(explore, rng.integers(0, num_actions, n), actions))
    seconds = time.perf_counter() - t1
    env.close()
    return {"sps": n * h * per_env / seconds, "horizon": h, "setup_s": t1 - t0}


def run_raw_ale(steps: int) -> dict:
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
    return {"sps": steps / (time.perf_counter() - t1), "horizon": "-", "setup_s": t1 - t0}


def key(kind: str, pol: str, n: int) -> str:
    return f"{kind}|{pol}|{n}"


def measure(o) -> dict:
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(o.torch_threads)
    try:
        import cv2  # noqa: F401  (gymnasium's AtariPreprocessing resizes with it)
    except ImportError:
        raise SystemExit(
            "bench.env needs opencv-python-headless (.venv/bin/pip install opencv-python-headless)"
        ) from None
    from atari_pb.envs.atari import num_actions
    from atari_pb.games import get_game

    game = get_game(GAME)
    na, steps, nv, envs = num_actions(game), o.steps, o.vector_envs, o.envs
    policies = {"tiny": tiny_policy(na, game.game_id, o.device), "constant": constant_policy}
    configs = {}
    for pol_name, pol in policies.items():
        for n in envs:
            configs[key("ours", pol_name, n)] = lambda pol=pol, n=n: run_ours(pol, n, steps, cores, o.device)
        configs[key("gymnasium", pol_name, 1)] = lambda pol=pol: run_gym_single(pol, steps, na)
        configs[key("gymnasium SyncVectorEnv", pol_name, nv)] = lambda p=pol: run_gym_vector(p, nv, steps, na)
    n_main = 16 if 16 in envs else max(envs)  # per-core efficiency: the same envs stepped by one ALE thread
    one = key("ours, 1 ALE thread", "constant", n_main)
    configs[one] = lambda: run_ours(constant_policy, n_main, steps, 1, o.device)
    configs[key("raw ALE", "random", 1)] = lambda: run_raw_ale(3 * steps)

    runs = interleave(configs, o.rounds, lambda k, r: f"{k}: {r['sps']:,.0f} agent steps/s")
    sps = {k: [r["sps"] for r in rs] for k, rs in runs.items()}

    tiny, policy_ms = policies["tiny"], {}  # the policy alone, per observation, at the batch sizes used above
    with torch.no_grad():
        for n in sorted({1, nv, *envs}):
            x = torch.randint(0, 256, (n, 4, 84, 84), dtype=torch.uint8)
            policy_ms[str(n)] = med(repeat(lambda x=x: tiny(x), max(3, 200 // n), warmup=1)) * 1e3

    raw, ale_threads = key("raw ALE", "random", 1), min(n_main, cores)

    def ratio(a: str, b: str, scale: float = 1.0) -> float:
        """Median over rounds of the per-round ratio: rows of one round ran minutes apart at most."""
        return med(x / (y * scale) for x, y in zip(sps[a], sps[b]))

    ours = {p: key("ours", p, n_main) for p in policies}
    named = {
        "ours_over_gym_single_tiny": (ours["tiny"], key("gymnasium", "tiny", 1)),
        "ours_over_gym_single_constant": (ours["constant"], key("gymnasium", "constant", 1)),
        "ours_tiny_over_raw_ale": (ours["tiny"], raw),
        "ours_constant_over_raw_ale": (ours["constant"], raw),
    }
    for p in policies:
        if key("ours", p, nv) in sps:
            named[f"ours_over_gym_vector_{p}"] = (key("ours", p, nv), key("gymnasium SyncVectorEnv", p, nv))
    return {
        "agent_steps_per_s": {k: med(v) for k, v in sps.items()},
        "agent_steps_per_s_rounds": sps,
        "setup_s": {k: med(r["setup_s"] for r in rs) for k, rs in runs.items()},
        "horizon": {k: rs[-1]["horizon"] for k, rs in runs.items()},
        **{name: ratio(a, b) for name, (a, b) in named.items()},
        "ours_constant_over_raw_ale_x_threads": ratio(ours["constant"], raw, ale_threads),
        "ours_1_thread_constant_over_raw_ale": ratio(one, raw),
        "raw_ale_steps_per_s": med(sps[raw]),
        "policy_ms_per_call": policy_ms,
        "policy_share_of_rollout_tiny": med(r["policy_share"] for r in runs[ours["tiny"]]),
        "policy_parameters": tiny.parameters,
        "main_envs": n_main,
        "ale_threads": ale_threads,
        "cores": cores,
    }


def setup(v: dict, o) -> list[str]:
    return [
        f"Game: {GAME}, protocol settings (frame skip 4 + max-pool, 84x84 grayscale, 4-frame stacks, up to 30 "
        f"no-ops, no sticky actions), epsilon {EPSILON}; episodes cut at the horizon shown (agent steps) so that "
        "all envs end together: no env idles while others finish.",
        f"About {o.steps:,} agent steps per row and round ({3 * o.steps:,} for raw ALE); {o.rounds} round(s), rows "
        "interleaved, median round reported; ratios are medians of per-round ratios. Steps/s are of "
        "stepping (policy + env) alone; making and seeding the envs is the 'setup s' column.",
        f"Policies: tiny preset encoder + linear head ({v['policy_parameters']:,} parameters) on {o.device}, torch on "
        f"{o.torch_threads} intra-op thread(s); constant action (env cost alone). ALE vector threads: "
        f"min(envs, {v['cores']} cores), or 1 where the row says so. Raw ALE grabs no screen and does no max-pool, "
        "resize or stacking: it is the emulator's own speed.",
    ]


def tables(v: dict, o) -> list[Table]:
    n, nv, t = v["main_envs"], o.vector_envs, v["ale_threads"]
    raw = v["raw_ale_steps_per_s"]
    rows = []
    for k, s in v["agent_steps_per_s"].items():
        kind, pol, envs = k.split("|")
        rows.append([kind, pol, int(envs), v["horizon"][k], s, s / raw, v["setup_s"][k]])
    labels = {
        "ours_over_gym_single_tiny": f"ours ({n} envs) / gymnasium single env, tiny policy",
        "ours_over_gym_single_constant": f"ours ({n} envs) / gymnasium single env, constant policy",
        "ours_tiny_over_raw_ale": f"ours ({n} envs, tiny policy) / raw ALE (1 thread)",
        "ours_constant_over_raw_ale": f"ours ({n} envs, constant policy) / raw ALE (1 thread)",
        "ours_over_gym_vector_tiny": f"ours / gymnasium SyncVectorEnv ({nv} envs each), tiny policy",
        "ours_over_gym_vector_constant": f"ours / gymnasium SyncVectorEnv ({nv} envs each), constant policy",
        "ours_constant_over_raw_ale_x_threads": f"ours ({n} envs, constant policy) / (raw ALE x {t} ALE threads)",
        "ours_1_thread_constant_over_raw_ale": f"ours ({n} envs, 1 ALE thread, constant policy) / raw ALE (1 thread): per-core efficiency",
    }
    ratios = [[label, v[k]] for k, label in labels.items() if k in v]
    policy = [[int(b), ms, ms / int(b)] for b, ms in v["policy_ms_per_call"].items()]
    return [
        Table(
            "Agent steps/s",
            "implementation | policy | envs | horizon | agent steps/s | / raw ALE | setup s",
            rows,
        ),
        Table("Ratios (median over rounds of each round's ratio)", "ratio | value", ratios),
        Table("Tiny policy alone (one call, no environment)", "batch | ms/call | ms/observation", policy),
    ]


def interpret(v: dict, o, m: dict) -> list[str]:
    n, nv, share, ms = (
        v["main_envs"],
        o.vector_envs,
        v["policy_share_of_rollout_tiny"],
        v["policy_ms_per_call"],
    )
    ours_setup = v["setup_s"][key("ours", "constant", n)]
    sps = v["agent_steps_per_s"]
    threads_gain = sps[key("ours", "constant", n)] / sps[key("ours, 1 ALE thread", "constant", n)]
    lines = []
    if "ours_over_gym_vector_constant" in v:
        lines.append(
            f"With a constant policy (env cost alone) ours steps {v['ours_over_gym_single_constant']:.2f}x gymnasium's "
            f"wrapper stack on one env and {v['ours_over_gym_vector_constant']:.2f}x its SyncVectorEnv of {nv}."
        )
        lines.append(
            f"With the tiny encoder as the policy, the policy calls take {share:.0%} of our rollout time at {n} envs, so "
            f"the gain is {v['ours_over_gym_single_tiny']:.2f}x (vs one env) and {v['ours_over_gym_vector_tiny']:.2f}x "
            "(vs SyncVectorEnv)"
            + (": on a CPU the encoder, not the environment, bounds evaluation." if share > 0.5 else ".")
        )
    lines += [
        f"Alone, a policy call on {n} observations takes {ms[str(n)]:.1f} ms, {ms[str(n)] / n / ms['1']:.2f}x per "
        "observation what a call on one costs.",
        f"Per core, ours runs at {v['ours_1_thread_constant_over_raw_ale']:.2f} of raw ALE, which grabs no screen and does "
        f"no max-pool/resize/stacking; {v['ale_threads']} ALE threads gave {threads_gain:.2f}x one "
        f"thread on this {v['cores']}-core machine.",
        f"Making and seeding the envs ('setup s') is excluded from steps/s: {ours_setup:.2f} s for {n} envs here "
        f"({ours_setup / n:.2f} s per env), once per evaluation.",
        f"torch ran on {o.torch_threads} intra-op thread(s) (--torch-threads).",
    ]
    return lines


SPEC = Spec(
    name="env",
    title="Environment: evaluation rollouts vs gymnasium and raw ALE",
    doc=__doc__,
    measures="agent steps/s of `atari_pb.eval.rollout.evaluate` (ale_py's vector env, one batched policy call a step) "
    "on 1, 16 and 64 envs, with the tiny encoder and with a constant policy.",
    baseline="gymnasium's `AtariPreprocessing` + `FrameStackObservation` stack (one env, and `SyncVectorEnv`), and raw "
    "ALE emulation, interleaved with ours round by round.",
    measure=measure,
    setup=setup,
    tables=tables,
    interpret=interpret,
    options={
        "steps": Opt(3000, 1000, "agent steps per row and round"),
        "rounds": Opt(5, 1, "rounds"),
        "envs": Opt([1, 16, 64], [1, 16], "env counts of our rows"),
        "device": Opt("cpu", None, "where the tiny policy runs (cpu, cuda)"),
        "vector_envs": Opt(16, None, "envs of the gymnasium SyncVectorEnv rows"),
        "torch_threads": Opt(1, None, "torch intra-op threads for every policy (see bench/notes/env.md)"),
    },
)

if __name__ == "__main__":
    SPEC.main()
