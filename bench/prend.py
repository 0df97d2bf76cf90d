"""PPO exploration throughput: agent steps/s of the whole training loop (rollout, intrinsic reward, PPO
update) with RND and with PreND (tiny preset), against PPO without an intrinsic reward and bare env
stepping, measured in the same run.

    .venv/bin/python -m bench.prend [--quick] [--updates N] [--envs N] [--steps N] [--torch-threads N]

Rows, all on Boxing with prend/prend.yaml's settings (sticky actions, RND's PPO), N envs x T steps a rollout:
  env only             AtariVectorEnv stepping N envs with random actions: no policy, no learning;
  PPO                  `train_prend(..., encoder="none")`: RND's policy network, PPO on the game's reward;
  PPO + RND            `encoder="random"`: RND's target and predictor CNNs on the normalised last frame;
  PPO + PreND (tiny)   `encoder=<a tiny-preset encoder>`: frozen backbone once per frame, two heads.
Learner rows run U updates of train_prend in-process; steps/s is the median over the updates after the
first (which pays for warm-up) of N*T / (rollout + intrinsic + update seconds) as the runner logs them, so
making envs, the probe set and RND's frame-statistics initialisation are excluded. The PreND encoder has
random weights: the cost does not depend on them. Results: bench/out/prend.json.
"""

from __future__ import annotations

import os

# OpenMP threads that spin after each op take the cores from ALE's threads (see bench.env); set before torch
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import OUT, finish, log, machine_info, med, table  # noqa: E402

GAME = "boxing"


def env_only(n: int, steps: int, updates: int) -> float:
    from atari_pb.envs.atari import make_vector_env
    from atari_pb.games import get_game
    from atari_pb.prend.config import load_prend_config

    cfg = load_prend_config()
    env, _ = make_vector_env(get_game(GAME), n, cfg.env, 0)
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
    cfg = load_prend_config(
        [
            f"ppo.num_envs={n}",
            f"ppo.num_steps={steps}",
            f"train.env_steps={n * steps * updates}",
            f"train.save_every={updates}",
            "train.device=cpu",
            f"diagnostics.every={updates + 1}",  # the probe set is scored on the first and last update only
        ]
    )
    t0 = time.perf_counter()
    train_prend(get_game(GAME), encoder, out, cfg, progress=False)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = rows[1:] if len(rows) > 1 else rows
    # the first and last updates also score the probe set; what is timed below excludes it
    return {
        "steps_per_s": med([r["time/steps_per_s"] for r in timed]),
        "rollout_s": med([r["time/rollout_s"] for r in timed]),
        "intrinsic_s": med([r["time/intrinsic_s"] for r in timed]),
        "update_s": med([r["time/update_s"] for r in timed]),
        "wall_s": wall,
        "updates": len(rows),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="3 updates per row instead of 6")
    p.add_argument("--updates", type=int, help="PPO updates per learner row (default 6; --quick 3)")
    p.add_argument("--envs", type=int, default=8, help="ppo.num_envs (default 8, prend.yaml's)")
    p.add_argument("--steps", type=int, default=128, help="ppo.num_steps (default 128)")
    p.add_argument("--torch-threads", type=int, default=0, help="torch intra-op threads (0: one per core)")
    args = p.parse_args(argv)
    updates = args.updates or (3 if args.quick else 6)
    n, steps = args.envs, args.steps
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(args.torch_threads or cores)

    from atari_pb.models.encoder import Encoder, ModelConfig, export_encoder

    work = OUT / "prend_runs"
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    encoder = export_encoder(Encoder(ModelConfig(preset="tiny")), work / "tiny_encoder.safetensors")

    t_start = time.perf_counter()
    log(f"env only: {n} envs x {steps * updates} steps")
    raw = env_only(n, steps, updates)
    rows = {}
    for label, enc in (("PPO", "none"), ("PPO + RND", "random"), ("PPO + PreND (tiny)", str(encoder))):
        log(f"{label}: {updates} updates of {n} x {steps} steps")
        rows[label] = learner(enc, n, steps, updates, work)
        log(f"{label}: {rows[label]['steps_per_s']:,.0f} agent steps/s")
    ppo = rows["PPO"]["steps_per_s"]
    values = {
        "env_only_steps_per_s": raw,
        "steps_per_s": {k: v["steps_per_s"] for k, v in rows.items()},
        "rnd_over_ppo": rows["PPO + RND"]["steps_per_s"] / ppo,
        "prend_over_ppo": rows["PPO + PreND (tiny)"]["steps_per_s"] / ppo,
        "prend_over_rnd": rows["PPO + PreND (tiny)"]["steps_per_s"] / rows["PPO + RND"]["steps_per_s"],
        "ppo_over_env_only": ppo / raw,
        "split": rows,
        "envs": n,
        "num_steps": steps,
        "updates": updates,
        "torch_threads": torch.get_num_threads(),
    }
    batch = n * steps
    table_rows = [["env only (random actions)", raw, 1.0, "-", "-", "-"]]
    for label, r in rows.items():
        table_rows.append(
            [
                label,
                r["steps_per_s"],
                r["steps_per_s"] / raw,
                r["rollout_s"] / batch * 1e3,
                r["intrinsic_s"] / batch * 1e3 if label != "PPO" else "-",
                r["update_s"] / batch * 1e3,
            ]
        )
    result = {
        "name": "prend",
        "quick": args.quick,
        "machine": machine_info(),
        "setup": [
            f"Game: {GAME}, prend/prend.yaml's env (sticky actions 0.25) and PPO (4 epochs x 4 minibatches, "
            f"RND's policy CNN); {n} envs x {steps} steps = {batch:,} agent steps per update, {updates} updates "
            "per learner row, the first excluded (warm-up); medians over the rest. CPU only, torch on "
            f"{torch.get_num_threads()} intra-op thread(s), OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}.",
            "PreND uses a tiny-preset encoder (random weights: the cost is the same); its backbone runs once per "
            "frame of a rollout and its features serve the reward and every predictor update.",
        ],
        "tables": [
            table(
                "Agent steps/s of PPO training (rollout + intrinsic reward + update)",
                [
                    "row",
                    "agent steps/s",
                    "/ env only",
                    "rollout ms/step",
                    "intrinsic ms/step",
                    "update ms/step",
                ],
                table_rows,
            ),
            table(
                "Ratios",
                ["ratio", "value"],
                [
                    ["PPO + RND / PPO", values["rnd_over_ppo"]],
                    ["PPO + PreND (tiny) / PPO", values["prend_over_ppo"]],
                    ["PPO + PreND (tiny) / PPO + RND", values["prend_over_rnd"]],
                    ["PPO / env only", values["ppo_over_env_only"]],
                ],
            ),
        ],
        "goals": [],
        "values": values,
        "notes": [],
        "seconds": time.perf_counter() - t_start,
    }
    return finish("prend", result)


if __name__ == "__main__":
    main()
