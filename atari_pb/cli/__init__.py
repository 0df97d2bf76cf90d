"""The `atari-pb` command line: one subcommand per step of the pipeline, `key=value` overrides anywhere.

One module per stage keeps each command's arguments next to its handler: `data` (list, collect,
collect-probes, download, ingest, verify), `pretrain` (pretrain, export-encoder, import-encoder), `finetune`,
`prend`, `evaluate` (eval, leaderboard); `core` holds what they share (the flag aliases, the no-overrides
guard, the parser class).

Errors in the request (unknown game, bad key, missing path) print one line and exit 2 with nothing
written; errors in the data (truncated file, hash mismatch) print one line each and exit 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from atari_pb.cli import data, evaluate, finetune, prend, pretrain
from atari_pb.cli.core import Parser, registry_names, split_overrides, with_flags
from atari_pb.config import CONFIG_ROOT_ENV
from atari_pb.errors import AtariPBError

__all__ = ["build_parser", "main", "registry_names"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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
    for stage in (data, pretrain, finetune, prend, evaluate):
        stage.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest, overrides = split_overrides(argv)
    args = build_parser().parse_args(rest)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.config_root is not None:
        os.environ[CONFIG_ROOT_ENV] = str(args.config_root)  # worker processes inherit it
    try:
        return args.func(args, with_flags(args, overrides))
    except AtariPBError as err:
        sys.stderr.write(f"atari-pb: error: {err}\n")
        return err.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("atari-pb: interrupted\n")
        return 130
