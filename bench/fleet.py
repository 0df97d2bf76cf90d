"""Fleet fine-tuning against standalone jobs, for offline BC and Rainbow: agent updates/s (and Rainbow agent
steps/s) for fleets of K agents (`finetune --fleet`, one backbone pass for all) against the same K agents as
standalone jobs run side by side (`--workers` processes, one torch thread each on a CPU), on the same agents,
in the same run; and what that makes of one encoder's full evaluation: offline BC on 60 games x 3 seeds and
Rainbow on 65 games x 3 seeds.

Agents are (game, seed) pairs. Offline BC reads the cached benchmark shards (breakout, ms_pacman,
space_invaders, pong; 4 x 5,000 transitions each) with the protocol's settings but `--steps` updates at
`--batch-size`; the train-accuracy evaluation both sides end with is skipped (`skip_accuracy`). Rainbow plays
breakout, pong, boxing and freeway in the released env with the protocol's settings (2 updates a step,
batch 32, C51, PER) but `--rainbow-warmup` random steps, epsilon at its floor from then on, and
`--rainbow-steps` learning steps. A side's time is its training loops' (`seconds` of the results: a fleet's
one loop; standalone jobs' summed over the workers, i.e. the wall time of the workers' loops running side by
side); the standalone pool's whole wall time, with process start-up, is in the record too.

`--precisions fp32 bf16` measures both sides at each precision (bf16 = `train.bf16=true
train.channels_last=true`: the backbone pass under bfloat16 autocast with channels-last weights). On a GPU
(`--device cuda`) the standalone side's `--workers 2` is the released code's two jobs per GPU, and the
GPU-hours columns compare a whole evaluation fleet vs standalone.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from bench.harness import Goal, Opt, Spec, Table, log  # noqa: E402

BC_GAMES = ("breakout", "ms_pacman", "space_invaders", "pong")
RAINBOW_GAMES = ("breakout", "pong", "boxing", "freeway")
FULL_BC_JOBS = 180  # 60 games (ID + Near-OOD) x 3 seeds
FULL_BC_STEPS = 9_800  # 100 epochs of 50,000 transitions at batch 512 (the released schedule)
FULL_RAINBOW_JOBS = 195  # 65 games x 3 seeds
FULL_RAINBOW_STEPS = 50_000  # agent steps a job, 2 updates a step from step 2,000 (finetune/rainbow.yaml)


def members(protocol: str, k: int) -> list[tuple[str, int]]:
    games = BC_GAMES if protocol == "offline_bc" else RAINBOW_GAMES
    return [(games[i % len(games)], i // len(games)) for i in range(k)]


def precision_overrides(precision: str) -> list[str]:
    on = "true" if precision == "bf16" else "false"
    return [f"train.bf16={on}", f"train.channels_last={on}"]


def protocol_config(protocol: str, o):
    common = [f"train.device={o.device}", *precision_overrides(o.precision)]
    if protocol == "offline_bc":
        from atari_pb.finetune.offline_bc import load_offline_bc_config

        bc = [f"train.max_steps={o.steps}", f"train.batch_size={o.batch_size}", "train.loader_threads=0"]
        return load_offline_bc_config([*bc, *common])
    from atari_pb.finetune.rainbow import load_rainbow_config

    rainbow = [f"train.env_steps={o.rainbow_warmup + o.rainbow_steps}", f"train.learning_starts={o.rainbow_warmup}",
               "train.eps_decay_steps=1", "replay.capacity=2000"]  # fmt: skip
    return load_rainbow_config([*rainbow, *common])


def encoder(preset: str):
    import torch

    from atari_pb.models.encoder import Encoder, ModelConfig

    torch.manual_seed(0)
    return Encoder(ModelConfig(preset=preset))


def skip_accuracy() -> None:
    """Both BC sides end with the protocol's train accuracy on 1,024 logged transitions per agent, outside the
    training loop this measures (minutes per agent for resnet50 on a CPU): skipped here, on both sides."""
    from atari_pb.finetune import offline_bc

    offline_bc.accuracy = lambda *args: float("nan")


def fleet_run(protocol: str, preset: str, k: int, shards: Path, o) -> tuple[float, int]:
    """(seconds of the fleet's loop, updates per agent)."""
    import torch

    from atari_pb.finetune.base import FinetuneTask, protocol_class
    from atari_pb.games import get_game

    skip_accuracy()
    torch.set_num_threads(o.fleet_threads)
    enc = encoder(preset)
    tasks = [FinetuneTask(get_game(g), enc, s, data=shards, progress=False) for g, s in members(protocol, k)]
    results = protocol_class(protocol).train_fleet(protocol_config(protocol, o), tasks, progress=False)
    return results[0].seconds, results[0].gradient_steps


def standalone_job(args: tuple) -> float:
    import torch

    from atari_pb.finetune.base import FinetuneTask, protocol_class
    from atari_pb.games import get_game

    protocol, preset, game, seed, shards, o = args
    torch.set_num_threads(o.worker_threads)
    skip_accuracy()
    task = FinetuneTask(get_game(game), encoder(preset), seed, data=shards, progress=False)
    return protocol_class(protocol).train(protocol_config(protocol, o), task).seconds


def standalone_run(protocol: str, preset: str, k: int, shards: Path, o) -> tuple[float, float]:
    """(the jobs' training loops side by side: the sum of their loop seconds over the workers, the pool's
    whole wall time with process start-up and data opening)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    jobs = [(protocol, preset, g, s, shards, o) for g, s in members(protocol, k)]
    start = time.perf_counter()
    with ProcessPoolExecutor(o.workers, mp_context=ctx) as pool:
        loops = list(pool.map(standalone_job, jobs))
    return sum(loops) / min(o.workers, k), time.perf_counter() - start


def plan(o) -> list[tuple[str, str, list[int], dict]]:
    """(protocol, preset, fleet sizes, option changes) in measuring order."""
    return [
        ("offline_bc", "tiny", o.sizes, {"steps": o.steps}),
        ("offline_bc", "resnet50", o.r50_sizes, {"steps": o.r50_steps}),
        ("rainbow", "tiny", o.rainbow_sizes, {}),
        ("rainbow", "resnet50", o.rainbow_r50_sizes, {"rainbow_steps": o.rainbow_r50_steps}),
    ]


def measure(o) -> dict:
    from bench.data import sampler_shards

    shards = sampler_shards()
    rows = []
    for precision in o.precisions:
        for protocol, preset, sizes, changes in plan(o):
            p = SimpleNamespace(**{**vars(o), **changes, "precision": precision})
            for k in sizes:
                log(f"{protocol} {preset} {precision}: fleet of {k}")
                fleet, updates = fleet_run(protocol, preset, k, shards, p)
                log(f"{protocol} {preset} {precision}: {k} standalone jobs on {o.workers} workers")
                alone, wall = standalone_run(protocol, preset, k, shards, p)
                steps = p.rainbow_warmup + p.rainbow_steps if protocol == "rainbow" else 0
                rows.append({"protocol": protocol, "preset": preset, "precision": precision, "agents": k,
                             "fleet_s": fleet, "standalone_s": alone, "standalone_wall_s": wall,
                             "updates": updates, "env_steps": steps,
                             "fleet_updates_per_s": k * updates / fleet, "standalone_updates_per_s": k * updates / alone,
                             "fleet_steps_per_s": k * steps / fleet, "standalone_steps_per_s": k * steps / alone})  # fmt: skip
    tiny_bc = [r for r in rows if r["protocol"] == "offline_bc" and r["preset"] == "tiny"]
    largest = max(tiny_bc, key=lambda r: (r["precision"] == "fp32", r["agents"]))
    return {
        "rows": rows,
        "speedup_largest_tiny": largest["standalone_s"] / largest["fleet_s"],
        "largest_tiny_agents": largest["agents"],
    }


def full_hours(r: dict, side: str, o) -> float:
    """One encoder's full evaluation at this row's rate. Offline BC: 180 jobs x 9,800 updates at batch 512,
    scaled linearly from --batch-size (a floor: larger batches are not slower per sample). Rainbow: 195 jobs x
    50,000 agent steps at the measured agent steps/s of the learning phase (the first 2,000 random steps of
    each job cost less)."""
    rate = r[f"{side}_updates_per_s"] if r["protocol"] == "offline_bc" else r[f"{side}_steps_per_s"]
    if r["protocol"] == "offline_bc":
        return FULL_BC_JOBS * FULL_BC_STEPS * (512 / o.batch_size) / rate / 3600
    return FULL_RAINBOW_JOBS * FULL_RAINBOW_STEPS / rate / 3600


def setup(v: dict, o) -> list[str]:
    return [
        f"Device {o.device}; fleets with {o.fleet_threads} torch thread(s) in one process, standalone jobs on "
        f"{o.workers} worker processes of {o.worker_threads} thread(s) each (the same cores); precisions "
        f"{', '.join(o.precisions)}.",
        f"Offline BC: {o.steps} updates (tiny; resnet50 {o.r50_steps}) at batch {o.batch_size} per agent. Rainbow: "
        f"{o.rainbow_warmup} random steps, then {o.rainbow_steps} learning steps (resnet50 {o.rainbow_r50_steps}) at "
        "2 updates a step, batch 32, replay 2,000, in the released env.",
        "The full-evaluation columns scale the measured rates to one encoder's whole evaluation: offline BC 180 "
        "jobs x 9,800 updates at batch 512 (linear in the batch), Rainbow 195 jobs x 50,000 agent steps. They "
        "are estimates from short runs, not measurements of a whole evaluation.",
    ]


def tables(v: dict, o) -> list[Table]:
    out = []
    for protocol, title in (("offline_bc", "Offline BC"), ("rainbow", "Rainbow")):
        rows = [
            [
                r["preset"],
                r["precision"],
                r["agents"],
                r["fleet_s"],
                r["standalone_s"],
                r["standalone_s"] / r["fleet_s"],
                r["fleet_updates_per_s"],
                r["standalone_updates_per_s"],
                *([r["fleet_steps_per_s"], r["standalone_steps_per_s"]] if protocol == "rainbow" else []),
                full_hours(r, "fleet", o),
                full_hours(r, "standalone", o),
            ]  # fmt: skip
            for r in v["rows"]
            if r["protocol"] == protocol
        ]
        heads = "preset | precision | agents | fleet s | standalone s | standalone / fleet | fleet agent-updates/s | "
        heads += "standalone agent-updates/s | "
        heads += "fleet agent-steps/s | standalone agent-steps/s | " if protocol == "rainbow" else ""
        heads += "full eval h (fleet) | full eval h (standalone)"
        if rows:
            out.append(Table(f"{title}: a fleet against the same agents as standalone jobs", heads, rows))
    return out


def interpret(v: dict, o, m: dict) -> list[str]:
    device = m.get("gpu") or f"{m.get('cores')} CPU cores"
    out = [
        f"On {device}, a fleet of {v['largest_tiny_agents']} tiny offline BC agents trains "
        f"{v['speedup_largest_tiny']:.2f}x as fast as the same agents as standalone jobs on {o.workers} workers."
    ]
    for r in v["rows"]:
        if r["preset"] == "resnet50" or r["agents"] == max(
            x["agents"] for x in v["rows"] if x["protocol"] == r["protocol"]
        ):
            name = "offline BC" if r["protocol"] == "offline_bc" else "Rainbow"
            out.append(
                f"{name}, {r['preset']} {r['precision']}, {r['agents']} agent(s): fleet {r['fleet_updates_per_s']:.2f} "
                f"agent-updates/s against {r['standalone_updates_per_s']:.2f} standalone "
                f"({r['standalone_s'] / r['fleet_s']:.2f}x); a full evaluation at these rates: "
                f"{full_hours(r, 'fleet', o):.1f} h fleet, {full_hours(r, 'standalone', o):.1f} h standalone."
            )  # fmt: skip
    if not m.get("gpu"):
        out.append(
            "No GPU was lent to the machine that measured this. The GPU plan is the same benchmark with "
            "`python -m bench.fleet --device cuda --precisions fp32 bf16 --sizes 1 4 16 64 --r50-sizes 1 4 16 64 "
            "--rainbow-r50-sizes 1 4 16 64 --fleet-threads 16 --worker-threads 8`; its resnet50 rows give the "
            "GPU-hours of a full evaluation, fleet vs standalone at two jobs per GPU (goal for Rainbow: < 3 h, "
            ">= 10x fewer)."
        )
    return out


SPEC = Spec(
    name="fleet",
    title="Fleet fine-tuning vs standalone jobs",
    doc=__doc__,
    measures="agent updates/s (Rainbow: and agent steps/s) for fleets of K agents, one backbone pass for all",
    baseline="the same K agents as standalone jobs side by side on a process pool, same run",
    measure=measure,
    setup=setup,
    tables=tables,
    interpret=interpret,
    options={
        "sizes": Opt([1, 4, 16, 64], [1, 4], "offline BC fleet sizes, tiny preset"),
        "r50_sizes": Opt([1, 4], [1], "offline BC fleet sizes, resnet50"),
        "steps": Opt(20, 5, "offline BC updates per agent, tiny"),
        "r50_steps": Opt(
            4, 2, "offline BC updates per agent, resnet50 (a forward of 32 stacks takes seconds on a CPU)"
        ),
        "batch_size": Opt(32, 16, "offline BC batch per agent"),
        "rainbow_sizes": Opt([1, 4, 16, 64], [1, 4], "Rainbow fleet sizes, tiny preset"),
        "rainbow_r50_sizes": Opt([1, 4], [1], "Rainbow fleet sizes, resnet50"),
        "rainbow_warmup": Opt(
            40, 40, "Rainbow random steps before learning (the replay's first transitions)"
        ),
        "rainbow_steps": Opt(10, 3, "Rainbow learning steps per agent (2 updates each), tiny"),
        "rainbow_r50_steps": Opt(2, 1, "Rainbow learning steps per agent, resnet50"),
        "precisions": Opt(
            ["fp32", "bf16"], ["fp32"], "fp32 and/or bf16 (train.bf16 + train.channels_last), both sides"
        ),
        "workers": Opt(2, None, "processes of the standalone side (on a GPU: 2, the released jobs per GPU)"),
        "fleet_threads": Opt(2, None, "torch threads of the fleet's process"),
        "worker_threads": Opt(1, None, "torch threads of each standalone worker"),
        "device": Opt("cpu", None, "cpu | cuda"),
    },
    goals=[Goal("fleet / standalone agent-updates/s, largest tiny BC fleet", "speedup_largest_tiny > 1")],
)

if __name__ == "__main__":
    SPEC.main()
