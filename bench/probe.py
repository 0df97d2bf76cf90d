"""Wall time of one encoder's probe evaluation (the `probe` protocol, AtariARI's linear probes) on CPU cores.

    .venv/bin/python -m bench.probe [--quick] [--workers 2] [--threads 1] [--frames 20000] [--games ...]

"2 cores" is run the way `atari-pb finetune --workers 2` runs it: games shared by 2 worker processes of 1
torch thread each (finetune/run.py gives each worker cpu_count // workers threads). The per-batch operations
of the probes are small, so a second thread in one process gains little, and where the cores are shared
with other work it loses much (each operation waits for the thread that was descheduled).

Measured, each on real probe data collected here first (bench/out/probe_data_<frames>, kept between runs):
  1. tiny: the whole protocol (`Probe.train`, default settings, one seed) on every annotated game, timed by
     its own Sections hook (load + AtariARI filtering, features, probe fitting, the rest), and the wall time
     of all games through the workers;
  2. resnet50: the same on `--r50-games` at `--r50-frames` frames per game, and the backbone's forward rate
     (frames/s, one worker's threads), from which the whole evaluation at `--frames` is extrapolated
     (features grow linearly in frames: see 4); on 2 cores a full resnet50 run takes hours;
  3. features cached (the protocol: one forward per frame, then every probe on the cached features) against
     recomputed per variable (AtariARI's ProbeTrainer: the encoder runs on every batch of every variable's
     every epoch, train and validation): the per-variable cost is the forward of one train epoch's and one
     validation pass's frames at the batch-64 rate, times the epochs each variable trained in 1;
  4. scaling: tiny on `--scale-game` at each of `--scale-frames` frames per game (one process).
Goal: tiny's whole probe evaluation (every annotated game at 20,000 frames) under 10 minutes on 2 cores.
The JSON record goes to bench/out/probe.json. The encoders have random weights: the cost does not depend on
them, but how many epochs the probes train before they stop does (a trained encoder's may stop later).
"""

from __future__ import annotations

import atari_pb  # noqa: F401  (first: it sets OMP_WAIT_POLICY=PASSIVE before torch loads OpenMP)

# isort: split
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from bench.harness import OUT, Goal, Opt, Spec, Table, log

GOAL_SECONDS = 600.0  # tiny, every annotated game, 20,000 frames each, 2 cores
GOAL_FRAMES = 20_000  # frames per game of the goal's evaluation
PARTS = ("load", "features", "fit", "rest")  # the protocol's Sections, plus what they leave out
PART_NAMES = {
    "load": "loading and filtering",
    "features": "computing features",
    "fit": "probe fitting",
    "rest": "the rest",
}
FORWARD_BATCHES = (64, 256)  # AtariARI's probe batch (features recomputed per batch); the protocol's


def probe_data(frames: int, games: list[str]) -> Path:
    """Probe data of `games` at `frames` per game, collected once (collect_probes keeps finished games)."""
    from atari_pb.probes.data import ProbeDatasetConfig, collect_probes

    dst = OUT / f"probe_data_{frames}"
    t0 = time.perf_counter()
    done = collect_probes(dst, ProbeDatasetConfig(games=games, frames_per_game=frames))
    if done:
        log(f"collected {len(done)} games x {frames} frames into {dst} in {time.perf_counter() - t0:.0f} s")
    return dst


def encoder(preset: str, seed: int = 0):
    from atari_pb.models.encoder import Encoder, ModelConfig

    torch.manual_seed(seed)
    return Encoder(ModelConfig(preset=preset))


def run_game(preset: str, data: Path, game: str, overrides: list[str] = ()) -> dict:
    """The protocol on one game, timed by its sections."""
    from atari_pb.core.timing import Sections
    from atari_pb.finetune.base import FinetuneTask, load_protocol_config, protocol_class
    from atari_pb.games import get_game

    cfg = load_protocol_config("probe", ["train.device=cpu", *overrides])
    sections = Sections()
    task = FinetuneTask(get_game(game), encoder(preset), 0, data=data, progress=False, sections=sections)
    t0, c0 = time.perf_counter(), time.process_time()
    result = protocol_class("probe").train(cfg, task)
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    parts = {k: sum(d for _, d in v) for k, v in sections.calls.items()}
    s = result.summary
    return {
        "game": game,
        "preset": preset,
        "seconds": total,
        "cpu_seconds": cpu,  # every thread's CPU time: about `threads` x the wall time when nothing competes
        **{f"{k}_s": parts.get(k, 0.0) for k in ("load", "features", "fit")},
        "rest_s": total - sum(parts.values()),
        "frames": {k: int(n) for k, n in s["frames"].items()},
        "variables": len(s["variables"]),
        "epochs": {v: int(x["epochs"]) for v, x in s["variables"].items()},
        "steps": int(result.gradient_steps),
        "mean_f1": float(s["mean_f1"]),
        "feature_dim": int(s["feature_dim"]),
    }


@torch.no_grad()
def forward_rate(preset: str, frames: int, batch: int) -> float:
    """Frames per second of the frozen backbone plus pooling, on uint8 stacks, in batches of `batch`."""
    from atari_pb.finetune.probe import pooled

    backbone = encoder(preset).backbone.eval()
    obs = torch.randint(0, 256, (frames, 4, 84, 84), dtype=torch.uint8)
    pooled(backbone(obs[:batch]), 2)  # warm-up
    t0 = time.perf_counter()
    for s in range(0, frames, batch):
        pooled(backbone(obs[s : s + batch]), 2)
    return frames / (time.perf_counter() - t0)


def recompute_estimate(row: dict, rate64: float) -> float:
    """Seconds of AtariARI's loop for the features alone: each variable's epochs x (train + val) frames,
    each through the encoder at the batch-64 forward rate."""
    per_epoch = (row["frames"]["train"] + row["frames"]["val"]) / rate64
    return sum(row["epochs"].values()) * per_epoch


def summarize(rows: list[dict]) -> dict:
    keys = ("seconds", "cpu_seconds", "load_s", "features_s", "fit_s", "rest_s")
    return {k: float(sum(r[k] for r in rows)) for k in keys} | {"games": len(rows)}


def run_games(
    preset: str, data: Path, games: list[str], workers: int, threads: int
) -> tuple[list[dict], float]:
    """`run_game` on every game, shared by `workers` processes of `threads` torch threads; (rows, wall s)."""
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=torch.set_num_threads, initargs=(threads,)
    ) as pool:
        rows = list(pool.map(run_game, [preset] * len(games), [data] * len(games), games))
    return rows, time.perf_counter() - t0


def measure(o) -> dict:
    from atari_pb.probes.annotations import annotated_games

    games = o.games or annotated_games()
    torch.set_num_threads(o.threads)
    load_average = list(os.getloadavg())

    # 1. tiny, every game through the workers
    data = probe_data(o.frames, games)
    log(f"tiny on {len(games)} games x {o.frames} frames, {o.workers} workers x {o.threads} threads")
    tiny_rows, wall = run_games("tiny", data, games, o.workers, o.threads)
    tiny = {"games": tiny_rows, "total": summarize(tiny_rows), "wall_s": wall}
    log(f"tiny: {wall:.0f} s wall")

    # 2 and 3. forward rates: one process at `threads` threads, i.e. one worker's rate
    log("forward rates")
    rates = {
        preset: {
            f"batch_{b}": forward_rate(preset, 512 if preset == "tiny" else 128, b) for b in FORWARD_BATCHES
        }
        for preset in ("tiny", "resnet50")
    }
    tiny["recomputed_features_s"] = (
        sum(recompute_estimate(r, rates["tiny"]["batch_64"]) for r in tiny_rows) / o.workers
    )

    # 2. resnet50 in full on a few games, then the whole evaluation extrapolated from tiny's frames
    r50_data = probe_data(o.r50_frames, o.r50_games)
    log(f"resnet50 on {o.r50_games} x {o.r50_frames} frames")
    r50_rows = [run_game("resnet50", r50_data, g) for g in o.r50_games]
    total_frames = sum(sum(r["frames"].values()) for r in tiny_rows)
    fit_per_train_frame = sum(r["fit_s"] / r["frames"]["train"] for r in r50_rows) / len(r50_rows)
    serial = {  # one process, every game at --frames
        "features_s": total_frames / rates["resnet50"]["batch_256"],
        "load_s": tiny["total"]["load_s"],  # loading and filtering do not depend on the encoder
        "fit_s": fit_per_train_frame * sum(r["frames"]["train"] for r in tiny_rows),
    }
    extrapolated = sum(serial.values()) / o.workers  # at --frames, the games shared by the workers
    resnet50 = {
        "games": r50_rows,
        "serial_parts_s": serial,
        "extrapolated_s": extrapolated,
        "extrapolated_20000_s": extrapolated * GOAL_FRAMES / o.frames,  # linear in frames (see 4)
        "recomputed_features_s": sum(recompute_estimate(r, rates["resnet50"]["batch_64"]) for r in tiny_rows)
        / o.workers,
    }

    # 4. scaling: tiny on one game at several frames per game, one process
    scaling = []
    for n in o.scale_frames:
        log(f"scaling: tiny on {o.scale_game} x {n} frames")
        scaling.append(
            {"frames_per_game": n, **run_game("tiny", probe_data(n, [o.scale_game]), o.scale_game)}
        )
    by_frames = {r["frames_per_game"]: r["seconds"] for r in scaling}
    if o.frames == GOAL_FRAMES:
        at_goal_frames, basis = wall, "measured"
    elif GOAL_FRAMES in by_frames and o.frames in by_frames:
        # the whole evaluation scaled by the scaling game's time ratio between the two sizes
        at_goal_frames, basis = wall * by_frames[GOAL_FRAMES] / by_frames[o.frames], "scaling run"
        tiny["extrapolated_20000_s"] = at_goal_frames
    else:
        at_goal_frames, basis = None, None

    # features of the whole evaluation, wall on the workers: tiny's measured, resnet50's from its forward rate
    cached = {"tiny": tiny["total"]["features_s"] / o.workers, "resnet50": serial["features_s"] / o.workers}
    recomputed = {"tiny": tiny["recomputed_features_s"], "resnet50": resnet50["recomputed_features_s"]}
    return {
        "games": games,
        "load_average_start": load_average,
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "tiny": tiny,
        "forward_frames_per_s": rates,
        "resnet50": resnet50,
        "scaling": scaling,
        "features_cached_s": cached,
        "features_recomputed_s": recomputed,
        # headline and goal values
        "tiny_wall_s": wall,
        "tiny_wall_20000_s": at_goal_frames,
        "tiny_wall_20000_basis": basis,
        "recomputed_over_cached_tiny": recomputed["tiny"] / cached["tiny"],
        "recomputed_over_cached_resnet50": recomputed["resnet50"] / cached["resnet50"],
        "resnet50_extrapolated_20000_h": resnet50["extrapolated_20000_s"] / 3600,
    }


# ------------------------------------------------------------------------------------------------ report
def game_row(r: dict) -> list:
    f = r["frames"]
    return [
        r["game"],
        f["train"],
        f["val"],
        f["test"],
        r["variables"],
        max(r["epochs"].values()),
        r["seconds"],
        r["load_s"],
        r["features_s"],
        r["fit_s"],
        r["mean_f1"],
    ]


GAME_HEADERS = [
    "game",
    "train frames",
    "val frames",
    "test frames",
    "variables",
    "epochs (max)",
    "s",
    "load s",
    "features s",
    "fit s",
    "mean F1",
]


def games_label(v: dict, o) -> str:
    return "every annotated game" if o.games is None else ", ".join(v["games"])


def setup(v: dict, o) -> list[str]:
    la = v["load_average_start"][0]
    return [
        f"The `probe` protocol (finetune/probe.yaml's defaults: AtariARI's filters, batch 64, up to 100 epochs, "
        f"early stopping with patience 15), one seed, CPU, on real probe data collected here "
        f"(bench/out/probe_data_<frames>); encoders with random weights (the cost does not depend on them, the "
        f"epochs the probes train before stopping do). Games: {games_label(v, o)} ({len(v['games'])}), "
        f"{o.frames:,} frames per game.",
        f"tiny's games are shared the way `atari-pb finetune --workers {o.workers}` shares them: {o.workers} spawned "
        f"worker processes of {o.threads} torch thread(s) each, OMP_WAIT_POLICY={v['omp_wait_policy']}; each game "
        f"is timed by the protocol's own Sections hook (load + filtering, features, fit, the rest). Load average "
        f"{la:.1f} at the start.",
        f"resnet50 runs the protocol in full on {', '.join(o.r50_games)} at {o.r50_frames:,} frames per game (one "
        "process); its whole evaluation is extrapolated from tiny's frames: features at resnet50's batch-256 "
        "forward rate, tiny's load time, and resnet50's fit seconds per train frame. Forward rates: the frozen "
        f"backbone plus pooling on random uint8 stacks, one process at {o.threads} thread(s) (one worker's rate).",
        "Features recomputed per variable (AtariARI's ProbeTrainer runs the encoder on every batch of every "
        "variable's every epoch) are estimated from tiny's runs: per variable, its epochs x (train + val frames) "
        "at the batch-64 forward rate; cached is the protocol's one forward per frame. Both are wall time on "
        f"the {o.workers} workers.",
        f"Scaling: tiny on {o.scale_game} at {', '.join(f'{n:,}' for n in o.scale_frames)} frames per game, one "
        "process.",
    ]


def tables(v: dict, o) -> list[Table]:
    tiny, r50, rates = v["tiny"], v["resnet50"], v["forward_frames_per_s"]
    total, rows = tiny["total"], tiny["games"]
    summed = [
        "total (summed over games)",
        *(sum(r["frames"][k] for r in rows) for k in ("train", "val", "test")),
        sum(r["variables"] for r in rows),
        "-",
        total["seconds"],
        total["load_s"],
        total["features_s"],
        total["fit_s"],
        sum(r["mean_f1"] for r in rows) / len(rows),
    ]
    through = [
        f"wall time, {o.workers} workers x {o.threads} thread(s)",
        *["-"] * 5,
        tiny["wall_s"],
        *["-"] * 4,
    ]
    out = [
        Table(
            f"tiny: the probe evaluation, {len(rows)} games x {o.frames:,} frames per game (total mean F1: the mean "
            "over games)",
            GAME_HEADERS,
            [game_row(r) for r in rows] + [summed, through],
        )
    ]
    parts = r50["serial_parts_s"]
    r50_rows = [game_row(r) for r in r50["games"]]
    r50_rows.append(
        [
            f"every game at {o.frames:,} frames, extrapolated ({o.workers} workers)",
            *["-"] * 5,
            r50["extrapolated_s"],
            *(parts[k] / o.workers for k in ("load_s", "features_s", "fit_s")),
            "-",
        ]
    )
    if o.frames != GOAL_FRAMES:
        r50_rows.append(
            [
                f"every game at {GOAL_FRAMES:,} frames, linear in frames",
                *["-"] * 5,
                r50["extrapolated_20000_s"],
                *["-"] * 4,
            ]
        )
    out.append(
        Table(
            f"resnet50: the probe evaluation at {o.r50_frames:,} frames per game (one process), and extrapolated",
            GAME_HEADERS,
            r50_rows,
        )
    )
    dims = {r["preset"]: r["feature_dim"] for r in rows[:1] + r50["games"][:1]}
    out.append(
        Table(
            f"Forward rates of the frozen backbone + pooling, one process at {o.threads} thread(s)",
            ["preset", "feature dim", "frames/s, batch 64", "frames/s, batch 256"],
            [[p, dims.get(p, "-"), x["batch_64"], x["batch_256"]] for p, x in rates.items()],
        )
    )
    cached, recomputed = v["features_cached_s"], v["features_recomputed_s"]
    source = {"tiny": "measured", "resnet50": "forward rate"}
    out.append(
        Table(
            f"Features of the whole evaluation, wall on {o.workers} workers: cached (the protocol) vs recomputed per "
            "variable (AtariARI's loop, estimated)",
            ["preset", "cached s", "cached from", "recomputed s", "recomputed h", "recomputed / cached"],
            [
                [p, cached[p], source[p], recomputed[p], recomputed[p] / 3600, recomputed[p] / cached[p]]
                for p in cached
            ],
        )
    )
    out.append(
        Table(
            f"Scaling: tiny on {o.scale_game}, one process",
            [
                "frames per game",
                "train frames",
                "variables",
                "epochs (max)",
                "s",
                "load s",
                "features s",
                "fit s",
            ],
            [
                [
                    r["frames_per_game"],
                    r["frames"]["train"],
                    r["variables"],
                    max(r["epochs"].values()),
                    r["seconds"],
                    r["load_s"],
                    r["features_s"],
                    r["fit_s"],
                ]
                for r in v["scaling"]
            ],
        )
    )
    return out


def duration(seconds: float) -> str:
    """Seconds in the unit a reader compares them in: s, min, h or days."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def interpret(v: dict, o, m: dict) -> list[str]:
    tiny, r50, rates = v["tiny"], v["resnet50"], v["forward_frames_per_s"]
    total, rows, wall = tiny["total"], tiny["games"], tiny["wall_s"]
    shares = {k: total[f"{k}_s"] / total["seconds"] for k in PARTS}
    largest = max(shares, key=shares.get)
    others = ", ".join(f"{PART_NAMES[k]} {shares[k]:.0%}" for k in PARTS if k != largest)
    verb = "dominates" if shares[largest] >= 0.5 else "is the largest part"
    longest = max(rows, key=lambda r: r["seconds"])
    lines = [
        f"{PART_NAMES[largest].capitalize()} {verb}: {shares[largest]:.0%} of tiny's summed game time ({others}). "
        f"The {len(rows)} games take {total['seconds']:.0f} s one after another and {wall:.0f} s wall on "
        f"{o.workers} workers, which were busy {total['seconds'] / (o.workers * wall):.0%} of that wall time; the "
        f"longest game, {longest['game']} ({longest['variables']} variables, up to "
        f"{max(longest['epochs'].values())} epochs), takes {longest['seconds']:.0f} s alone.",
    ]
    cpu_share = total["cpu_seconds"] / total["seconds"]
    if cpu_share < 0.9 * o.threads:
        lines.append(
            f"The games' CPU time is {cpu_share:.0%} of their wall time at {o.threads} thread(s) each: the workers "
            f"spent the rest waiting, for cores that other work held (load average {v['load_average_start'][0]:.1f} "
            "at the start) or for the disk, so these wall times are above an idle machine's."
        )
    at_goal, basis = v["tiny_wall_20000_s"], v["tiny_wall_20000_basis"]
    if basis == "scaling run":
        met = "under" if at_goal < GOAL_SECONDS else "over"
        lines.append(
            f"Scaled to {GOAL_FRAMES:,} frames per game by the scaling run's time ratio, tiny's evaluation would take "
            f"{duration(at_goal)} wall, {met} the {GOAL_SECONDS:.0f} s goal."
        )
    ratio_tiny, ratio_r50 = v["recomputed_over_cached_tiny"], v["recomputed_over_cached_resnet50"]
    cached, recomputed = v["features_cached_s"], v["features_recomputed_s"]
    lines.append(
        f"Features cached are {ratio_tiny:,.0f}x faster than recomputed per variable for tiny "
        f"({duration(cached['tiny'])} against an estimated {duration(recomputed['tiny'])} on the workers) and "
        f"{ratio_r50:,.0f}x for resnet50 ({duration(cached['resnet50'])} against {duration(recomputed['resnet50'])}): "
        "the protocol runs the "
        "encoder once per frame, AtariARI's loop once per frame per epoch per variable."
    )
    r50_rate, tiny_rate = rates["resnet50"]["batch_256"], rates["tiny"]["batch_256"]
    parts = r50["serial_parts_s"]
    feature_share = parts["features_s"] / sum(parts.values())
    hours = duration(r50["extrapolated_s"])
    if o.frames != GOAL_FRAMES:
        hours += (
            f" at {o.frames:,} frames per game ({duration(r50['extrapolated_20000_s'])} at {GOAL_FRAMES:,})"
        )
    lines.append(
        f"resnet50's full evaluation extrapolates to {hours} on these {m['cores']} cores ({o.workers} workers), "
        f"{r50['extrapolated_s'] / wall:.0f}x tiny's: its forward runs at {r50_rate:.1f} frames/s against tiny's "
        f"{tiny_rate:,.0f} ({tiny_rate / r50_rate:.0f}x slower), and features are {feature_share:.0%} of its time."
    )
    scale = v["scaling"]
    if len(scale) >= 2:
        a, b = scale[0], scale[-1]
        frames_x = b["frames_per_game"] / a["frames_per_game"]
        time_x, features_x, fit_x = (b[k] / a[k] for k in ("seconds", "features_s", "fit_s"))
        if time_x > 1.15 * frames_x:
            shape = "faster than linear"
        elif time_x < frames_x / 1.15:
            shape = "slower than linear"
        else:
            shape = "about linear"
        lines.append(
            f"From {a['frames_per_game']:,} to {b['frames_per_game']:,} frames per game ({frames_x:.0f}x) "
            f"{o.scale_game}'s time grows {time_x:.1f}x, {shape}: features {features_x:.1f}x, fit {fit_x:.1f}x "
            f"(epochs up to {max(a['epochs'].values())} and {max(b['epochs'].values())}: a larger train split "
            "is more batches per epoch, and its probes may train longer)."
        )
    return lines


SPEC = Spec(
    name="probe",
    title="Probe evaluation: AtariARI's linear probes on CPU cores",
    doc=__doc__,
    measures="wall time of one encoder's whole `probe` evaluation (AtariARI's linear probes on every annotated "
    "game), tiny preset through `--workers` processes, split by the protocol's sections (load, features, fit); "
    "resnet50 on a few games and extrapolated; scaling with frames per game.",
    baseline="features recomputed per variable, as AtariARI's ProbeTrainer does (estimated from the same run's "
    "epochs and forward rates), against the protocol's features cached once per frame.",
    measure=measure,
    setup=setup,
    tables=tables,
    interpret=interpret,
    options={
        "workers": Opt(2, None, "processes sharing the games (the goal: 2 cores)"),
        "threads": Opt(1, None, "torch threads of each worker"),
        "frames": Opt(20_000, 2_000, "frames per game of the whole evaluation"),
        "games": Opt(
            None,
            ["boxing", "breakout", "pong"],
            "games of tiny's evaluation (default: every annotated game)",
            str,
            "+",
        ),
        "r50_games": Opt(["pong"], None, "games resnet50 runs in full on"),
        "r50_frames": Opt(2_000, 1_000, "their frames per game"),
        "scale_game": Opt("breakout", None, "the game of the scaling rows"),
        "scale_frames": Opt(
            [2_500, 5_000, 10_000, 20_000], [1_000, 2_000], "frames per game of the scaling rows"
        ),
    },
    goals=[
        Goal(
            "tiny's whole probe evaluation wall time ({frames:,} frames per game, {workers} workers x {threads} "
            "thread(s))",
            f"tiny_wall_s < {GOAL_SECONDS:g}",
            unit=" s",
        )
    ],
    headlines=[
        ("features recomputed per variable / cached (tiny)", "recomputed_over_cached_tiny", "x"),
        (
            "resnet50 whole evaluation at 20,000 frames per game, extrapolated",
            "resnet50_extrapolated_20000_h",
            " h",
        ),
    ],
)

if __name__ == "__main__":
    SPEC.main()
