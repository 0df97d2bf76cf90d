"""OmegaConf configuration: a dataclass schema per module, a YAML file that mirrors it, key=value overrides.

Unknown keys and values of the wrong type are errors that name the file (or the override), the key and
the valid keys, in one line.

Where the YAMLs are: one resolver, `config_file(kind, name)`, for the five folders of configuration
(datasets/ objectives/ finetune/ eval/ prend/). They live at the top of a source checkout; a wheel carries
them inside the package (atari_pb/configs/); `ATARI_PB_CONFIG_ROOT` (or `atari-pb --config-root DIR`)
points at another root holding the same folders. A missing file is an error, never silent defaults.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from atari_pb.errors import UsageError

T = TypeVar("T")

CONFIG_KINDS = ("datasets", "objectives", "finetune", "eval", "prend")
CONFIG_ROOT_ENV = "ATARI_PB_CONFIG_ROOT"
_PACKAGE = Path(__file__).resolve().parent


def config_root() -> Path:
    """The folder holding datasets/ objectives/ finetune/ eval/ prend/: $ATARI_PB_CONFIG_ROOT if set, else
    the copy a wheel installs inside the package, else the source checkout the package sits in."""
    override = os.environ.get(CONFIG_ROOT_ENV)
    if override:
        root = Path(override)
        if not root.is_dir() or not any((root / kind).is_dir() for kind in CONFIG_KINDS):
            raise UsageError(
                f"config root {root} ({CONFIG_ROOT_ENV} or --config-root) is not a directory holding any of "
                f"{', '.join(k + '/' for k in CONFIG_KINDS)}"
            )
        return root
    packaged = _PACKAGE / "configs"
    return packaged if packaged.is_dir() else _PACKAGE.parent


def config_names(kind: str) -> list[str]:
    """The YAMLs of one folder, by name (objectives: curl, mae, ...)."""
    if kind not in CONFIG_KINDS:
        raise UsageError(f"unknown config folder {kind!r}; valid: {', '.join(CONFIG_KINDS)}")
    return sorted(p.stem for p in (config_root() / kind).glob("*.yaml"))


def config_file(kind: str, name: str) -> Path:
    """`<root>/<kind>/<name>.yaml`, which must exist: a one-line error names it and the valid names."""
    path = config_root() / kind / f"{name}.yaml"
    if not path.is_file():
        valid = ", ".join(config_names(kind)) or "none"
        raise UsageError(f"config file {path} does not exist; {kind}/ holds: {valid}")
    return path


def dataset_file(value: str | Path) -> Path:
    """`--dataset`: a path to a YAML, or a name in datasets/ (demo, atari_pb_pretrain, ...)."""
    path = Path(value)
    if path.is_file():
        return path
    if path.suffix == "" and len(path.parts) == 1:
        return config_file("datasets", path.name)
    raise UsageError(
        f"dataset file {path} does not exist; datasets/ holds: {', '.join(config_names('datasets'))}"
    )


def _valid_keys(schema: Any, dotted: str) -> list[str]:
    """Field names at the level of `dotted` (a.b.c -> the fields of a.b)."""
    cls = schema
    for part in dotted.split(".")[:-1]:
        fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        if part not in fields:
            break
        cls = fields[part].type if isinstance(fields[part].type, type) else type(getattr(cls(), part))
    return [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []


def _one_line(err: OmegaConfBaseException, schema: type, where: str) -> str:
    key = getattr(err, "full_key", None) or "?"
    msg = str(err).splitlines()[0]
    if isinstance(err, ConfigKeyError):
        return f"{where}: unknown key {key!r}; valid keys: {', '.join(_valid_keys(schema, key))}"
    if isinstance(err, ValidationError):
        return f"{where}: bad value for {key!r}: {msg}"
    return f"{where}: {msg} (key {key!r})"


def load_config(schema: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build `schema` from its defaults, then the YAML file at `path`, then `key=value` overrides."""
    cfg = OmegaConf.structured(schema)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"config file {path} does not exist")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
        except OmegaConfBaseException as err:
            raise UsageError(_one_line(err, schema, str(path))) from None
    for item in overrides:
        if "=" not in item:
            raise UsageError(f"override {item!r} is not key=value")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as err:
            raise UsageError(_one_line(err, schema, f"override {item!r}")) from None
    try:
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except OmegaConfBaseException as err:  # missing mandatory values ("???")
        raise UsageError(_one_line(err, schema, str(path or "config"))) from None


def to_dict(obj: Any) -> dict:
    """A config object as plain containers (for JSON records and checkpoints)."""
    return OmegaConf.to_container(OmegaConf.structured(obj), resolve=True)  # type: ignore[return-value]
