"""The command line's shared parts (atari_pb/cli/core.py): the flag aliases, the no-overrides guard, and the
missing-input errors that say which command makes the input."""

from __future__ import annotations

import argparse

import pytest

from atari_pb.cli import build_parser, main
from atari_pb.cli.core import ALIASES
from tests.conftest import one_error_line, run_cli


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_alias_is_a_flag_of_its_command():
    commands = _subparsers(build_parser())
    for name, aliases in ALIASES.items():
        dests = {a.dest for a in commands[name]._actions}
        assert set(aliases) <= dests, (name, set(aliases) - dests)


@pytest.mark.parametrize(
    "argv",
    [
        ["list"],
        ["verify", "shards"],
        ["export-encoder", "run", "--out", "e.safetensors"],
        ["import-encoder", "c.pth", "--objective", "curl", "--out", "e.safetensors"],
        ["eval", "--results", "results", "--split", "id"],
        ["leaderboard", "results", "--out", "board"],
    ],
)
def test_commands_without_overrides_refuse_them(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "a.b=1", "c=2"]) == 2
    assert capsys.readouterr().err == f"atari-pb: error: {argv[0]} takes no overrides (got a.b=1 c=2)\n"
    assert list(tmp_path.iterdir()) == []


def test_missing_shard_directory_names_the_command_that_makes_it(tmp_path):
    args = ("pretrain", "--objective", "curl", "--data", "data/shards/demo", "--out", "runs/curl")
    line = one_error_line(run_cli(*args, cwd=tmp_path), 2)
    assert line == (
        "atari-pb: error: shard directory data/shards/demo does not exist; "
        "make it with make data DATASET=demo (or atari-pb collect + ingest)"
    )
    line = one_error_line(run_cli(*args[:4], "elsewhere", *args[5:], cwd=tmp_path), 2)
    assert line.endswith(
        "shard directory elsewhere does not exist; make it with atari-pb collect (or download) + ingest"
    )
    assert not (tmp_path / "runs").exists()


def test_missing_results_directory_names_the_command_that_makes_it(tmp_path):
    for args in (
        ["eval", "--results", "results", "--split", "far_ood"],
        ["leaderboard", "results", "--out", "o"],
    ):
        line = one_error_line(run_cli(*args, cwd=tmp_path), 2)
        assert line == (
            "atari-pb: error: results directory results does not exist; "
            "make it with make demo or make finetune (atari-pb finetune)"
        )
    assert list(tmp_path.iterdir()) == []
