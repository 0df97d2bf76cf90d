"""Data commands: list what can be named, collect (and collect-probes), download, ingest, verify."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from atari_pb.cli.core import command, error_line, registry_names, selection_args, skip_missing_arg
from atari_pb.config import config_root, dataset_file, load_config
from atari_pb.errors import UsageError

log = logging.getLogger("atari_pb")


def _selection(schema: type, args: argparse.Namespace, overrides: list[str]):
    """The selection from --dataset (if any), then the overrides (the flags' first, see core.ALIASES)."""
    path = dataset_file(args.dataset) if args.dataset is not None else None
    return load_config(schema, path, overrides)


def _dataset_config(args: argparse.Namespace, overrides: list[str]):
    from atari_pb.data.dataset import DatasetConfig

    return _selection(DatasetConfig, args, overrides)


def _games(names):
    from atari_pb.games import resolve_games

    return resolve_games(names)


def cmd_list(args: argparse.Namespace, overrides: list[str]) -> int:
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


def cmd_collect(args: argparse.Namespace, overrides: list[str]) -> int:
    from atari_pb.data.collect import collect

    cfg = _dataset_config(args, overrides)
    if cfg.layout != "dqn_replay":  # the released Far-OOD layout is only read (ingest)
        raise UsageError(
            f"collect writes DQN-Replay trees; layout={cfg.layout} is a layout ingest reads (downloaded by hand)"
        )
    collect(args.out, _games(cfg.games), cfg.runs, cfg.ckpts, cfg.collect)
    log.info("collected into %s", args.out)
    return 0


def cmd_collect_probes(args: argparse.Namespace, overrides: list[str]) -> int:
    from atari_pb.probes.data import ProbeDatasetConfig, collect_probes

    cfg = _selection(ProbeDatasetConfig, args, overrides)
    collected = collect_probes(args.dst, cfg)
    log.info("collect-probes: %d games collected into %s", len(collected), args.dst)
    return 0


def cmd_download(args: argparse.Namespace, overrides: list[str]) -> int:
    from atari_pb.data.download import SOURCES, download

    cfg = _dataset_config(args, overrides)
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

    cfg = _dataset_config(args, overrides)
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
        error_line(line)
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

    problems = verify(args.dst)
    for line in problems:
        sys.stderr.write(f"atari-pb: bad shard: {line}\n")
    if problems:
        return 1
    log.info("verify %s: every shard matches the manifest", args.dst)
    return 0


def _register_collect(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "collect", cmd_collect, "play games through ale-py and write DQN-Replay files")
    p.add_argument("out", type=Path, help="root of the DQN-Replay tree to write")
    selection_args(p, samples=False)
    p.add_argument(
        "--transitions", type=int, help="transitions per checkpoint (collect.transitions_per_ckpt)"
    )
    p.add_argument(
        "--policy",
        help="random, or eps-greedy:<agent.safetensors> (finetune --protocol rainbow --save-agent)",
    )
    p.add_argument("--seed", type=int)

    p = command(
        sub,
        "collect-probes",
        cmd_collect_probes,
        "play the AtariARI-annotated games: frame stacks labelled with their RAM bytes, one HDF5 per game",
    )
    p.add_argument("dst", type=Path, help="directory of <game>.h5 files and their manifest.json")
    p.add_argument(
        "--dataset",
        help="a probe dataset YAML, or a name in datasets/ (probes, probes_demo); default: what probes.yaml says",
    )
    p.add_argument("--games", nargs="+", help="annotated games, or splits (their annotated games)")


def _register_download(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "download",
        cmd_download,
        "fetch DQN-Replay or its RL Unplugged copy over HTTPS (prefix-streaming, resumable)",
    )
    p.add_argument("dest", type=Path, help="root of the local tree (the server's layout)")
    selection_args(p)
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
    skip_missing_arg(p)
    p.add_argument("--retries", type=int, default=5)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument(
        "--no-fallback",
        action="store_true",
        help="exactly the checkpoints asked for: a missing checkpoint 50 is an error instead of being "
        "replaced by 49, then 48, as the released Atari-PB script does (recorded in <Game>/<run>/download.json)",
    )


def _register_ingest(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "ingest", cmd_ingest, "DQN-Replay checkpoints -> HDF5 shards + manifest.json")
    p.add_argument("src", type=Path, help="root of a DQN-Replay tree")
    p.add_argument("dst", type=Path, help="shard directory")
    selection_args(p)
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
    skip_missing_arg(p)

    p = command(
        sub,
        "verify",
        cmd_verify,
        "re-hash shards against the manifest, check shapes and dtypes",
        overrides=False,
    )
    p.add_argument("dst", type=Path, help="shard directory")


def register(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub, "list", cmd_list, "what can be named: objectives, protocols, presets, splits", overrides=False
    )
    p.add_argument("what", nargs="?", help="one of objectives, protocols, presets, splits (one name a line)")
    _register_collect(sub)
    _register_download(sub)
    _register_ingest(sub)
