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
import argparse
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from bench.harness import OUT, log, machine

GOAL_SECONDS = 600.0  # tiny, every annotated game, 20,000 frames each, 2 cores


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
        "frames": s["frames"],
        "variables": len(s["variables"]),
        "epochs": {v: x["epochs"] for v, x in s["variables"].items()},
        "steps": result.gradient_steps,
        "mean_f1": s["mean_f1"],
        "feature_dim": s["feature_dim"],
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


def table(rows: list[dict]) -> str:
    head = f"{'game':<18}{'frames':>8}{'vars':>6}{'total s':>9}{'load':>7}{'feat':>7}{'fit':>7}{'epochs':>8}{'F1':>7}"
    lines = [head]
    for r in rows:
        n = sum(r["frames"].values())
        epochs = max(r["epochs"].values())
        lines.append(
            f"{r['game']:<18}{n:>8}{r['variables']:>6}{r['seconds']:>9.1f}{r['load_s']:>7.1f}"
            f"{r['features_s']:>7.1f}{r['fit_s']:>7.1f}{epochs:>8}{r['mean_f1']:>7.3f}"
        )
    return "\n".join(lines)


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


def options() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 games, 2,000 frames, short scaling: a smoke run")
    p.add_argument("--workers", type=int, default=2, help="processes sharing the games (the goal: 2 cores)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each worker")
    p.add_argument("--frames", type=int, default=20_000, help="frames per game of the whole evaluation")
    p.add_argument("--games", nargs="+", default=None, help="default: every annotated game")
    p.add_argument("--r50-games", nargs="+", default=["pong"], help="games resnet50 runs in full on")
    p.add_argument("--r50-frames", type=int, default=2_000, help="their frames per game")
    p.add_argument("--scale-game", default="breakout")
    p.add_argument("--scale-frames", nargs="+", type=int, default=[2_500, 5_000, 10_000, 20_000])
    args = p.parse_args()
    if args.quick:
        args.frames, args.games, args.r50_frames = 2_000, ["boxing", "breakout", "pong"], 1_000
        args.scale_frames = [1_000, 2_000]
    return args


def main() -> None:
    from atari_pb.probes.annotations import annotated_games

    args = options()
    games = args.games or annotated_games()
    torch.set_num_threads(args.threads)
    record: dict = {"options": vars(args), "machine": machine(), "load_average": os.getloadavg()}
    t_start = time.perf_counter()

    data = probe_data(args.frames, games)
    log(f"tiny on {len(games)} games x {args.frames} frames, {args.workers} workers x {args.threads} threads")
    tiny, wall = run_games("tiny", data, games, args.workers, args.threads)
    print(table(tiny), flush=True)
    record["tiny"] = {"games": tiny, "total": summarize(tiny), "wall_s": wall}

    rates = {
        p_: {b: forward_rate(p_, 512 if p_ == "tiny" else 128, b) for b in (64, 256)}
        for p_ in ("tiny", "resnet50")
    }  # one process at `threads` threads: a worker's rate
    record["forward_frames_per_s"] = rates
    recompute = sum(recompute_estimate(r, rates["tiny"][64]) for r in tiny)
    record["tiny"]["recomputed_features_s"] = float(recompute) / args.workers

    r50_data = probe_data(args.r50_frames, args.r50_games)
    log(f"resnet50 on {args.r50_games} x {args.r50_frames} frames")
    r50 = [run_game("resnet50", r50_data, g) for g in args.r50_games]
    print(table(r50), flush=True)
    total_frames = sum(sum(r["frames"].values()) for r in tiny)
    fit_per_frame = sum(r["fit_s"] / r["frames"]["train"] for r in r50) / len(r50)
    serial = (
        total_frames / rates["resnet50"][256]  # features
        + record["tiny"]["total"]["load_s"]
        + fit_per_frame * sum(r["frames"]["train"] for r in tiny)
    )
    record["resnet50"] = {
        "games": r50,
        "extrapolated_s": serial / args.workers,  # at --frames, the games shared by the workers
        "extrapolated_20000_s": serial / args.workers * 20_000 / args.frames,  # linear in frames (see 4)
        "recomputed_features_s": float(sum(recompute_estimate(r, rates["resnet50"][64]) for r in tiny))
        / args.workers,
    }

    scale = []
    for n in args.scale_frames:
        row = run_game("tiny", probe_data(n, [args.scale_game]), args.scale_game)
        scale.append({"frames_per_game": n, **row})
    print(table(scale), flush=True)
    record["scaling"] = scale
    by_frames = {r["frames_per_game"]: r["seconds"] for r in scale}
    if 20_000 in by_frames and args.frames in by_frames and args.frames != 20_000:
        ratio = by_frames[20_000] / by_frames[args.frames]  # the scaling game's time ratio
        record["tiny"]["extrapolated_20000_s"] = wall * ratio
    record["seconds"] = time.perf_counter() - t_start
    report(record)
    path = OUT / ("probe.quick.json" if args.quick else "probe.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, default=float) + "\n")
    log(f"wrote {path}")


def report(record: dict) -> None:
    t, rates, o = record["tiny"], record["forward_frames_per_s"], record["options"]
    total = t["total"]
    print(
        f"\ntiny, {total['games']} games x {o['frames']} frames, {o['workers']} workers x {o['threads']} "
        f"threads: {t['wall_s']:.0f} s wall; summed over games {total['seconds']:.0f} s (load {total['load_s']:.0f}, "
        f"features {total['features_s']:.0f}, fit {total['fit_s']:.0f}, rest {total['rest_s']:.0f}), CPU "
        f"{total['cpu_seconds']:.0f} s; load average {record['load_average'][0]:.1f} at the start"
    )
    at_20k = t.get("extrapolated_20000_s", t["wall_s"] if o["frames"] == 20_000 else None)
    if "extrapolated_20000_s" in t:
        print(f"tiny at 20,000 frames/game (scaled by the scaling run): {at_20k:.0f} s")
    if at_20k is not None:
        print(
            f"goal: under {GOAL_SECONDS:.0f} s at 20,000 frames/game: {'met' if at_20k < GOAL_SECONDS else 'not met'}"
        )
    print(
        f"features recomputed per variable (AtariARI's loop), features alone, wall on the workers: tiny "
        f"{t['recomputed_features_s'] / 3600:.1f} h against {total['features_s'] / o['workers']:.0f} s cached; "
        f"resnet50 {record['resnet50']['recomputed_features_s'] / 3600:.0f} h"
    )
    print(
        "forward rates of one worker (frames/s, batch 64 / 256): "
        + ", ".join(f"{p} {r[64]:.0f} / {r[256]:.0f}" for p, r in rates.items())
    )
    r50 = record["resnet50"]
    print(
        f"resnet50, every game, extrapolated: {r50['extrapolated_s'] / 3600:.2f} h at "
        f"{o['frames']} frames/game, {r50['extrapolated_20000_s'] / 3600:.2f} h at 20,000"
    )
    print(
        "scaling (tiny, "
        + record["scaling"][0]["game"]
        + ", one process): "
        + ", ".join(f"{r['frames_per_game']}: {r['seconds']:.1f} s" for r in record["scaling"])
    )


if __name__ == "__main__":
    main()
