"""Fleet fine-tuning against standalone jobs: agent updates/s of offline BC for fleets of 1, 4, 16 and 64
agents (`finetune --fleet`, one backbone pass per step for all) against the same number of standalone jobs
run side by side (`--workers`, one torch thread each), on the same agents, in the same run; and what that
makes of one encoder's full offline BC evaluation (60 games x 3 seeds).

Agents are (game, seed) pairs over the cached benchmark shards (breakout, ms_pacman, space_invaders, pong;
4 x 5,000 transitions each), each with the protocol's settings but `--steps` updates at `--batch-size`. A
fleet's time is its training loop (`seconds` of its results: batches, one frozen-backbone pass, every agent's
update); the standalone side runs the same agents through a pool of `--workers` processes, each running
`train_offline_bc`, and its time is the sum of their training loops over the workers (the pool's whole wall
time, with process start-up and data opening, is in the record too). The train-accuracy evaluation both
sides end with is skipped (`skip_accuracy`). Runs unchanged on a GPU (`--device cuda`): there the fleet's one
backbone pass over every agent's batch is what fills the device.

Rainbow fleets do not exist yet; their row is missing, not estimated.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from bench.harness import Goal, Opt, Spec, Table, log  # noqa: E402

GAMES = ("breakout", "ms_pacman", "space_invaders", "pong")
FULL_BC_JOBS = 180  # 60 games (ID + Near-OOD) x 3 seeds
FULL_BC_STEPS = 9_800  # 100 epochs of 50,000 transitions at batch 512 (the released schedule)


def members(k: int) -> list[tuple[str, int]]:
    return [(GAMES[i % len(GAMES)], i // len(GAMES)) for i in range(k)]


def bc_config(o):
    from atari_pb.finetune.offline_bc import load_offline_bc_config

    return load_offline_bc_config(
        [
            f"train.max_steps={o.steps}",
            f"train.batch_size={o.batch_size}",
            "train.loader_threads=0",
            f"train.device={o.device}",
        ]  # fmt: skip
    ).train


def encoder(preset: str):
    import torch

    from atari_pb.models.encoder import Encoder, ModelConfig

    torch.manual_seed(0)
    return Encoder(ModelConfig(preset=preset))


def skip_accuracy() -> None:
    """Both sides end with the protocol's train accuracy on 1,024 logged transitions per agent, outside the
    training loop this measures (minutes per agent for resnet50 on a CPU): skipped here, on both sides."""
    from atari_pb.finetune import offline_bc

    offline_bc.accuracy = lambda *args: float("nan")


def fleet_seconds(preset: str, k: int, shards: Path, o) -> float:
    import torch

    skip_accuracy()
    from atari_pb.finetune.base import FinetuneTask
    from atari_pb.finetune.offline_bc_fleet import train_offline_bc_fleet
    from atari_pb.games import get_game

    torch.set_num_threads(o.fleet_threads)
    enc = encoder(preset)
    tasks = [FinetuneTask(get_game(g), enc, s, data=shards, progress=False) for g, s in members(k)]
    results = train_offline_bc_fleet(bc_config(o), tasks, progress=False)
    return results[0].seconds


def standalone_job(args: tuple) -> float:
    import torch

    from atari_pb.envs.atari import num_actions
    from atari_pb.finetune.offline_bc import train_offline_bc
    from atari_pb.games import get_game

    preset, game, seed, shards, o = args
    torch.set_num_threads(1)
    skip_accuracy()
    g = get_game(game)
    return train_offline_bc(
        g, encoder(preset), shards, num_actions(g), bc_config(o), seed, progress=False
    ).seconds


def standalone_seconds(preset: str, k: int, shards: Path, o) -> tuple[float, float]:
    """(the jobs' training loops side by side: the sum of their loop seconds over the workers, the pool's
    whole wall time with process start-up, data opening and accuracy)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    jobs = [(preset, g, s, shards, o) for g, s in members(k)]
    start = time.perf_counter()
    with ProcessPoolExecutor(o.workers, mp_context=ctx) as pool:
        loops = list(pool.map(standalone_job, jobs))
    return sum(loops) / min(o.workers, k), time.perf_counter() - start


def measure(o) -> dict:
    from bench.data import sampler_shards

    shards = sampler_shards()
    rows = []
    for preset, sizes, steps in (("tiny", o.sizes, o.steps), ("resnet50", o.r50_sizes, o.r50_steps)):
        o = SimpleNamespace(**{**vars(o), "steps": steps})
        for k in sizes:
            log(f"{preset}: fleet of {k}")
            fleet = fleet_seconds(preset, k, shards, o)
            log(f"{preset}: {k} standalone jobs on {o.workers} workers")
            alone, wall = standalone_seconds(preset, k, shards, o)
            rows.append({"preset": preset, "agents": k, "fleet_s": fleet, "standalone_s": alone, "standalone_wall_s": wall,
                         "steps": steps, "fleet_updates_per_s": k * steps / fleet, "standalone_updates_per_s": k * steps / alone})  # fmt: skip
    largest = max((r for r in rows if r["preset"] == "tiny"), key=lambda r: r["agents"])
    return {
        "rows": rows,
        "speedup_largest_tiny": largest["standalone_s"] / largest["fleet_s"],
        "largest_tiny_agents": largest["agents"],
    }


def hours(updates_per_s: float, o) -> float:
    """One encoder's full offline BC evaluation at this rate, at the protocol's batch of 512."""
    return FULL_BC_JOBS * FULL_BC_STEPS * (512 / o.batch_size) / updates_per_s / 3600


def setup(v: dict, o) -> list[str]:
    return [
        f"Offline BC, {o.steps} updates (tiny; resnet50 {o.r50_steps}) at batch {o.batch_size} per agent, device {o.device}; fleets with "
        f"{o.fleet_threads} torch thread(s) in one process, standalone jobs on {o.workers} worker processes of 1 "
        "thread each (the same cores).",
        "The full-evaluation column scales the measured agent updates/s to 180 jobs x 9,800 updates at batch 512 "
        "(linear in the batch: a floor on the cost, not a measurement).",
    ]


def tables(v: dict, o) -> list[Table]:
    rows = [
        [
            r["preset"],
            r["agents"],
            r["fleet_s"],
            r["standalone_s"],
            r["standalone_s"] / r["fleet_s"],
            r["fleet_updates_per_s"],
            r["standalone_updates_per_s"],
            hours(r["fleet_updates_per_s"], o),
            hours(r["standalone_updates_per_s"], o),
        ]  # fmt: skip
        for r in v["rows"]
    ]
    heads = "preset | agents | fleet s | standalone s | standalone / fleet | fleet agent-updates/s | "
    heads += "standalone agent-updates/s | full BC eval h (fleet) | full BC eval h (standalone)"
    return [Table("Offline BC: a fleet against the same agents as standalone jobs", heads, rows)]


def interpret(v: dict, o, m: dict) -> list[str]:
    device = m.get("gpu") or f"{m.get('cores')} CPU cores"
    out = [
        f"On {device}, a fleet of {v['largest_tiny_agents']} tiny agents trains {v['speedup_largest_tiny']:.2f}x "
        f"as fast as the same agents as standalone jobs on {o.workers} workers."
    ]
    for r in v["rows"]:
        if r["preset"] == "resnet50":
            out.append(
                f"resnet50, {r['agents']} agent(s): fleet {r['fleet_updates_per_s']:.2f} agent-updates/s against "
                f"{r['standalone_updates_per_s']:.2f} standalone ({r['standalone_s'] / r['fleet_s']:.2f}x)."
            )
    if not m.get("gpu"):
        out.append(
            "No GPU was lent to the machine that measured this: the GPU plan is the same command with "
            "`--device cuda` on one (`python -m bench.fleet --device cuda --sizes 1 4 16 64 --r50-sizes 1 4 16 "
            "64`), whose resnet50 rows give the GPU-hours of a full offline BC evaluation fleet vs standalone."
        )
    return out


SPEC = Spec(
    name="fleet",
    title="Fleet fine-tuning vs standalone jobs",
    doc=__doc__,
    measures="agent updates/s of offline BC for fleets of K agents (one backbone pass per step for all)",
    baseline="the same K agents as standalone jobs side by side on a process pool, same run",
    measure=measure,
    setup=setup,
    tables=tables,
    interpret=interpret,
    options={
        "sizes": Opt([1, 4, 16, 64], [1, 4], "fleet sizes, tiny preset"),
        "r50_sizes": Opt([1, 4], [1], "fleet sizes, resnet50"),
        "steps": Opt(20, 5, "updates per agent, tiny"),
        "r50_steps": Opt(4, 2, "updates per agent, resnet50 (a forward of 32 stacks takes seconds on a CPU)"),
        "batch_size": Opt(32, 16, "batch per agent"),
        "workers": Opt(2, None, "processes of the standalone side"),
        "fleet_threads": Opt(2, None, "torch threads of the fleet's process"),
        "device": Opt("cpu", None, "cpu | cuda"),
    },
    goals=[Goal("fleet / standalone agent-updates/s, largest tiny fleet", "speedup_largest_tiny > 1")],
)

if __name__ == "__main__":
    SPEC.main()
