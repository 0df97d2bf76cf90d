"""The `atari-pb` command line: one subcommand per step of the pipeline, `key=value` overrides anywhere.

Errors in the request (unknown game, bad key, missing path) print one line and exit 2 with nothing
written; errors in the data (truncated file, hash mismatch) print one line each and exit 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from atari_pb.config import CONFIG_ROOT_ENV, config_root, dataset_file, load_config
from atari_pb.errors import AtariPBError, UsageError

log = logging.getLogger("atari_pb")


def registry_names() -> dict[str, list[str]]:
    """What can be named on the command line, read from the registries (not a list kept here)."""
    from atari_pb.finetune.base import protocol_names
    from atari_pb.games import SPLITS
    from atari_pb.models.backbone import PRESET_NAMES
    from atari_pb.objectives import OBJECTIVES

    return {
        "objectives": sorted(OBJECTIVES),
        "protocols": protocol_names(),
        "presets": list(PRESET_NAMES),
        "splits": list(SPLITS),
    }


class _RegistryHelp(argparse.HelpFormatter):
    """Help strings may say {objectives}, {protocols}, {presets} or {splits}: filled from the registries
    when help is shown, so an ordinary command does not pay for importing every module."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "{" in text:
            text = text.format(**{k: ", ".join(v) for k, v in registry_names().items()})
        return text


def _split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """`key=value` tokens are config overrides; everything else is for argparse."""
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    rest = [a for a in argv if a not in overrides]
    return rest, overrides


def _selection_args(p: argparse.ArgumentParser, samples: bool = True) -> None:
    p.add_argument(
        "--dataset",
        help="a dataset YAML, or a name in datasets/ (demo, ...): games, runs, ckpts, samples_per_ckpt",
    )
    p.add_argument("--games", nargs="+", help="game names or splits (id, near_ood, far_ood)")
    p.add_argument("--runs", nargs="+", type=int)
    p.add_argument("--ckpts", nargs="+", type=int)
    if samples:
        p.add_argument("--samples-per-ckpt", type=int, help="first N transitions of each checkpoint")


def _skip_missing_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--skip-missing-games",
        action="store_true",
        help="RL Unplugged: go on with the games it has instead of stopping at those it lacks",
    )


def _dataset_config(args: argparse.Namespace, overrides: list[str]):
    """The selection from --dataset (if any), the flags on top, then key=value overrides."""
    from atari_pb.data.dataset import DatasetConfig

    flags = []
    for key in ("games", "runs", "ckpts"):
        if getattr(args, key, None):
            flags.append(f"{key}=[{','.join(map(str, getattr(args, key)))}]")
    if getattr(args, "samples_per_ckpt", None) is not None:
        flags.append(f"samples_per_ckpt={args.samples_per_ckpt}")
    if getattr(args, "transitions", None) is not None:
        flags.append(f"collect.transitions_per_ckpt={args.transitions}")
    for key in ("policy", "seed"):
        if getattr(args, key, None) is not None:
            flags.append(f"collect.{key}={getattr(args, key)}")
    path = dataset_file(args.dataset) if args.dataset is not None else None
    return load_config(DatasetConfig, path, [*flags, *overrides])


def _games(names: Sequence[str]):
    from atari_pb.games import resolve_games

    return resolve_games(names)


def _dqn_replay_only(cfg, command: str) -> None:
    """collect and download write DQN-Replay trees; the released Far-OOD layout is only read (ingest)."""
    if cfg.layout != "dqn_replay":
        raise UsageError(
            f"{command} writes DQN-Replay trees; layout={cfg.layout} is a layout ingest reads (downloaded by hand)"
        )


def cmd_collect(args: argparse.Namespace, overrides: list[str]) -> int:
    from atari_pb.data.collect import collect

    cfg = _dataset_config(args, overrides)
    _dqn_replay_only(cfg, "collect")
    collect(args.out, _games(cfg.games), cfg.runs, cfg.ckpts, cfg.collect)
    log.info("collected into %s", args.out)
    return 0


def cmd_collect_probes(args: argparse.Namespace, overrides: list[str]) -> int:
    from atari_pb.probes.data import ProbeDatasetConfig, collect_probes

    flags = [f"games=[{','.join(args.games)}]"] if args.games else []
    path = dataset_file(args.dataset) if args.dataset is not None else None
    cfg = load_config(ProbeDatasetConfig, path, [*flags, *overrides])
    collected = collect_probes(args.dst, cfg)
    log.info("collect-probes: %d games collected into %s", len(collected), args.dst)
    return 0


def cmd_download(args: argparse.Namespace, overrides: list[str]) -> int:
    from atari_pb.data.download import SOURCES, download

    cfg = _dataset_config(args, [*([f"layout={args.source}"] if args.source else []), *overrides])
    if cfg.layout not in SOURCES:
        raise UsageError(
            f"download fetches {' or '.join(SOURCES)}; layout={cfg.layout} is a layout ingest reads (downloaded by hand)"
        )
    samples = None if args.whole else cfg.samples_per_ckpt
    report = download(
        args.dest,
        _games(cfg.games),
        cfg.runs,
        cfg.ckpts,
        samples_per_ckpt=samples,
        **({"base_url": args.base_url} if args.base_url else {}),
        retries=args.retries,
        timeout=args.timeout,
        fallback=not args.no_fallback,
        source=cfg.layout,
        skip_missing_games=args.skip_missing_games,
    )
    log.info("download: %s", report)
    return 0


def cmd_ingest(args: argparse.Namespace, overrides: list[str]) -> int:
    from atari_pb.data.ingest import ingest

    cfg = _dataset_config(args, [*([f"layout={args.layout}"] if args.layout else []), *overrides])
    if cfg.samples_per_ckpt is None:
        raise UsageError("ingest needs --samples-per-ckpt N (or a --dataset file that sets samples_per_ckpt)")
    if args.workers < 1:
        raise UsageError(f"--workers {args.workers}: must be >= 1")
    report = ingest(
        args.src,
        args.dst,
        _games(cfg.games),
        cfg.runs,
        cfg.ckpts,
        cfg.samples_per_ckpt,
        args.workers,
        args.full_check,
        cfg.layout,
        args.skip_missing_games,
    )
    for line in report.errors:
        print(f"atari-pb: error: {line}", file=sys.stderr)
    log.info(
        "ingest %s: %d built, %d already finished, %d failed",
        args.dst,
        len(report.built),
        len(report.skipped),
        len(report.errors),
    )
    return 1 if report.errors else 0


def cmd_verify(args: argparse.Namespace, overrides: list[str]) -> int:
    from atari_pb.data.ingest import verify

    if overrides:
        raise UsageError(f"verify takes no overrides (got {' '.join(overrides)})")
    problems = verify(args.dst)
    for line in problems:
        print(f"atari-pb: bad shard: {line}", file=sys.stderr)
    if problems:
        return 1
    log.info("verify %s: every shard matches the manifest", args.dst)
    return 0


def cmd_pretrain(args: argparse.Namespace, overrides: list[str]) -> int:
    from atari_pb.pretrain.config import load_pretrain_config
    from atari_pb.pretrain.runner import pretrain

    flags = {
        "model.preset": args.preset,
        "trainer.steps": args.steps,
        "trainer.batch_size": args.batch_size,
        "trainer.save_every": args.save_every,
    }
    overrides = [f"{k}={v}" for k, v in flags.items() if v is not None] + overrides
    config = args.config
    if args.resume and (args.out / "checkpoint.pt").is_file():
        from atari_pb.pretrain.checkpoint import KIND, load_checkpoint

        made_by = load_checkpoint(args.out / "checkpoint.pt", KIND)["objective_name"]
        if made_by != args.objective:
            raise UsageError(f"{args.out / 'checkpoint.pt'} is a {made_by} checkpoint, not {args.objective}")
        if config is None:
            config = args.out / "config.yaml"  # continue with the run's own settings; overrides still apply
    cfg = load_pretrain_config(args.objective, overrides, config)
    pretrain(args.objective, args.data, args.out, cfg, resume=args.resume)
    return 0


def cmd_export_encoder(args: argparse.Namespace, overrides: list[str]) -> int:
    from atari_pb.pretrain.runner import export_from_run

    if overrides:
        raise UsageError(f"export-encoder takes no overrides (got {' '.join(overrides)})")
    path = export_from_run(args.run, args.out)
    log.info("wrote %s and %s", path, path.with_suffix(".json"))
    return 0


def cmd_import_encoder(args: argparse.Namespace, overrides: list[str]) -> int:
    from atari_pb.models.official import import_official

    if overrides:
        raise UsageError(f"import-encoder takes no overrides (got {' '.join(overrides)})")
    path = import_official(args.checkpoint, args.objective, args.out, trust_pickle=args.trust_pickle)
    log.info("wrote %s and %s", path, path.with_suffix(".json"))
    return 0


def _eval_records(results: Path):
    """Records of a results directory; an empty one is a request error (nothing to aggregate)."""
    from atari_pb.eval.records import read_records

    if not log.isEnabledFor(logging.DEBUG):
        logging.getLogger("absl").setLevel(logging.WARNING)  # rliable logs a line per bootstrap at INFO

    records = read_records(results)
    if not records:
        raise UsageError(
            f"no results records in {results} (expected <method>/<protocol>/<game>/seed<k>.json)"
        )
    return records


def cmd_eval(args: argparse.Namespace, overrides: list[str]) -> int:
    from atari_pb.eval.scores import NORMALIZATIONS
    from atari_pb.finetune.base import protocol_class
    from atari_pb.games import SPLITS

    if overrides:
        raise UsageError(f"eval takes no overrides (got {' '.join(overrides)})")
    # Checked here rather than with argparse choices: a bad value is one line on stderr, like every error.
    if args.split not in SPLITS:
        raise UsageError(f"unknown split {args.split!r}; valid splits: {', '.join(SPLITS)}")
    for protocol in args.protocol or ():
        protocol_class(protocol)  # an unknown name: one line with the valid ones
    if args.normalization not in NORMALIZATIONS:
        raise UsageError(f"unknown normalization {args.normalization!r}; valid: {', '.join(NORMALIZATIONS)}")
    records = _eval_records(args.results)
    from atari_pb.eval.aggregate import aggregate
    from atari_pb.eval.leaderboard import SPLIT_TITLES, markdown_table, warn_mixed

    rows = aggregate(records, args.split, args.normalization, args.reps, args.seed, args.protocol)
    warn_mixed(rows, SPLIT_TITLES[args.split])  # the table says it too, in a line above it
    sys.stdout.write(markdown_table(rows))
    return 0


def cmd_leaderboard(args: argparse.Namespace, overrides: list[str]) -> int:
    if overrides:
        raise UsageError(f"leaderboard takes no overrides (got {' '.join(overrides)})")
    if args.reps < 1:
        raise UsageError(f"--reps {args.reps}: the bootstrap needs at least 1 replication")
    records = _eval_records(args.results)
    from atari_pb.eval.leaderboard import write_leaderboard

    written = write_leaderboard(records, args.out, args.reps, args.seed)
    log.info("leaderboard: wrote %d files to %s (open %s)", len(written), args.out, args.out / "index.html")
    return 0


def cmd_finetune(args: argparse.Namespace, overrides: list[str]) -> int:
    from atari_pb.finetune.run import check_fleetable, finetune, games_by_split, plan
    from atari_pb.finetune.sizing import DEFAULT_FLEET_SIZE, fleet_size_for

    if args.workers < 1:
        raise UsageError(f"--workers {args.workers}: must be >= 1")
    # `eval.<key>=value` overrides go to eval/<split>.yaml (e.g. eval.env.horizon=2000), the rest to the
    # protocol's YAML
    eval_overrides = [
        f"{k}={v}" for k, v in (("episodes", args.episodes), ("num_envs", args.eval_envs)) if v is not None
    ] + [o.removeprefix("eval.") for o in overrides if o.startswith("eval.")]
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
    jobs = [
        dataclasses.replace(
            job,
            checkpoints=checkpoints,
            checkpoint_every=args.checkpoint_every,
            keep_checkpoint=args.keep_checkpoints,
            fleet=args.fleet,
        )
        for job in jobs
    ]
    fleet_size = (args.fleet_size or DEFAULT_FLEET_SIZE) if args.fleet else 0
    if args.fleet and args.backend == "local":  # sized to this machine (Ray: each task declares its memory)
        fleet_size = fleet_size_for(jobs, args.fleet_size, args.workers)
    if args.backend == "ray":
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
        written, errors = finetune_on_ray(jobs, options, fleet_size)
    else:
        written, errors = finetune(jobs, args.workers, fleet_size)
    for line in errors:
        print(f"atari-pb: error: {line}", file=sys.stderr)
    log.info(
        "finetune: %d records written, %d failed, results in %s", len(written), len(errors), args.results
    )
    return 1 if errors else 0


def cmd_prend(args: argparse.Namespace, overrides: list[str]) -> int:
    from atari_pb.games import get_game
    from atari_pb.prend.config import load_prend_config
    from atari_pb.prend.runner import default_out, train_prend

    game = get_game(args.game)
    out = args.out or default_out(game, args.encoder)
    flags = {"train.env_steps": args.steps, "train.seed": args.seed}
    overrides = [f"{k}={v}" for k, v in flags.items() if v is not None] + overrides
    config = args.config
    if args.resume and config is None and (out / "config.yaml").is_file():
        config = out / "config.yaml"  # continue with the run's own settings; overrides still apply
    train_prend(game, args.encoder, out, load_prend_config(overrides, config), resume=args.resume)
    return 0


def cmd_list(args: argparse.Namespace, overrides: list[str]) -> int:
    if overrides:
        raise UsageError(f"list takes no overrides (got {' '.join(overrides)})")
    names = registry_names()
    if args.what is not None:
        if args.what not in names:
            raise UsageError(f"list {args.what!r}: valid: {', '.join(names)}")
        sys.stdout.write("".join(f"{name}\n" for name in names[args.what]))
        return 0
    for kind, values in names.items():
        sys.stdout.write(f"{kind}: {', '.join(values)}\n")
    sys.stdout.write(f"config root: {config_root()}\n")
    return 0


class _Parser(argparse.ArgumentParser):
    """Every (sub)command's help fills {objectives} etc. from the registries (subparsers take this class)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _RegistryHelp)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="atari-pb",
        description="Atari pre-training benchmark. Config overrides are key=value arguments anywhere.",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument(
        "--config-root",
        type=Path,
        help=f"folder holding datasets/ objectives/ finetune/ eval/ prend/ (default: the package's; also ${CONFIG_ROOT_ENV})",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("list", help="what can be named: objectives, protocols, presets, splits")
    p.add_argument("what", nargs="?", help="one of objectives, protocols, presets, splits (one name a line)")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("collect", help="play games through ale-py and write DQN-Replay files")
    p.add_argument("out", type=Path, help="root of the DQN-Replay tree to write")
    _selection_args(p, samples=False)
    p.add_argument(
        "--transitions", type=int, help="transitions per checkpoint (collect.transitions_per_ckpt)"
    )
    p.add_argument(
        "--policy",
        help="random, or eps-greedy:<agent.safetensors> (finetune --protocol rainbow --save-agent)",
    )
    p.add_argument("--seed", type=int)
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser(
        "collect-probes",
        help="play the AtariARI-annotated games: frame stacks labelled with their RAM bytes, one HDF5 per game",
    )
    p.add_argument("dst", type=Path, help="directory of <game>.h5 files and their manifest.json")
    p.add_argument(
        "--dataset",
        help="a probe dataset YAML, or a name in datasets/ (probes, probes_demo); default: what probes.yaml says",
    )
    p.add_argument("--games", nargs="+", help="annotated games, or splits (their annotated games)")
    p.set_defaults(func=cmd_collect_probes)

    p = sub.add_parser(
        "download", help="fetch DQN-Replay or its RL Unplugged copy over HTTPS (prefix-streaming, resumable)"
    )
    p.add_argument("dest", type=Path, help="root of the local tree (the server's layout)")
    _selection_args(p)
    p.add_argument(
        "--source",
        choices=("dqn_replay", "rlu"),
        help="dqn_replay (default; the public bucket refuses access since 2025: for mirrors) or rlu (RL "
        "Unplugged Atari, the same runs, 46 games)",
    )
    p.add_argument(
        "--whole",
        action="store_true",
        help="download whole observation (RLU: checkpoint) files, not just the prefix",
    )
    p.add_argument(
        "--base-url",
        default=None,
        help="where the tree is served (default: the public DQN-Replay bucket, or RL Unplugged's for --source rlu)",
    )
    _skip_missing_arg(p)
    p.add_argument("--retries", type=int, default=5)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument(
        "--no-fallback",
        action="store_true",
        help="exactly the checkpoints asked for: a missing checkpoint 50 is an error instead of being "
        "replaced by 49, then 48, as the released Atari-PB script does (recorded in <Game>/<run>/download.json)",
    )
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("ingest", help="DQN-Replay checkpoints -> HDF5 shards + manifest.json")
    p.add_argument("src", type=Path, help="root of a DQN-Replay tree")
    p.add_argument("dst", type=Path, help="shard directory")
    _selection_args(p)
    p.add_argument("--workers", type=int, default=1, help="shards built in parallel")
    p.add_argument(
        "--full-check",
        action="store_true",
        help="decompress whole observation files to check their CRC-32 (costs the full decompression)",
    )
    p.add_argument(
        "--layout",
        choices=("dqn_replay", "atari_pb_far_ood", "rlu"),
        help="source layout (default: the dataset's, dqn_replay): atari_pb_far_ood reads the released "
        "Far-OOD BC data, <Game>/<field>_<run>_<ckpt>.gz; rlu reads RL Unplugged, <Game>/run_<r>-<ckpt>-of-<N>",
    )
    _skip_missing_arg(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("verify", help="re-hash shards against the manifest, check shapes and dtypes")
    p.add_argument("dst", type=Path, help="shard directory")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("pretrain", help="pre-train the encoder under one objective (objectives/<name>.yaml)")
    p.add_argument("--objective", required=True, help="{objectives} (objectives/<name>.yaml)")
    p.add_argument("--data", type=Path, required=True, help="shard directory (atari-pb ingest)")
    p.add_argument("--out", type=Path, required=True, help="run directory: checkpoints, metrics, encoder")
    p.add_argument("--config", type=Path, help="a YAML to use instead of objectives/<name>.yaml")
    p.add_argument("--preset", help="backbone (model.preset): {presets}; resnet50 is the benchmark's")
    p.add_argument("--steps", type=int, help="trainer.steps")
    p.add_argument("--batch-size", type=int, help="global batch (trainer.batch_size)")
    p.add_argument("--save-every", type=int, help="trainer.save_every")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser(
        "finetune", help="fine-tune an encoder on a split's games and seeds; write results records"
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
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser(
        "prend", help="PPO exploration with an RND or PreND intrinsic reward, with the PreND diagnostics"
    )
    p.add_argument(
        "--encoder",
        required=True,
        help="an exported encoder.safetensors (PreND), random (RND), or none (PPO on the game's reward alone)",
    )
    p.add_argument("--game", required=True, help="the game to explore, e.g. boxing, riverraid")
    p.add_argument("--out", type=Path, help="run directory (default runs/prend/<game>-<prend|rnd|none>)")
    p.add_argument("--config", type=Path, help="a YAML to use instead of prend/prend.yaml")
    p.add_argument("--steps", type=int, help="agent steps summed over envs (train.env_steps)")
    p.add_argument("--seed", type=int, help="train.seed")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.set_defaults(func=cmd_prend)

    p = sub.add_parser("export-encoder", help="write a run's encoder as safetensors + JSON config")
    p.add_argument("run", type=Path, help="pre-training run directory")
    p.add_argument("--out", type=Path, required=True, help="encoder.safetensors to write")
    p.set_defaults(func=cmd_export_encoder)

    p = sub.add_parser(
        "import-encoder", help="convert a released Atari-PB checkpoint (.pth) to safetensors + JSON config"
    )
    p.add_argument("checkpoint", type=Path, help="a pre-trained checkpoint released by Atari-PB (.pth)")
    p.add_argument(
        "--objective",
        required=True,
        help="the objective it was pre-trained with: one of {objectives} that the released code trains",
    )
    p.add_argument("--out", type=Path, required=True, help="encoder.safetensors to write")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="load it even if it needs arbitrary pickle (which can execute code): only for trusted files",
    )
    p.set_defaults(func=cmd_import_encoder)

    p = sub.add_parser("eval", help="aggregate results records of one split (rliable) into a Markdown table")
    p.add_argument("--results", type=Path, required=True, help="results directory of fine-tuning records")
    p.add_argument("--split", required=True, help="{splits}")
    p.add_argument("--protocol", nargs="+", help="some of {protocols} (default: every one with results)")
    p.add_argument("--normalization", default="dqn", help="dqn (default) or human (ID and Near-OOD only)")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap replications for the 95%% CIs")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "leaderboard", help="tables (md, csv, tex, html) and figures of every split and protocol"
    )
    p.add_argument("results", type=Path, help="results directory of fine-tuning records")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap replications for the 95%% CIs")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.set_defaults(func=cmd_leaderboard)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest, overrides = _split_overrides(argv)
    args = build_parser().parse_args(rest)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.config_root is not None:
        os.environ[CONFIG_ROOT_ENV] = str(args.config_root)  # worker processes inherit it
    try:
        return args.func(args, overrides)
    except AtariPBError as err:
        print(f"atari-pb: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("atari-pb: interrupted", file=sys.stderr)
        return 130
