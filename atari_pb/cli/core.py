"""What every command shares: the parser class, `key=value` splitting, the one table of flag aliases, the one
guard for commands that take no overrides, and the arguments several commands take.

A flag that is only another spelling of a config key (`--steps` is `trainer.steps`) is listed in `ALIASES`
and nowhere else: `main` turns its value into `key=value` ahead of the user's own overrides, so an override
on the command line beats the flag, and the handler sees one list.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from atari_pb.errors import UsageError

Handler = Callable[[argparse.Namespace, list[str]], int]

# command -> {argparse dest: config key}. The value of each flag given becomes `key=value` (a list: `[a,b]`)
# before the user's overrides; finetune's `eval.` keys go to eval/<split>.yaml.
_SELECTION = {"games": "games", "runs": "runs", "ckpts": "ckpts", "samples_per_ckpt": "samples_per_ckpt"}
ALIASES: dict[str, dict[str, str]] = {
    "collect": {
        "games": "games",
        "runs": "runs",
        "ckpts": "ckpts",
        "transitions": "collect.transitions_per_ckpt",
        "policy": "collect.policy",
        "seed": "collect.seed",
    },
    "collect-probes": {"games": "games"},
    "download": {**_SELECTION, "source": "layout"},
    "ingest": {**_SELECTION, "layout": "layout"},
    "pretrain": {
        "preset": "model.preset",
        "steps": "trainer.steps",
        "batch_size": "trainer.batch_size",
        "save_every": "trainer.save_every",
    },
    "finetune": {"episodes": "eval.episodes", "eval_envs": "eval.num_envs"},
    "prend": {"steps": "train.env_steps", "seed": "train.seed"},
}


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


class RegistryHelp(argparse.HelpFormatter):
    """Help strings may say {objectives}, {protocols}, {presets} or {splits}: filled from the registries
    when help is shown, so an ordinary command does not pay for importing every module."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "{" in text:
            text = text.format(**{k: ", ".join(v) for k, v in registry_names().items()})
        return text


class Parser(argparse.ArgumentParser):
    """Every (sub)command's help fills {objectives} etc. from the registries (subparsers take this class)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", RegistryHelp)
        super().__init__(*args, **kwargs)


def command(
    sub: argparse._SubParsersAction, name: str, handler: Handler, help: str, overrides: bool = True
) -> argparse.ArgumentParser:
    """Add one subcommand run by `handler(args, overrides)`; `overrides=False`: it refuses `key=value`."""
    p = sub.add_parser(name, help=help)
    p.set_defaults(func=handler, takes_overrides=overrides)
    return p


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """`key=value` tokens are config overrides; everything else is for argparse."""
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    rest = [a for a in argv if a not in overrides]
    return rest, overrides


def _value(value: object) -> str:
    return f"[{','.join(map(str, value))}]" if isinstance(value, list) else str(value)


def with_flags(args: argparse.Namespace, overrides: list[str]) -> list[str]:
    """The command's overrides: its alias flags that were given (`ALIASES`), then the user's own.

    The one guard: a command registered with `overrides=False` refuses any `key=value`."""
    if overrides and not args.takes_overrides:
        raise UsageError(f"{args.command} takes no overrides (got {' '.join(overrides)})")
    aliases = ALIASES.get(args.command, {})
    flags = [
        f"{key}={_value(getattr(args, dest))}"
        for dest, key in aliases.items()
        if getattr(args, dest) is not None
    ]
    return [*flags, *overrides]


@contextmanager
def made_by(path: Path, how: str | Callable[[], str]) -> Iterator[None]:
    """A request error saying `path` does not exist gets one more clause: how to make it (still one line).
    `how` may be a function, called only then."""
    try:
        yield
    except UsageError as err:
        if Path(path).exists() or not str(err).endswith(f"{path} does not exist"):
            raise
        raise UsageError(f"{err}; make it with {how if isinstance(how, str) else how()}") from None


def error_line(text: str) -> None:
    """One `atari-pb: error:` line on stderr (the errors a command reports and goes on past)."""
    sys.stderr.write(f"atari-pb: error: {text}\n")


def selection_args(p: argparse.ArgumentParser, samples: bool = True) -> None:
    p.add_argument(
        "--dataset",
        help="a dataset YAML, or a name in datasets/ (demo, ...): games, runs, ckpts, samples_per_ckpt",
    )
    p.add_argument("--games", nargs="+", help="game names or splits (id, near_ood, far_ood)")
    p.add_argument("--runs", nargs="+", type=int)
    p.add_argument("--ckpts", nargs="+", type=int)
    if samples:
        p.add_argument("--samples-per-ckpt", type=int, help="first N transitions of each checkpoint")


def skip_missing_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--skip-missing-games",
        action="store_true",
        help="RL Unplugged: go on with the games it has instead of stopping at those it lacks",
    )
