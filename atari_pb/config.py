"""OmegaConf configuration: a dataclass schema per module, a YAML file that mirrors it, key=value overrides.

Unknown keys and values of the wrong type are errors that name the file (or the override), the key and
the valid keys, in one line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from atari_pb.errors import UsageError

T = TypeVar("T")


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
