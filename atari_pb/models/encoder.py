"""The encoder every objective trains and every protocol freezes: backbone + per-game spatial-MLP neck.

`export_encoder` writes its weights as safetensors with a JSON config beside them; `load_encoder` rebuilds
it from those two files alone (no pickle, nothing executed), frozen and in eval mode:

    enc = atari_pb.load_encoder("encoder.safetensors")
    z = enc(obs_uint8)                 # obs (B, 4, 84, 84) uint8 -> (B, 512) (resnet50), game id 0
    z = enc(obs_uint8, game_id)        # game_id (B,) int64: Atari-PB's per-game spatial embedding
    f = enc.backbone(obs_uint8)        # (B, 2048, 6, 6) spatial features
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from atari_pb.errors import DataError, UsageError
from atari_pb.games import NUM_GAME_IDS
from atari_pb.models.backbone import NATURE, Backbone
from atari_pb.models.layers import LinearNeck, SpatialMLPNeck

ENCODER_FORMAT = "atari-pb-encoder/1"


@dataclass
class ModelConfig:
    """The `model:` section of objectives/*.yaml and finetune/*.yaml."""

    preset: str = "resnet50"  # resnet50 | resnet18 | tiny | nature (the Nature CNN, with a linear neck)
    frames: int = 4
    neck_hidden: list[int] = field(default_factory=list)  # empty: [1024, 512], [128, 64] tiny, [512] nature
    num_actions: int = 18  # Atari's full action set; DQN-Replay actions index each game's minimal set

    def neck_dims(self) -> list[int]:
        if self.neck_hidden:
            return list(self.neck_hidden)
        return {"tiny": [128, 64], NATURE: [512]}.get(self.preset, [1024, 512])


def make_neck(cfg: ModelConfig, in_shape: tuple[int, int, int], num_games: int) -> nn.Module:
    """The preset's neck: Atari-PB's per-game spatial MLP, or for the Nature CNN the released agent's
    linear neck (configs/model/distributional_nature.yaml: neck `linear`, one hidden layer)."""
    if cfg.preset == NATURE:
        (hidden,) = cfg.neck_dims()  # the released linear neck has exactly one layer
        return LinearNeck(in_shape, hidden)
    return SpatialMLPNeck(in_shape, cfg.neck_dims(), num_games)


class Encoder(nn.Module):
    """uint8 (B, F, 84, 84) frame stacks [+ (B,) game ids] -> (B, D) embeddings."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg.preset, cfg.frames)
        self.neck = make_neck(cfg, self.backbone.out_shape(), NUM_GAME_IDS)
        self.out_dim = self.neck.out_dim

    def forward(self, obs: torch.Tensor, game_id: torch.Tensor | None = None) -> torch.Tensor:
        if game_id is None:
            game_id = torch.zeros(obs.shape[0], dtype=torch.long, device=obs.device)
        return self.neck(self.backbone(obs), game_id)


def export_encoder(encoder: Encoder, path: str | Path, metadata: dict | None = None) -> Path:
    """Write `path` (safetensors) and `path` with .json (the config needed to rebuild it)."""
    config = {
        "format": ENCODER_FORMAT,
        "model": asdict(encoder.cfg),
        "out_dim": encoder.out_dim,
        "input": "uint8 (B, frames, 84, 84) frame stacks, optional int64 (B,) game ids",
        "metadata": metadata or {},
    }
    return write_weights(path, encoder.state_dict(), config)


def write_weights(path: str | Path, state: dict[str, torch.Tensor], config: dict) -> Path:
    """A weights file and its JSON config (with a "format" key) beside it; the safetensors is written
    atomically. Shared by encoders and saved agents."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise UsageError(f"{path}: the file must end in .safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, tmp, metadata={"format": config["format"]})
    tmp.replace(path)
    config_path(path).write_text(json.dumps(config, indent=1) + "\n")
    return path


def read_config(path: str | Path, fmt: str, what: str) -> dict:
    """The JSON config beside a weights file, checked to exist and to be of format `fmt`; `what`
    ("an encoder", "an agent") names the file in errors."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{what.split()[-1]} file {path} does not exist")
    if not config_path(path).is_file():
        raise UsageError(f"{config_path(path)} does not exist: {what} needs the JSON config beside it")
    try:
        config = json.loads(config_path(path).read_text())
    except ValueError as err:
        raise DataError(f"{config_path(path)}: not JSON ({err})") from None
    if not isinstance(config, dict) or config.get("format") != fmt:
        found = config.get("format") if isinstance(config, dict) else None
        raise DataError(f"{config_path(path)}: format {found!r}, expected {fmt!r}")
    return config


def read_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    try:
        return load_file(path, device=str(device))
    except (SafetensorError, OSError) as err:
        raise DataError(f"{path}: not a readable safetensors file ({err})") from None


def config_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> Encoder:
    """Rebuild an exported encoder: frozen (no gradients), in eval mode."""
    path = Path(path)
    config = read_config(path, ENCODER_FORMAT, "an encoder")
    try:
        encoder = Encoder(ModelConfig(**config["model"]))
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{config_path(path)}: not an atari-pb encoder config ({err})") from None
    state = read_tensors(path, device)
    try:
        missing, unexpected = encoder.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a tensor of another shape
        raise DataError(
            f"{path}: weights do not fit its config ({str(err).splitlines()[-1].strip()})"
        ) from None
    if missing or unexpected:
        raise DataError(
            f"{path}: weights do not fit its config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    encoder.to(device).eval().requires_grad_(False)
    return encoder
