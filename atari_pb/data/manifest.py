"""`DST/manifest.json`: the list of finished shards, with their lengths and SHA-256, written atomically.

A shard is finished when, and only when, the manifest lists it. Entries are kept sorted so that the same
set of shards always gives the same bytes, however the work was ordered or interrupted.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from atari_pb.errors import DataError

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ShardEntry:
    path: str  # relative to the shard root: "<game>/run<r>_ckpt<k>.h5"
    game: str
    run: int
    ckpt: int
    length: int
    sha256: str
    bytes: int
    source: str  # the observation file it came from, relative to the source root
    # the data it holds: dqn_replay | collect | atari_pb_far_ood | rlu (provenance.py); "" in manifests
    # written before shards recorded it, which still load
    origin: str = ""
    # what a source without a file per field says about the shard (RL Unplugged: URL, checkpoint used,
    # episodes, bytes read); None where the source files say it all
    details: dict | None = None

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.game, self.run, self.ckpt)


def shard_relpath(game: str, run: int, ckpt: int) -> str:
    return f"{game}/run{run}_ckpt{ckpt}.h5"


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(root: Path) -> dict[tuple[str, int, int], ShardEntry]:
    """Entries by (game, run, ckpt); an empty dict when there is no manifest yet."""
    path = Path(root) / MANIFEST_NAME
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text())
        if doc.get("schema_version") != SCHEMA_VERSION:
            raise DataError(
                f"{path}: schema_version {doc.get('schema_version')!r}, this atari-pb reads {SCHEMA_VERSION}"
            )
        entries = [ShardEntry(**e) for e in doc["shards"]]
    except DataError:
        raise
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: malformed manifest ({err})") from None
    return {e.key: e for e in entries}


def _entry_doc(entry: ShardEntry) -> dict:
    doc = asdict(entry)
    if doc["details"] is None:  # most sources have none: their manifests stay as they were
        del doc["details"]
    return doc


def write_manifest(root: Path, entries: dict[tuple[str, int, int], ShardEntry]) -> None:
    """Rewrite the manifest atomically: a reader sees the old one or the new one, never half of one."""
    root = Path(root)
    doc = {"schema_version": SCHEMA_VERSION, "shards": [_entry_doc(entries[k]) for k in sorted(entries)]}
    tmp = root / f".{MANIFEST_NAME}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / MANIFEST_NAME)
    fsync_dir(root)
