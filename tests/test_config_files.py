"""The configuration files: one resolver finds them, a missing one is an error (never silent defaults), and
a YAML that restates a dataclass's defaults says exactly what the dataclass says (one source of truth)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from atari_pb.config import (
    CONFIG_KINDS,
    CONFIG_ROOT_ENV,
    config_file,
    config_names,
    config_root,
    dataset_file,
)
from atari_pb.errors import UsageError
from atari_pb.eval.protocol import EvalConfig, load_eval_config
from atari_pb.finetune.base import PROTOCOLS, load_protocol_config, protocol_names
from atari_pb.models.encoder import ModelConfig
from atari_pb.objectives import OBJECTIVES
from atari_pb.prend.config import PrendConfig, load_prend_config
from atari_pb.pretrain.config import load_pretrain_config

CHECKOUT = Path(__file__).resolve().parents[1]


def raw(kind: str, name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(config_file(kind, name)))


def defaults(schema) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(schema))


def assert_restates(values: dict, default: dict, where: str) -> None:
    """Every key of `values` (nested) is a field of `default` with the same value."""
    for key, value in values.items():
        assert key in default, f"{where}.{key} is not a field"
        if isinstance(value, dict):
            assert_restates(value, default[key], f"{where}.{key}")
        else:
            assert value == default[key], (
                f"{where}.{key}: the YAML says {value!r}, the dataclass {default[key]!r}"
            )


def test_the_checkout_is_the_config_root_and_every_folder_has_files():
    assert config_root() == CHECKOUT
    for kind in CONFIG_KINDS:
        assert config_names(kind), kind
    assert config_names("finetune") == protocol_names()  # one YAML per registered protocol, no other
    assert config_names("objectives") == sorted(OBJECTIVES)


@pytest.mark.parametrize("name", sorted(PROTOCOLS) or ["offline_bc", "rainbow"])
def test_protocol_yaml_restates_its_dataclass(name):
    protocol_names()
    assert_restates(raw("finetune", name), defaults(PROTOCOLS[name].Config), f"finetune/{name}.yaml")


@pytest.mark.parametrize("split", ["id", "near_ood", "far_ood"])
def test_eval_yaml_restates_the_protocol_but_its_split_and_games(split):
    values = raw("eval", split)
    assert values.pop("split") == split and isinstance(values.pop("games"), list)
    assert_restates(values, defaults(EvalConfig), f"eval/{split}.yaml")


def test_prend_yaml_restates_its_dataclass():
    assert_restates(raw("prend", "prend"), defaults(PrendConfig), "prend/prend.yaml")


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_objective_yaml_restates_the_objective_and_model(name):
    """An objective's hyperparameters live in its module's Config (the YAML restates them); the optim,
    trainer and data sections are the objective's recipe, which lives in the YAML alone."""
    values = raw("objectives", name)
    assert_restates(values.get("objective", {}), defaults(OBJECTIVES[name].Config), f"objectives/{name}.yaml")
    assert_restates(values.get("model", {}), defaults(ModelConfig), f"objectives/{name}.yaml model")


def test_a_missing_file_or_root_is_one_line_naming_it(tmp_path, monkeypatch):
    with pytest.raises(
        UsageError, match=r"objectives/simclr.yaml does not exist; objectives/ holds: atc, bc"
    ):
        config_file("objectives", "simclr")
    with pytest.raises(
        UsageError, match=f"unknown protocol 'ppo'; valid protocols: {', '.join(protocol_names())}$"
    ):
        load_protocol_config("ppo")
    with pytest.raises(UsageError, match=r"dataset file nope.yaml does not exist; datasets/ holds: "):
        dataset_file("nope.yaml")
    assert dataset_file("demo") == CHECKOUT / "datasets" / "demo.yaml"

    # another root: the loaders read it, and a file it lacks is an error, not the dataclass defaults
    (tmp_path / "finetune").mkdir()
    (tmp_path / "objectives").mkdir()
    (tmp_path / "objectives" / "curl.yaml").write_text("optim:\n  lr: 0.5\n")
    monkeypatch.setenv(CONFIG_ROOT_ENV, str(tmp_path))
    assert load_pretrain_config("curl").optim.lr == 0.5
    for load in (
        lambda: load_pretrain_config("bc"),
        lambda: load_protocol_config("rainbow"),
        lambda: load_eval_config("id"),
        lambda: load_prend_config(),
    ):
        with pytest.raises(UsageError, match=f"config file {tmp_path}/.* does not exist") as err:
            load()
        assert "\n" not in str(err.value)
    monkeypatch.setenv(CONFIG_ROOT_ENV, str(tmp_path / "absent"))
    with pytest.raises(UsageError, match="absent .* is not a directory holding any of datasets/"):
        config_root()


def test_config_root_flag_reaches_the_command(tmp_path):
    """`atari-pb --config-root DIR`: the commands read DIR (a missing file there is exit 2, one line)."""
    import subprocess
    import sys

    (tmp_path / "objectives").mkdir()
    args = [
        sys.executable,
        "-m",
        "atari_pb",
        "--config-root",
        str(tmp_path),
        "pretrain",
        "--objective",
        "curl",
    ]
    proc = subprocess.run(
        [*args, "--data", "x", "--out", str(tmp_path / "run")], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"atari-pb: error: config file {tmp_path}/objectives/curl.yaml does not exist; objectives/ holds: none"
    )
    assert not (tmp_path / "run").exists()
