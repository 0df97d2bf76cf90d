"""Import a released Atari-PB pre-trained checkpoint (github.com/dojeon-ai/Atari-PB) as an atari-pb encoder.

    atari-pb import-encoder curl.pth --objective curl --out curl.safetensors

A released checkpoint is a `torch.save` dict (src/trainers/base.py save_checkpoint, src/common/logger.py
save_dict): "backbone", "neck", "head" state dicts, "optimizer", "lr_scheduler", "scaler", "epoch", "step",
and for some objectives "target_backbone", "target_neck", "target_head" or "max_rtg". Only "backbone" and
"neck" are read. Their keys may carry `_orig_mod.` (torch.compile) and `module.` (DDP) prefixes, which
are stripped as the released loader does (src/common/logger.py load_model).

The released backbone (src/models/backbones/resnet.py, norm 'gn': GroupNorm(4) without affine parameters)
is our Backbone("resnet50") under other names; its only tensors are convolution weights:

    conv1.weight                    -> backbone.body.conv1.weight
    stem.0.weight                   -> dropped: conv1.weight registered a second time (checked equal)
    layer{L}.{B}.conv{K}.weight     -> backbone.body.layer{L}.{B}.conv{K}.weight
    layer{L}.0.shortcut.0.weight    -> backbone.body.layer{L}.0.downsample.0.weight

The released mh_spatial_mlp neck (src/models/necks/mh_spatial_mlp.py; its 'ln' norm is GroupNorm(1, C)
with affine parameters, which on (N, C) inputs is LayerNorm(C)) is our SpatialMLPNeck under the same names
(spatial_embed.weight, norm.weight, norm.bias, mlp.0.*, mlp.2.*), prefixed with "neck.". The MAE, SiamMAE
and DT checkpoints have other necks (mae_neck, siammae_neck, dt_neck): only their backbone is imported and
the encoder gets a fresh neck (PyTorch's default initialisation, seeded), which fine-tuning re-initialises.

Functions without I/O (strip_prefixes, map_backbone_keys, convert_state, ...) raise MappingError; the
import_official entry point turns that into a one-line DataError naming the file.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from atari_pb.errors import DataError, UsageError
from atari_pb.models.encoder import Encoder, ModelConfig, export_encoder

log = logging.getLogger(__name__)

SPATIAL_MLP = "mh_spatial_mlp"
# each objective the released code pre-trains (scripts/pretrain/*.sh) -> the neck its checkpoint holds
RELEASED_NECKS: dict[str, str] = {
    **{name: SPATIAL_MLP for name in ("atc", "bc", "cql", "curl", "idm", "r3m", "spr", "spr_idm")},
    "mae": "mae_neck",
    "siammae": "siammae_neck",
    "dt": "dt_neck",
}
PREFIXES = ("_orig_mod.", "module.")  # torch.compile, DistributedDataParallel
STEM_ALIAS = "stem.0.weight"  # the released ResNet's nn.Sequential(conv1, norm1, ReLU) re-registers conv1
BACKBONE = "backbone.body."
NECK = "neck."
FRESH_NECK_SEED = 0
ORIGIN = "imported from the released Atari-PB checkpoint"
# What the released checkpoints were pre-trained on (provenance.py): DQN-Replay, the 50 ID games x runs
# 1-2 x checkpoints 1-10 x the first 10k transitions each (configs/dataloader/pretrain.yaml; our
# datasets/atari_pb_pretrain.yaml is the same selection) = 1,000 checkpoints, 10,000,000 transitions
RELEASED_PRETRAIN_DATA = {"source": "dqn_replay", "games": 50, "transitions": 10_000_000, "shards": 1000}
SHOWN = 3  # offenders named in one error line

_CONV = re.compile(r"conv1\.weight|layer\d+\.\d+\.conv\d+\.weight")
_SHORTCUT = re.compile(r"(layer\d+\.\d+)\.shortcut\.0\.weight")
BACKBONE_HINT = (
    "expected only the convolution weights of the released GroupNorm ResNet-50 (norm 'gn', no norm "
    "parameters): conv1.weight, stem.0.weight, layer{L}.{B}.conv{K}.weight, layer{L}.0.shortcut.0.weight"
)


class MappingError(ValueError):
    """A released state dict that does not map onto the encoder; the message names the keys."""


def importable_objectives() -> list[str]:
    """Our registered objectives that the released code pre-trains (what --objective accepts)."""
    from atari_pb.objectives import OBJECTIVES

    return sorted(name for name in OBJECTIVES if name in RELEASED_NECKS)


def imports_neck(objective: str) -> bool:
    return RELEASED_NECKS[objective] == SPATIAL_MLP


# --- pure mapping ---------------------------------------------------------------------------------------


def strip_prefixes(state: Mapping[str, object]) -> dict[str, object]:
    """Keys without their leading `_orig_mod.` / `module.` prefixes (in any combination)."""
    out: dict[str, object] = {}
    origin: dict[str, str] = {}
    for key, value in state.items():
        name = key
        while name.startswith(PREFIXES):
            name = name.split(".", 1)[1]
        if name in out:
            raise MappingError(f"keys {origin[name]!r} and {key!r} are both {name!r} without their prefixes")
        out[name], origin[name] = value, key
    return out


def backbone_key(released: str) -> str | None:
    """Our name of a released backbone key (prefixes stripped), None if it has no counterpart."""
    if _CONV.fullmatch(released):
        return BACKBONE + released
    match = _SHORTCUT.fullmatch(released)
    if match:
        return f"{BACKBONE}{match[1]}.downsample.0.weight"
    return None


def released_backbone_key(ours: str) -> str:
    """The released name of one of our backbone keys (the inverse of backbone_key)."""
    return ours.removeprefix(BACKBONE).replace(".downsample.0.", ".shortcut.0.")


def drop_stem_alias(state: Mapping[str, object]) -> dict[str, object]:
    """The backbone state without `stem.0.weight`, which must be the same tensor as `conv1.weight`."""
    state = dict(state)
    alias = state.pop(STEM_ALIAS, None)
    conv1 = state.get("conv1.weight")
    if alias is not None and isinstance(conv1, torch.Tensor):
        same = isinstance(alias, torch.Tensor) and alias.shape == conv1.shape and torch.equal(alias, conv1)
        if not same:
            raise MappingError(
                f"backbone key {STEM_ALIAS!r} differs from 'conv1.weight' (it is the same layer)"
            )
    return state


def map_backbone_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A released backbone state dict (prefixes stripped) -> ours; `stem.0.weight` is dropped."""
    state = drop_stem_alias(state)
    unknown = [key for key in state if backbone_key(key) is None]
    if unknown:
        raise MappingError(_few([_unknown("backbone", key) for key in unknown], [BACKBONE_HINT]))
    return {backbone_key(key): value for key, value in state.items()}


def map_neck_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A released mh_spatial_mlp neck state dict (prefixes stripped) -> ours: the same names under neck."""
    return {NECK + key: value for key, value in state.items()}


def expected_released(expected: Mapping[str, torch.Size]) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """Our encoder's state-dict shapes -> the released backbone's and mh_spatial_mlp neck's (their names)."""
    backbone = {released_backbone_key(k): tuple(s) for k, s in expected.items() if k.startswith(BACKBONE)}
    neck = {k.removeprefix(NECK): tuple(s) for k, s in expected.items() if k.startswith(NECK)}
    return backbone, neck


def check_section(section: str, state: Mapping[str, object], expected: Mapping[str, tuple]) -> list[str]:
    """What is wrong with one released state dict: unknown keys, then wrong shapes or types, then missing
    keys; each a self-contained phrase naming the key and what was expected."""
    problems = [_unknown(section, key) for key in state if key not in expected]
    for key, shape in expected.items():
        if key not in state:
            continue
        value = state[key]
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            found = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
            problems.append(f"{section} key {key!r} is {found}, expected a floating-point tensor {shape}")
        elif tuple(value.shape) != shape:
            problems.append(f"{section} key {key!r} has shape {tuple(value.shape)}, expected {shape}")
    problems += [
        f"missing {section} key {key!r} (shape {shape})"
        for key, shape in expected.items()
        if key not in state
    ]
    return problems


def convert_state(
    checkpoint: object, objective: str, expected: Mapping[str, torch.Size]
) -> dict[str, torch.Tensor]:
    """A released checkpoint dict -> the state dict of our encoder whose shapes are `expected`: the
    backbone always, the neck if `objective`'s released neck is mh_spatial_mlp."""
    backbone_shapes, neck_shapes = expected_released(expected)
    backbone = drop_stem_alias(strip_prefixes(_section(checkpoint, "backbone")))
    problems = check_section("backbone", backbone, backbone_shapes)
    hints = [BACKBONE_HINT] if any(key not in backbone_shapes for key in backbone) else []
    neck: dict[str, object] = {}
    if imports_neck(objective):
        neck = strip_prefixes(_section(checkpoint, "neck"))
        problems += check_section("neck", neck, neck_shapes)
        if any(key not in neck_shapes for key in neck):
            hints.append(
                f"--objective {objective} expects the {SPATIAL_MLP} neck ({', '.join(neck_shapes)}); "
                "mae, siammae and dt checkpoints have other necks"
            )
    elif isinstance(checkpoint, Mapping) and _is_spatial_mlp(checkpoint.get("neck"), neck_shapes):
        problems.append(
            f"its neck is an {SPATIAL_MLP} neck, not the {RELEASED_NECKS[objective]} of a released "
            f"{objective} checkpoint: is --objective {objective} right?"
        )
    if problems:
        raise MappingError(_few(problems, hints))
    state = map_backbone_keys(backbone)
    state.update(map_neck_keys(neck))
    return state


def _section(checkpoint: object, name: str) -> Mapping[str, object]:
    if not isinstance(checkpoint, Mapping):
        raise MappingError(f"holds a {type(checkpoint).__name__}, not a released Atari-PB checkpoint dict")
    section = checkpoint.get(name)
    if not isinstance(section, Mapping) or not all(isinstance(k, str) for k in section):
        keys = ", ".join(map(str, list(checkpoint)[:8]))
        raise MappingError(
            f"no {name!r} state dict (top-level keys: {keys}): not a released Atari-PB checkpoint"
        )
    return section


def _is_spatial_mlp(neck: object, neck_shapes: Mapping[str, tuple]) -> bool:
    if not isinstance(neck, Mapping) or not all(isinstance(k, str) for k in neck):
        return False
    try:
        return set(strip_prefixes(neck)) == set(neck_shapes)
    except MappingError:
        return False


def _unknown(section: str, key: str) -> str:
    return f"unknown {section} key {key!r}"


def _few(problems: list[str], hints: Sequence[str] = ()) -> str:
    """The first few problems and the hints, in one line."""
    more = f" (and {len(problems) - SHOWN} more)" if len(problems) > SHOWN else ""
    return "; ".join(problems[:SHOWN]) + more + "".join(f" [{hint}]" for hint in hints)


# --- I/O ------------------------------------------------------------------------------------------------


def _numpy_safe_globals() -> list:
    """numpy scalars and dtypes (plain data: the DT checkpoint's max_rtg dict holds numpy scalars), under
    numpy 2's names and numpy 1's, allowed in weights_only loading."""
    try:
        import numpy as np

        try:
            from numpy._core.multiarray import scalar
        except ImportError:  # numpy 1
            from numpy.core.multiarray import scalar
    except ImportError:
        return []
    dtypes = getattr(np, "dtypes", None)
    classes = [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")] if dtypes else []
    return [
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
        np.dtype,
        *classes,
    ]


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0][:200] if lines else ''}"


def _needs_pickle(err: BaseException) -> str | None:
    """What a weights_only load refused, if that is why it failed; None for any other failure."""
    text = str(err)
    if not isinstance(err, pickle.UnpicklingError) or "Weights only load failed" not in text:
        return None
    found = re.search(r"GLOBAL (\S+)", text) or re.search(r"but got (<[^>]+>)", text)
    return found[1] if found else "a non-tensor object"


def load_released(path: Path, trust_pickle: bool = False) -> object:
    """The checkpoint, loaded with weights_only=True; with weights_only=False only if that refuses it and
    `trust_pickle`. Unreadable: DataError; needing arbitrary pickle without `trust_pickle`: UsageError."""
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types for a bad file
        refused = _needs_pickle(err)
        if refused is None:
            raise DataError(f"{path}: not a readable PyTorch checkpoint ({_first_line(err)})") from None
        if not trust_pickle:
            raise UsageError(
                f"{path}: loading it needs arbitrary pickle ({refused}), which can execute code; "
                "pass --trust-pickle if you trust the file"
            ) from None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # unpickling arbitrary objects can raise anything
        raise DataError(f"{path}: not a readable PyTorch checkpoint ({_first_line(err)})") from None
    log.warning("%s: loaded with weights_only=False (--trust-pickle)", path)
    return checkpoint


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_request(path: Path, objective: str, out: Path) -> None:
    valid = importable_objectives()
    if objective not in valid:
        raise UsageError(
            f"--objective {objective!r}: not an objective with a released Atari-PB checkpoint; "
            f"valid: {', '.join(valid)}"
        )
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist")
    if out.suffix != ".safetensors":
        raise UsageError(f"--out {out}: the file must end in .safetensors")


def _fresh_encoder() -> Encoder:
    """The benchmark's encoder (resnet50, 4 frames, neck [1024, 512]), initialised from a fixed seed
    without touching the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(FRESH_NECK_SEED)
        return Encoder(ModelConfig(preset="resnet50", frames=4))


def _metadata(path: Path, objective: str, checkpoint: Mapping) -> dict:
    fresh = not imports_neck(objective)
    meta = {
        "objective": objective,
        "origin": ORIGIN,
        "source": str(path),
        "sha256": sha256_file(path),
        "neck": "fresh" if fresh else "imported",
        "released_neck": RELEASED_NECKS[objective],
        "pretrain_data": dict(RELEASED_PRETRAIN_DATA),
    }
    if fresh:
        meta["neck_seed"] = FRESH_NECK_SEED
    for key in ("epoch", "step"):
        if isinstance(checkpoint.get(key), int):
            meta[key] = checkpoint[key]
    return meta


def import_official(path: str | Path, objective: str, out: str | Path, trust_pickle: bool = False) -> Path:
    """`atari-pb import-encoder`: a released Atari-PB checkpoint -> `out` (safetensors + JSON), written
    only once every key and shape has been checked."""
    path, out = Path(path), Path(out)
    _check_request(path, objective, out)
    checkpoint = load_released(path, trust_pickle)
    encoder = _fresh_encoder()
    ours = encoder.state_dict()
    try:
        state = convert_state(checkpoint, objective, {k: v.shape for k, v in ours.items()})
    except MappingError as err:
        raise DataError(f"{path}: {err}") from None
    if not imports_neck(objective):
        state.update({k: v for k, v in ours.items() if k.startswith(NECK)})
    encoder.load_state_dict(state, strict=True)
    written = export_encoder(encoder, out, _metadata(path, objective, checkpoint))
    if imports_neck(objective):
        log.info("%s: imported the backbone and the %s neck (%s)", path, SPATIAL_MLP, objective)
    else:
        log.info(
            "%s: imported the backbone only; the %s checkpoint's %s is not atari-pb's neck, so the encoder "
            "has a fresh neck (seed %d), which fine-tuning re-initialises anyway",
            path,
            objective,
            RELEASED_NECKS[objective],
            FRESH_NECK_SEED,
        )
    return written
