"""`atari-pb finetune`: fine-tune encoders on a split's games and seeds (locally or on Ray); write records."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from atari_pb.cli.core import command, error_line
from atari_pb.errors import UsageError

log = logging.getLogger("atari_pb")


def _jobs(args: argparse.Namespace, overrides: list[str]) -> list:
    """Every (encoder, split, game, seed) job, with the checkpoint settings."""
    from atari_pb.finetune.run import check_fleetable, games_by_split, plan

    # `eval.<key>=value` overrides go to eval/<split>.yaml (e.g. eval.env.horizon=2000; --episodes is
    # eval.episodes), the rest to the protocol's YAML
    eval_overrides = [o.removeprefix("eval.") for o in overrides if o.startswith("eval.")]
    overrides = [o for o in overrides if not o.startswith("eval.")]
    if args.fleet:  # before any data is read
        check_fleetable(args.protocol, args.encoder)
    if args.method and len(args.encoder) > 1:
        raise UsageError("--method names one encoder's results; give it with a single --encoder")
    jobs = [
        job
        for encoder in args.encoder
        for split, games in games_by_split(args.split, args.games or []).items()
        for job in plan(
            args.protocol,
            encoder,
            split,
            games,
            args.seeds,
            args.results,
            args.data,
            args.method,
            args.preset,
            overrides,
            eval_overrides,
            args.save_agent,
        )
    ]
    if args.checkpoint_every < 0:
        raise UsageError(f"--checkpoint-every {args.checkpoint_every}: must be >= 0")
    if args.fleet_size is not None and args.fleet_size < 1:
        raise UsageError(f"--fleet-size {args.fleet_size}: must be >= 1")
    checkpoints = str(args.checkpoints or args.results / ".checkpoints")
    return [
        dataclasses.replace(
            job,
            checkpoints=checkpoints,
            checkpoint_every=args.checkpoint_every,
            keep_checkpoint=args.keep_checkpoints,
            fleet=args.fleet,
        )
        for job in jobs
    ]


def _on_ray(args: argparse.Namespace, jobs: list, fleet_size: int) -> tuple[list, list[str]]:
    from atari_pb.finetune.ray_backend import RayOptions, finetune_on_ray

    if args.cpus_per_job <= 0 or args.gpus_per_job < 0 or args.max_retries < 0:
        raise UsageError("--cpus-per-job must be > 0, --gpus-per-job and --max-retries >= 0")
    options = RayOptions(
        args.address,
        args.cpus_per_job,
        args.gpus_per_job,
        args.max_retries,
        logging.getLevelName(log.getEffectiveLevel()),
    )
    return finetune_on_ray(jobs, options, fleet_size)


def cmd_finetune(args: argparse.Namespace, overrides: list[str]) -> int:
    from atari_pb.finetune.run import finetune
    from atari_pb.finetune.sizing import DEFAULT_FLEET_SIZE, fleet_size_for

    if args.workers < 1:
        raise UsageError(f"--workers {args.workers}: must be >= 1")
    jobs = _jobs(args, overrides)
    fleet_size = (args.fleet_size or DEFAULT_FLEET_SIZE) if args.fleet else 0
    if args.fleet and args.backend == "local":  # sized to this machine (Ray: each task declares its memory)
        fleet_size = fleet_size_for(jobs, args.fleet_size, args.workers)
    if args.backend == "ray":
        written, errors = _on_ray(args, jobs, fleet_size)
    else:
        written, errors = finetune(jobs, args.workers, fleet_size)
    for line in errors:
        error_line(line)
    log.info(
        "finetune: %d records written, %d failed, results in %s", len(written), len(errors), args.results
    )
    return 1 if errors else 0


def _sweep_args(p: argparse.ArgumentParser) -> None:
    """Where and how the jobs run: checkpoints, the backend, fleets, Ray's resources."""
    p.add_argument(
        "--checkpoints",
        type=Path,
        help="where resumable jobs (offline_bc, rainbow) keep their checkpoints, <dir>/<method>/<protocol>/"
        "<game>/seed<k>/; a job run again continues from its own (default: <results>/.checkpoints)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=5000,
        help="gradient updates between a job's checkpoints; 0: none (default 5000)",
    )
    p.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep each job's last checkpoint once its record is written",
    )
    p.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="local: a process pool of --workers on this machine (default); ray: every job a Ray task "
        "(pip install 'atari-pb[ray]'; README: scaling out)",
    )
    p.add_argument(
        "--fleet",
        action="store_true",
        help="train the agents that share one frozen backbone (an encoder's games x seeds) in lockstep in one "
        "process, one backbone pass for all (protocols that train fleets: offline_bc, rainbow; not e2e)",
    )
    p.add_argument(
        "--fleet-size",
        type=int,
        help="--fleet: at most this many agents a fleet (default 16, or fewer if their replays would not fit in "
        "memory; a size that does not fit is refused)",
    )
    p.add_argument(
        "--address", help="--backend ray: the cluster's address (default: start Ray on this machine)"
    )
    p.add_argument("--cpus-per-job", type=float, default=1.0, help="--backend ray: CPUs each job declares")
    p.add_argument(
        "--gpus-per-job",
        type=float,
        default=0.0,
        help="--backend ray: GPUs each job declares (0.5: two per GPU)",
    )
    p.add_argument(
        "--max-retries", type=int, default=3, help="--backend ray: re-runs of a job whose worker or node died"
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "finetune",
        cmd_finetune,
        "fine-tune an encoder on a split's games and seeds; write results records",
    )
    p.add_argument("--protocol", required=True, help="{protocols} (finetune/<protocol>.yaml)")
    p.add_argument(
        "--encoder",
        required=True,
        nargs="+",
        help="exported encoder.safetensors files and/or baselines (random, e2e): their jobs share the workers",
    )
    p.add_argument("--split", required=True, nargs="+", help="one or more of {splits} (eval/<split>.yaml)")
    p.add_argument("--games", nargs="+", help="a subset of the splits' games (default: all of them)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--results", type=Path, default=Path("results"), help="results directory")
    p.add_argument("--data", type=Path, help="shard directory of the games' offline data (offline_bc)")
    p.add_argument("--workers", type=int, default=1, help="(game, seed) jobs run at once")
    p.add_argument("--method", help="the name in the tables (default: the encoder's objective or baseline)")
    p.add_argument("--preset", default="resnet50", help="backbone of the random / e2e baselines: {presets}")
    p.add_argument("--episodes", type=int, help="evaluation episodes per game and seed (eval/<split>.yaml)")
    p.add_argument("--eval-envs", type=int, help="parallel evaluation environments")
    p.add_argument(
        "--save-agent",
        action="store_true",
        help="keep each trained agent in <results>/<method>/<protocol>/<game>/agents/ "
        "(for collect --policy eps-greedy:<agent>; protocols that can save agents, e.g. rainbow)",
    )
    _sweep_args(p)
