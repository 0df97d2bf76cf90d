"""OmegaConf loading: unknown keys and wrong types are one-line errors; shipped dataset files load."""

from __future__ import annotations

from pathlib import Path

import pytest

from atari_pb.config import load_config
from atari_pb.data.dataset import DatasetConfig
from atari_pb.errors import UsageError
from atari_pb.games import resolve_games

DATASETS = Path(__file__).resolve().parents[1] / "datasets"


# probes*.yaml are probe datasets (atari_pb/probes/data.py: ProbeDatasetConfig, tested in test_probes_data.py)
@pytest.mark.parametrize(
    "path",
    sorted(p for p in DATASETS.glob("*.yaml") if not p.stem.startswith("probes")),
    ids=lambda p: p.stem,
)
def test_shipped_dataset_files_load(path):
    cfg = load_config(DatasetConfig, path)
    assert resolve_games(cfg.games) and cfg.runs and cfg.ckpts and cfg.samples_per_ckpt > 0


def test_atari_pb_selection_is_ten_million_transitions():
    cfg = load_config(DatasetConfig, DATASETS / "atari_pb_pretrain.yaml")
    games = resolve_games(cfg.games)
    assert {g.split for g in games} == {"id"} and len(games) == 50
    assert len(games) * len(cfg.runs) * len(cfg.ckpts) * cfg.samples_per_ckpt == 10_000_000


def test_overrides_apply_and_typos_fail(tmp_path):
    cfg = load_config(DatasetConfig, DATASETS / "demo.yaml", ["collect.seed=7", "runs=[1,2]"])
    assert cfg.collect.seed == 7 and cfg.runs == [1, 2]
    with pytest.raises(
        UsageError, match=r"unknown key 'collect.sed'; valid keys: transitions_per_ckpt, policy"
    ):
        load_config(DatasetConfig, DATASETS / "demo.yaml", ["collect.sed=7"])
    with pytest.raises(UsageError, match="bad value for 'samples_per_ckpt'"):
        load_config(DatasetConfig, DATASETS / "demo.yaml", ["samples_per_ckpt=lots"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("games: [pong]\nrun: [1]\n")
    with pytest.raises(UsageError, match=r"bad.yaml: unknown key 'run'; valid keys: games, runs"):
        load_config(DatasetConfig, bad)
    with pytest.raises(UsageError, match="key=value"):
        load_config(DatasetConfig, DATASETS / "demo.yaml", ["seed"])


def test_timm_imports_and_builds_a_model():
    """timm needs torchvision; `make setup` installs a matching torch/torchvision pair."""
    import timm
    import torch

    model = timm.create_model("resnet18", pretrained=False, num_classes=0, in_chans=4)
    assert model(torch.zeros(1, 4, 84, 84)).shape == (1, 512)
