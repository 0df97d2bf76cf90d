"""`atari-pb prend`: PPO exploration with an RND or PreND intrinsic reward (prend/prend.yaml)."""

from __future__ import annotations

import argparse
from pathlib import Path

from atari_pb.cli.core import command


def cmd_prend(args: argparse.Namespace, overrides: list[str]) -> int:
    from atari_pb.games import get_game
    from atari_pb.prend.config import load_prend_config
    from atari_pb.prend.runner import default_out, train_prend

    game = get_game(args.game)
    out = args.out or default_out(game, args.encoder)
    config = args.config
    if args.resume and config is None and (out / "config.yaml").is_file():
        config = out / "config.yaml"  # continue with the run's own settings; overrides still apply
    train_prend(game, args.encoder, out, load_prend_config(overrides, config), resume=args.resume)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "prend",
        cmd_prend,
        "PPO exploration with an RND or PreND intrinsic reward, with the PreND diagnostics",
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
