"""Evaluation commands: `eval` (one split's Markdown table) and `leaderboard` (every table and figure)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from atari_pb.cli.core import command, made_by
from atari_pb.errors import UsageError

log = logging.getLogger("atari_pb")


def _eval_records(results: Path):
    """Records of a results directory; an empty one is a request error (nothing to aggregate)."""
    from atari_pb.eval.records import read_records

    if not log.isEnabledFor(logging.DEBUG):
        logging.getLogger("absl").setLevel(logging.WARNING)  # rliable logs a line per bootstrap at INFO

    with made_by(results, "make demo or make finetune (atari-pb finetune)"):
        records = read_records(results)
    if not records:
        raise UsageError(
            f"no results records in {results} (expected <method>/<protocol>/<game>/seed<k>.json)"
        )
    return records


def cmd_eval(args: argparse.Namespace, overrides: list[str]) -> int:
    from atari_pb.eval.scores import NORMALIZATIONS
    from atari_pb.games import SPLITS

    # Checked here rather than with argparse choices: a bad value is one line on stderr, like every error.
    if args.split not in SPLITS:
        raise UsageError(f"unknown split {args.split!r}; valid splits: {', '.join(SPLITS)}")
    if args.protocol:  # only then the registry (and torch): records say how they are scored
        from atari_pb.finetune.base import protocol_class

        for protocol in args.protocol:
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
    if args.reps < 1:
        raise UsageError(f"--reps {args.reps}: the bootstrap needs at least 1 replication")
    records = _eval_records(args.results)
    from atari_pb.eval.leaderboard import write_leaderboard

    written = write_leaderboard(records, args.out, args.reps, args.seed)
    log.info("leaderboard: wrote %d files to %s (open %s)", len(written), args.out, args.out / "index.html")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "eval",
        cmd_eval,
        "aggregate results records of one split (rliable) into a Markdown table",
        overrides=False,
    )
    p.add_argument("--results", type=Path, required=True, help="results directory of fine-tuning records")
    p.add_argument("--split", required=True, help="{splits}")
    p.add_argument("--protocol", nargs="+", help="some of {protocols} (default: every one with results)")
    p.add_argument("--normalization", default="dqn", help="dqn (default) or human (ID and Near-OOD only)")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap replications for the 95%% CIs")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")

    p = command(
        sub,
        "leaderboard",
        cmd_leaderboard,
        "tables (md, csv, tex, html) and figures of every split and protocol",
        overrides=False,
    )
    p.add_argument("results", type=Path, help="results directory of fine-tuning records")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap replications for the 95%% CIs")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
