"""PPO exploration throughput: agent steps/s of the whole training loop (rollout, intrinsic reward, PPO
update) with RND and with PreND (tiny preset), against PPO without an intrinsic reward and bare env
stepping, measured in the same run.

Rows, all on Boxing with prend/prend.yaml's settings (sticky actions, RND's PPO), N envs x T steps a rollout:
  env only             AtariVectorEnv stepping N envs with random actions: no policy, no learning;
  PPO                  `train_prend(..., encoder="none")`: RND's policy network, PPO on the game's reward;
  PPO + RND            `encoder="random"`: RND's target and predictor CNNs on the normalised last frame;
  PPO + PreND (tiny)   `encoder=<a tiny-preset encoder>`: frozen backbone once per frame, two heads.
Learner rows run U updates of train_prend in-process; steps/s is the median over the updates after the
first (which pays for warm-up) of N*T / (rollout + intrinsic + update seconds) as the runner logs them, so
making envs, the probe set and RND's frame-statistics initialisation are excluded. The PreND encoder has
random weights: the cost does not depend on them.
"""

from __future__ import annotations

import os

# OpenMP threads that spin after each op take the cores from ALE's threads (see bench.env); set before torch
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.harness import OUT, Opt, Spec, Table, log, med  # noqa: E402

GAME = "boxing"
ROWS = ("PPO", "PPO + RND", "PPO + PreND (tiny)")


def env_only(n: int, steps: int, updates: int) -> float:
    from atari_pb.envs.atari import make_vector_env
    from atari_pb.games import get_game
    from atari_pb.prend.config import load_prend_config

    env, _ = make_vector_env(get_game(GAME), n, load_prend_config().env, 0)
    rng = np.random.default_rng(0)
    na = int(env.single_action_space.n)
    try:
        t0 = time.perf_counter()
        for _ in range(steps * updates):
            env.step(rng.integers(na, size=n))
        return n * steps * updates / (time.perf_counter() - t0)
    finally:
        env.close()


def learner(encoder: str, n: int, steps: int, updates: int, work: Path) -> dict:
    from atari_pb.games import get_game
    from atari_pb.prend.config import load_prend_config
    from atari_pb.prend.runner import train_prend

    out = work / encoder.replace("/", "_")
    shutil.rmtree(out, ignore_errors=True)
    keys = [f"ppo.num_envs={n}", f"ppo.num_steps={steps}", f"train.env_steps={n * steps * updates}"]
    keys += [f"train.save_every={updates}", "train.log_every=1", "train.device=cpu"]
    # the probe set is scored on the first and last update only (the laps exclude it)
    cfg = load_prend_config([*keys, f"diagnostics.every={updates + 1}"])
    t0 = time.perf_counter()
    train_prend(get_game(GAME), encoder, out, cfg, progress=False)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = rows[1:] if len(rows) > 1 else rows  # the first update pays for warm-up
    out = {
        k: med(r[f"time/{k}"] for r in timed) for k in ("steps_per_s", "rollout_s", "intrinsic_s", "update_s")
    }
    return {**out, "wall_s": wall, "updates": len(rows)}


def measure(o) -> dict:
    from atari_pb.models.encoder import Encoder, ModelConfig, export_encoder

    n, steps, updates = o.envs, o.steps, o.updates
    torch.set_num_threads(o.torch_threads or len(os.sched_getaffinity(0)))
    work = OUT / "prend_runs"
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    encoder = export_encoder(Encoder(ModelConfig(preset="tiny")), work / "tiny_encoder.safetensors")

    log(f"env only: {n} envs x {steps * updates} steps")
    raw = env_only(n, steps, updates)
    split = {}
    for label, enc in zip(ROWS, ("none", "random", str(encoder))):
        log(f"{label}: {updates} updates of {n} x {steps} steps")
        split[label] = learner(enc, n, steps, updates, work)
        log(f"{label}: {split[label]['steps_per_s']:,.0f} agent steps/s")
    sps = {k: r["steps_per_s"] for k, r in split.items()}
    return {
        "env_only_steps_per_s": raw,
        "steps_per_s": sps,
        "rnd_over_ppo": sps["PPO + RND"] / sps["PPO"],
        "prend_over_ppo": sps["PPO + PreND (tiny)"] / sps["PPO"],
        "prend_over_rnd": sps["PPO + PreND (tiny)"] / sps["PPO + RND"],
        "ppo_over_env_only": sps["PPO"] / raw,
        "split": split,
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


def setup(v: dict, o) -> list[str]:
    return [
        f"Game: {GAME}, prend/prend.yaml's env (sticky actions 0.25) and PPO (4 epochs x 4 minibatches, "
        f"RND's policy CNN); {o.envs} envs x {o.steps} steps = {o.envs * o.steps:,} agent steps per update, {o.updates} "
        "updates per learner row, the first excluded (warm-up); medians over the rest. CPU only, torch on "
        f"{v['torch_threads']} intra-op thread(s), OMP_WAIT_POLICY={v['omp_wait_policy']}.",
        "PreND uses a tiny-preset encoder (random weights: the cost is the same); its backbone runs once per "
        "frame of a rollout and its features serve the reward and every predictor update.",
    ]


def tables(v: dict, o) -> list[Table]:
    raw, batch = v["env_only_steps_per_s"], o.envs * o.steps
    rows = [["env only (random actions)", raw, 1.0, "-", "-", "-"]]
    for label, r in v["split"].items():
        intrinsic = r["intrinsic_s"] / batch * 1e3 if label != "PPO" else "-"
        rows.append(
            [
                label,
                r["steps_per_s"],
                r["steps_per_s"] / raw,
                r["rollout_s"] / batch * 1e3,
                intrinsic,
                r["update_s"] / batch * 1e3,
            ]
        )
    return [
        Table(
            "Agent steps/s of PPO training (rollout + intrinsic reward + update)",
            ["row", "agent steps/s", "/ env only", "rollout ms/step", "intrinsic ms/step", "update ms/step"],
            rows,
        ),
        Table(
            "Ratios",
            ["ratio", "value"],
            [
                ["PPO + RND / PPO", v["rnd_over_ppo"]],
                ["PPO + PreND (tiny) / PPO", v["prend_over_ppo"]],
                ["PPO + PreND (tiny) / PPO + RND", v["prend_over_rnd"]],
                ["PPO / env only", v["ppo_over_env_only"]],
            ],
        ),
    ]


def interpret(v: dict, o, m: dict) -> list[str]:
    ppo, rnd, prend = (v["split"][k] for k in ROWS)

    def cost(r: float) -> str:
        return f"costs {1 - r:.0%} of PPO's throughput" if r <= 1 else f"runs at {r:.2f}x PPO's throughput"

    bound = ppo["update_s"] > ppo["rollout_s"]
    share = ppo["update_s"] / (ppo["rollout_s"] + ppo["update_s"])
    return [
        f"RND {cost(v['rnd_over_ppo'])} and PreND (tiny) {cost(v['prend_over_ppo'])}. Against PPO, RND's update takes "
        f"{rnd['update_s'] - ppo['update_s']:+.2f} s and its intrinsic reward {rnd['intrinsic_s']:.2f} s an update; "
        f"PreND's update {prend['update_s'] - ppo['update_s']:+.2f} s and its intrinsic reward (the frozen backbone "
        f"over the rollout's frames) {prend['intrinsic_s']:.2f} s.",
        f"PPO itself runs at {v['ppo_over_env_only']:.2f} of bare env stepping"
        + (
            f": its update takes {share:.0%} of an iteration, so the learner, not the emulator, bounds it."
            if bound
            else "."
        ),
    ]


SPEC = Spec(
    name="prend",
    title="PPO exploration with RND and PreND intrinsic rewards",
    doc=__doc__,
    measures="agent steps/s of `train_prend` (rollout + intrinsic reward + PPO update) with RND and with PreND "
    "(tiny preset), and where each update's time goes.",
    baseline="PPO with no intrinsic reward (`encoder=none`) and bare env stepping with random actions.",
    measure=measure,
    setup=setup,
    tables=tables,
    interpret=interpret,
    options={
        "updates": Opt(6, 3, "PPO updates per learner row"),
        "envs": Opt(8, None, "ppo.num_envs (prend.yaml's)"),
        "steps": Opt(128, None, "ppo.num_steps"),
        "torch_threads": Opt(0, None, "torch intra-op threads (0: one per core)"),
    },
)

if __name__ == "__main__":
    SPEC.main()
