"""`atari-pb import-encoder`: released Atari-PB checkpoints -> our encoder format.

The checkpoints are built here in the released layout (src/trainers/base.py save_checkpoint): a random
encoder of ours written under the released key names, through a mapping written independently of
atari_pb.models.official, and checked against a small re-implementation of the released modules
(src/models/backbones/resnet.py with norm 'gn', src/models/necks/mh_spatial_mlp.py with norm 'ln').
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from atari_pb.errors import DataError, UsageError
from atari_pb.models.encoder import Encoder, ModelConfig, load_encoder
from atari_pb.models.official import (
    MappingError,
    backbone_key,
    check_section,
    import_official,
    map_backbone_keys,
    strip_prefixes,
)
from tests.conftest import one_error_line, run_cli

REPO = Path(__file__).resolve().parents[1]  # the CLI runs here, so the pickled class below is importable
NUM_GAMES = 60


# ---------------------------------------------------------------- the released modules, re-implemented
class ReleasedBottleneck(nn.Module):
    """src/models/backbones/resnet.py Bottleneck, norm_type 'gn' (init_normalization: GroupNorm(4, C),
    affine=False)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.norm1 = nn.GroupNorm(4, planes, affine=False)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(4, planes, affine=False)
        self.conv3 = nn.Conv2d(planes, self.expansion * planes, kernel_size=1, bias=False)
        self.norm3 = nn.GroupNorm(4, self.expansion * planes, affine=False)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False),
                nn.GroupNorm(4, self.expansion * planes, affine=False),
            )

    def forward(self, x):
        out = torch.relu(self.norm1(self.conv1(x)))
        out = torch.relu(self.norm2(self.conv2(out)))
        out = self.norm3(self.conv3(out))
        out += self.shortcut(x)
        return torch.relu(out)


class ReleasedResNet50(nn.Module):
    """src/models/backbones/resnet.py ResNet('resnet50', in_shape [4, 1, 84, 84], norm 'gn'), taking
    (N, 4, 84, 84) floats in [0, 1] (the released trainers divide by 255)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.norm1 = nn.GroupNorm(4, 64, affine=False)
        self.stem = nn.Sequential(self.conv1, self.norm1, nn.ReLU(inplace=True))
        self.in_planes = 64
        self.layer1 = self._make_layer(64, 3, stride=1)
        self.layer2 = self._make_layer(128, 4, stride=2)
        self.layer3 = self._make_layer(256, 6, stride=2)
        self.layer4 = self._make_layer(512, 3, stride=2)

    def _make_layer(self, planes, num_blocks, stride):
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(ReleasedBottleneck(self.in_planes, planes, s))
            self.in_planes = planes * ReleasedBottleneck.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))


class ReleasedSpatialMLPNeck(nn.Module):
    """src/models/necks/mh_spatial_mlp.py, norm 'ln' (init_normalization: GroupNorm(1, C), affine),
    hidden_dims [1024, 512], 60 heads, on (N, 2048, 6, 6) features."""

    def __init__(self, c=2048, h=6, w=6):
        super().__init__()
        self.shape = (c, h, w)
        self.spatial_embed = nn.Embedding(NUM_GAMES, c * h * w)
        self.pool = nn.AvgPool2d((h, w))
        self.norm = nn.GroupNorm(1, c, affine=True)
        self.mlp = nn.Sequential(
            nn.Linear(c, 1024), nn.ReLU(inplace=True), nn.Linear(1024, 512), nn.ReLU(inplace=True)
        )

    def forward(self, x, idx):
        x = x * self.spatial_embed(idx).view(-1, *self.shape)
        return self.mlp(self.norm(self.pool(x).flatten(1)))


# ---------------------------------------------------------------- released-layout checkpoints
def released_names(encoder: Encoder) -> tuple[dict, dict]:
    """Our encoder's weights under the released names: (backbone, neck) state dicts, the backbone with
    conv1.weight registered a second time as stem.0.weight, as nn.Sequential(conv1, norm1, relu) does."""
    backbone, neck = {}, {}
    for key, value in encoder.state_dict().items():
        if key.startswith("backbone.body."):
            name = key.removeprefix("backbone.body.").replace(".downsample.", ".shortcut.")
            backbone[name] = value
            if name == "conv1.weight":
                backbone["stem.0.weight"] = value
        else:
            assert key.startswith("neck.")
            neck[key.removeprefix("neck.")] = value
    return backbone, neck


def prefixed(state: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state.items()}


def released_checkpoint(encoder: Encoder, prefix: str = "_orig_mod.", neck: dict | None = None) -> dict:
    """A dict as the released save_checkpoint writes it, with a fake head, optimizer etc. (and the
    target networks CURL, ATC, R3M and CQL also save)."""
    backbone, spatial_neck = released_names(encoder)
    neck = spatial_neck if neck is None else neck
    head = {"weight": torch.randn(NUM_GAMES, 18, 512), "bias": torch.randn(NUM_GAMES, 18)}
    return {
        "backbone": prefixed(backbone, prefix),
        "neck": prefixed(neck, prefix),
        "head": prefixed(head, prefix),
        "target_backbone": prefixed({k: v.clone() for k, v in backbone.items()}, prefix),
        "target_neck": prefixed(neck, prefix),
        "optimizer": {
            "state": {
                0: {"step": torch.tensor(7.0), "exp_avg": torch.zeros(3), "exp_avg_sq": torch.zeros(3)}
            },
            "param_groups": [
                {"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-5, "params": [0]}
            ],
        },
        "lr_scheduler": {"last_epoch": 7, "base_lrs": [1e-4], "_last_lr": [1e-4], "cycle_mult": 1.0},
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000},
        "epoch": 99,
        "step": 12345,
    }


def mae_neck(encoder: Encoder) -> dict:
    """Key names of the released mae_neck (src/models/necks/mae_neck.py, transformer from layers.py)."""
    neck = {
        "spatial_embed.weight": torch.randn(NUM_GAMES, 2048 * 36),
        "pos_embed": torch.randn(36, 512),
        "cls_token": torch.randn(1, 1, 512),
        "norm.weight": torch.ones(512),
        "norm.bias": torch.zeros(512),
        "mlp.0.weight": torch.randn(1024, 2048),
        "mlp.0.bias": torch.randn(1024),
        "mlp.2.weight": torch.randn(512, 1024),
        "mlp.2.bias": torch.randn(512),
    }
    for i in range(4):
        neck[f"transformer_encoder.layers.{i}.0.norm.weight"] = torch.ones(512)
        neck[f"transformer_encoder.layers.{i}.0.fn.to_qkv.weight"] = torch.randn(1536, 512)
    return neck


class TrainerNote:
    """Something only a full unpickler rebuilds: weights_only loading refuses it."""

    def __init__(self, text: str):
        self.text = text


@pytest.fixture(scope="module")
def source() -> Encoder:
    """A random encoder whose every tensor differs from a fresh one (LayerNorm's too)."""
    torch.manual_seed(1234)
    encoder = Encoder(ModelConfig(preset="resnet50", frames=4))
    with torch.no_grad():
        encoder.neck.norm.weight.uniform_(0.5, 1.5)
        encoder.neck.norm.bias.uniform_(-0.5, 0.5)
    return encoder.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    obs = torch.randint(0, 256, (3, 4, 84, 84), dtype=torch.uint8, generator=gen)
    return obs, torch.tensor([0, 17, 59])


def save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


def assert_same_backbone(encoder: Encoder, source: Encoder, batch) -> None:
    obs, _ = batch
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(encoder.backbone.state_dict()[key], value), key
    with torch.no_grad():
        assert torch.equal(encoder.backbone(obs), source.backbone(obs))


def assert_same_encoder(encoder: Encoder, source: Encoder, batch) -> None:
    assert_same_backbone(encoder, source, batch)
    obs, game_id = batch
    for key, value in source.neck.state_dict().items():
        assert torch.equal(encoder.neck.state_dict()[key], value), key
    with torch.no_grad():
        assert torch.equal(encoder(obs, game_id), source(obs, game_id))
        assert torch.equal(encoder(obs), source(obs))


def metadata(out: Path) -> dict:
    return json.loads(out.with_suffix(".json").read_text())["metadata"]


# ---------------------------------------------------------------- the key names
def test_released_key_names_match_the_released_modules(source):
    backbone, neck = released_names(source)
    reference = ReleasedResNet50().state_dict()
    assert list(backbone) == list(reference)  # same names, same order
    assert len(backbone) == 54 and list(backbone)[:2] == ["conv1.weight", "stem.0.weight"]
    assert sum(".shortcut.0.weight" in k for k in backbone) == 4
    assert {k: v.shape for k, v in backbone.items()} == {k: v.shape for k, v in reference.items()}
    neck_reference = ReleasedSpatialMLPNeck().state_dict()
    assert {k: v.shape for k, v in neck.items()} == {k: v.shape for k, v in neck_reference.items()}


def test_our_encoder_computes_what_the_released_modules_compute(source, batch):
    """The released modules loaded (strictly) with the released-layout weights: the same functions."""
    backbone, neck = released_names(source)
    released = ReleasedResNet50().eval()
    released.load_state_dict(backbone, strict=True)
    released_neck = ReleasedSpatialMLPNeck().eval()
    released_neck.load_state_dict(neck, strict=True)
    obs, game_id = batch
    with torch.no_grad():
        features = released(obs.float() / 255.0)
        torch.testing.assert_close(source.backbone(obs), features, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            source(obs, game_id), released_neck(features, game_id), rtol=1e-4, atol=1e-5
        )


def test_pure_mapping_functions():
    t = torch.zeros(1)
    assert strip_prefixes({"_orig_mod.module.a": t, "module.b": t, "_orig_mod.c": t, "d": t}) == {
        "a": t,
        "b": t,
        "c": t,
        "d": t,
    }
    with pytest.raises(MappingError, match="'_orig_mod.a' and 'a'"):
        strip_prefixes({"_orig_mod.a": t, "a": t})
    assert backbone_key("conv1.weight") == "backbone.body.conv1.weight"
    assert backbone_key("layer3.5.conv2.weight") == "backbone.body.layer3.5.conv2.weight"
    assert backbone_key("layer2.0.shortcut.0.weight") == "backbone.body.layer2.0.downsample.0.weight"
    for unknown in (
        "stem.0.weight",
        "norm1.weight",
        "layer1.0.norm1.weight",
        "layer1.0.shortcut.1.weight",
        "fc.weight",
    ):
        assert backbone_key(unknown) is None
    w = torch.randn(64, 4, 7, 7)
    assert map_backbone_keys({"conv1.weight": w, "stem.0.weight": w}) == {"backbone.body.conv1.weight": w}
    with pytest.raises(MappingError, match="'stem.0.weight' differs"):
        map_backbone_keys({"conv1.weight": w, "stem.0.weight": w + 1})
    with pytest.raises(MappingError, match="unknown backbone key 'layer1.0.norm1.running_mean'"):
        map_backbone_keys({"conv1.weight": w, "layer1.0.norm1.running_mean": torch.zeros(64)})
    problems = check_section(
        "neck", {"a": torch.zeros(2), "b": torch.zeros(3), "z": t}, {"a": (2,), "b": (4,), "c": (1,)}
    )
    assert problems == [
        "unknown neck key 'z'",
        "neck key 'b' has shape (3,), expected (4,)",
        "missing neck key 'c' (shape (1,))",
    ]


# ---------------------------------------------------------------- imports through the command line
@pytest.mark.parametrize(("prefix", "objective"), [("_orig_mod.", "curl"), ("_orig_mod.module.", "bc")])
def test_import_compiled_and_ddp_checkpoints(source, batch, tmp_path, prefix, objective):
    ckpt = save(released_checkpoint(source, prefix), tmp_path / f"{objective}.pth")
    out = tmp_path / "enc" / "encoder.safetensors"
    proc = run_cli("import-encoder", ckpt, "--objective", objective, "--out", out, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "neck (" in proc.stderr and "wrote" in proc.stderr
    assert_same_encoder(load_encoder(out), source, batch)
    meta = metadata(out)
    assert meta == {
        "objective": objective,
        "origin": "imported from the released Atari-PB checkpoint",
        "source": str(ckpt),
        "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest(),
        "neck": "imported",
        "released_neck": "mh_spatial_mlp",
        # what the released code pre-trained on: DQN-Replay's 50 ID games x 2 runs x 10 checkpoints x 10k
        "pretrain_data": {"source": "dqn_replay", "games": 50, "transitions": 10_000_000, "shards": 1000},
        "epoch": 99,
        "step": 12345,
    }


def test_import_mae_checkpoint_gets_a_fresh_neck(source, batch, tmp_path):
    ckpt = save(released_checkpoint(source, "_orig_mod.", neck=mae_neck(source)), tmp_path / "mae.pth")
    out = tmp_path / "mae.safetensors"
    proc = run_cli("import-encoder", ckpt, "--objective", "mae", "--out", out, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "fresh neck" in proc.stderr
    encoder = load_encoder(out)
    assert_same_backbone(encoder, source, batch)
    assert not torch.equal(encoder.neck.spatial_embed.weight, source.neck.spatial_embed.weight)
    meta = metadata(out)
    assert meta["neck"] == "fresh" and meta["released_neck"] == "mae_neck" and meta["objective"] == "mae"
    # seeded: a second import (in process, whatever the global RNG) has the same neck
    torch.manual_seed(999)
    again = import_official(ckpt, "mae", tmp_path / "again.safetensors")
    first, second = load_file(out), load_file(again)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_import_dt_checkpoint_with_numpy_scalars_needs_no_trust(source, batch, tmp_path):
    """The released DT trainer also saves max_rtg: {numpy game id: numpy return} (src/trainers/dt.py)."""
    dt_neck = {"spatial_embed.weight": torch.randn(NUM_GAMES, 8), "act_embedder.weight": torch.randn(18, 512)}
    ckpt = released_checkpoint(source, "_orig_mod.", neck=dt_neck)
    ckpt["max_rtg"] = {np.int64(3): np.float32(21.0), np.int64(7): np.float32(-4.5)}
    path = save(ckpt, tmp_path / "dt.pth")
    out = import_official(path, "dt", tmp_path / "dt.safetensors")
    assert_same_backbone(load_encoder(out), source, batch)
    assert metadata(out)["neck"] == "fresh"


def test_bad_keys_and_shapes_fail_with_one_line(source, tmp_path):
    ckpt = released_checkpoint(source, "_orig_mod.")
    ckpt["backbone"]["_orig_mod.layer1.0.norm1.weight"] = torch.ones(64)  # a norm with affine parameters
    bad_key = save(ckpt, tmp_path / "bad_key.pth")
    ckpt = released_checkpoint(source, "_orig_mod.")
    ckpt["neck"]["_orig_mod.mlp.0.weight"] = torch.zeros(512, 2048)
    bad_shape = save(ckpt, tmp_path / "bad_shape.pth")
    for path, words in [
        (bad_key, ["unknown backbone key 'layer1.0.norm1.weight'", "expected", "conv1.weight"]),
        (bad_shape, ["neck key 'mlp.0.weight' has shape (512, 2048), expected (1024, 2048)"]),
    ]:
        out = tmp_path / f"{path.stem}.safetensors"
        proc = run_cli("import-encoder", path, "--objective", "bc", "--out", out, cwd=REPO)
        line = one_error_line(proc, 1)
        assert str(path) in line and all(w in line for w in words), line
        assert not out.exists() and not out.with_suffix(".json").exists()


def test_wrong_objective_fails_with_one_line(tmp_path):
    path = save({"backbone": {}}, tmp_path / "x.pth")
    out = tmp_path / "x.safetensors"
    line = one_error_line(run_cli("import-encoder", path, "--objective", "nope", "--out", out, cwd=REPO), 2)
    assert "'nope'" in line and "valid: atc, bc, cql, curl, dt, idm, mae, r3m, siammae, spr, spr_idm" in line
    with pytest.raises(UsageError, match="'proto': not an objective with a released"):  # ours, not released
        import_official(path, "proto", out)
    assert not out.exists()


def test_pickle_needing_code_is_refused_unless_trusted(source, batch, tmp_path):
    ckpt = released_checkpoint(source, "_orig_mod.")
    ckpt["note"] = TrainerNote("made by a trainer class")
    path = save(ckpt, tmp_path / "pickled.pth")
    out = tmp_path / "pickled.safetensors"
    proc = run_cli("import-encoder", path, "--objective", "atc", "--out", out, cwd=REPO)
    line = one_error_line(proc, 2)
    assert str(path) in line and "--trust-pickle" in line and "TrainerNote" in line, line
    assert not out.exists()
    proc = run_cli("import-encoder", path, "--objective", "atc", "--out", out, "--trust-pickle", cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert_same_encoder(load_encoder(out), source, batch)


def test_other_bad_files_in_process(source, tmp_path):
    """Cases checked through the library: nothing is written for any of them."""
    out = tmp_path / "never.safetensors"
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(
        save({"backbone": {"conv1.weight": torch.zeros(1000)}}, tmp_path / "t.pth").read_bytes()[:300]
    )
    with pytest.raises(DataError, match="not a readable PyTorch checkpoint"):
        import_official(truncated, "bc", out)
    with pytest.raises(UsageError, match="does not exist"):
        import_official(tmp_path / "missing.pth", "bc", out)
    with pytest.raises(DataError, match="no 'backbone' state dict"):
        import_official(save({"model": {}}, tmp_path / "other.pth"), "bc", out)
    # a checkpoint from an objective with an mh_spatial_mlp neck, labelled mae; and the reverse
    spatial = save(released_checkpoint(source, "_orig_mod.module."), tmp_path / "spatial.pth")
    with pytest.raises(DataError, match="is --objective mae right"):
        import_official(spatial, "mae", out)
    ckpt = released_checkpoint(source, "", neck=mae_neck(source))
    with pytest.raises(DataError, match="unknown neck key 'pos_embed'.*other necks"):
        import_official(save(ckpt, tmp_path / "mae.pth"), "spr", out)
    ckpt = released_checkpoint(source, "")
    ckpt["backbone"]["stem.0.weight"] = ckpt["backbone"]["conv1.weight"] + 1
    del ckpt["backbone"]["layer4.2.conv3.weight"]
    with pytest.raises(DataError, match="'stem.0.weight' differs"):
        import_official(save(ckpt, tmp_path / "stem.pth"), "idm", out)
    ckpt["backbone"]["stem.0.weight"] = ckpt["backbone"]["conv1.weight"]
    with pytest.raises(
        DataError, match=r"missing backbone key 'layer4.2.conv3.weight' \(shape \(2048, 512, 1, 1\)\)"
    ):
        import_official(save(ckpt, tmp_path / "missing_key.pth"), "idm", out)
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_trainer_note_pickles_by_reference():
    """The pickle test relies on the class being importable by the CLI process (run from REPO)."""
    assert pickle.loads(pickle.dumps(TrainerNote("x"))).text == "x"
    assert TrainerNote.__module__ == "tests.test_import_encoder"
