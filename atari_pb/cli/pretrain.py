"""Pre-training commands: pretrain an encoder, export it from a run, import a released checkpoint."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from atari_pb.cli.core import command, made_by
from atari_pb.config import config_names
from atari_pb.errors import UsageError

log = logging.getLogger("atari_pb")


def _making_shards(data: Path) -> str:
    """How to make a missing shard directory: `make data DATASET=<name>` writes data/shards/<name>."""
    if data.name in config_names("datasets"):
        return f"make data DATASET={data.name} (or atari-pb collect + ingest)"
    return "atari-pb collect (or download) + ingest"


def cmd_pretrain(args: argparse.Namespace, overrides: list[str]) -> int:
    from atari_pb.pretrain.config import load_pretrain_config
    from atari_pb.pretrain.runner import pretrain

    config = args.config
    if args.resume and (args.out / "checkpoint.pt").is_file():
        from atari_pb.pretrain.checkpoint import KIND, load_checkpoint

        made_with = load_checkpoint(args.out / "checkpoint.pt", KIND)["objective_name"]
        if made_with != args.objective:
            raise UsageError(
                f"{args.out / 'checkpoint.pt'} is a {made_with} checkpoint, not {args.objective}"
            )
        if config is None:
            config = args.out / "config.yaml"  # continue with the run's own settings; overrides still apply
    cfg = load_pretrain_config(args.objective, overrides, config)
    with made_by(args.data, lambda: _making_shards(args.data)):
        pretrain(args.objective, args.data, args.out, cfg, resume=args.resume)
    return 0


def cmd_export_encoder(args: argparse.Namespace, overrides: list[str]) -> int:
    from atari_pb.pretrain.runner import export_from_run

    path = export_from_run(args.run, args.out)
    log.info("wrote %s and %s", path, path.with_suffix(".json"))
    return 0


def cmd_import_encoder(args: argparse.Namespace, overrides: list[str]) -> int:
    from atari_pb.models.official import import_official

    path = import_official(args.checkpoint, args.objective, args.out, trust_pickle=args.trust_pickle)
    log.info("wrote %s and %s", path, path.with_suffix(".json"))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub, "pretrain", cmd_pretrain, "pre-train the encoder under one objective (objectives/<name>.yaml)"
    )
    p.add_argument("--objective", required=True, help="{objectives} (objectives/<name>.yaml)")
    p.add_argument("--data", type=Path, required=True, help="shard directory (atari-pb ingest)")
    p.add_argument("--out", type=Path, required=True, help="run directory: checkpoints, metrics, encoder")
    p.add_argument("--config", type=Path, help="a YAML to use instead of objectives/<name>.yaml")
    p.add_argument("--preset", help="backbone (model.preset): {presets}; resnet50 is the benchmark's")
    p.add_argument("--steps", type=int, help="trainer.steps")
    p.add_argument("--batch-size", type=int, help="global batch (trainer.batch_size)")
    p.add_argument("--save-every", type=int, help="trainer.save_every")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")

    p = command(
        sub,
        "export-encoder",
        cmd_export_encoder,
        "write a run's encoder as safetensors + JSON config",
        overrides=False,
    )
    p.add_argument("run", type=Path, help="pre-training run directory")
    p.add_argument("--out", type=Path, required=True, help="encoder.safetensors to write")

    p = command(
        sub,
        "import-encoder",
        cmd_import_encoder,
        "convert a released Atari-PB checkpoint (.pth) to safetensors + JSON config",
        overrides=False,
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
