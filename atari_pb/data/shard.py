"""One HDF5 shard per (game, run, checkpoint): its layout, how it is written, and how it is checked.

Layout (schema 1):
  observation    (N, 84, 84) uint8, contiguous and uncompressed, so a frame stack is one contiguous read
                 and readers can memory-map it (`observation_offset`)
  action         (N,) int32     reward (N,) float32, raw     terminal (N,) uint8
  invalid_range  (k,) int64     the checkpoint's invalid range, as logged (indices into the source file)
  attributes     game, replay_name, run, ckpt, source, source_length, add_count, schema_version
Written without timestamps, so the same source always gives the same bytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from atari_pb.data.manifest import ShardEntry, fsync_dir, sha256_file, shard_relpath
from atari_pb.data.replay_format import (
    FRAME_BYTES,
    FRAME_SHAPE,
    STORE_FIELDS,
    open_store_array,
    read_items_into,
    read_small_array,
    read_store_prefix,
    relative_replay_file,
    replay_file,
    run_dir,
)
from atari_pb.errors import DataError

SHARD_SCHEMA_VERSION = 1
SCALAR_FIELDS = ("action", "reward", "terminal")
_OBS_BLOCK = 2048  # frames decompressed and written at a time: bounds memory to ~14 MB per worker
# collect.py's RECORD_NAME, which `atari-pb collect` leaves beside a run's replay_logs/; not imported, as
# collect.py pulls in the environment and torch
COLLECT_RECORD = "collect.json"


@dataclass(frozen=True)
class ShardJob:
    src_root: str
    dst_root: str
    game: str
    replay_name: str
    run: int
    ckpt: int
    samples: int
    full_check: bool = False  # decompress whole observation files to check their CRC-32

    @property
    def relpath(self) -> str:
        return shard_relpath(self.game, self.run, self.ckpt)


def build_shard(job: ShardJob) -> ShardEntry:
    """Read the first `samples` transitions of one checkpoint and write them as a finished shard.

    The shard is written under a temporary name and renamed only when complete; the caller records it
    in the manifest. Any failure leaves no file under the final name.
    """
    src = Path(job.src_root)
    final = Path(job.dst_root) / job.relpath
    final.parent.mkdir(parents=True, exist_ok=True)
    field_path = lambda field: replay_file(src, job.replay_name, job.run, field, job.ckpt)  # noqa: E731
    n = job.samples

    scalars = {}
    for field in SCALAR_FIELDS:  # small files (5 bytes a transition): read whole, CRC checked
        scalars[field], _ = read_store_prefix(field_path(field), field, n, check_trailer=True)
    invalid = read_small_array(field_path("invalid_range")).astype(np.int64).reshape(-1)
    add_count = int(read_small_array(field_path("add_count")).reshape(-1)[0])

    reader, header = open_store_array(field_path("observation"), "observation")
    attrs = {
        "schema_version": SHARD_SCHEMA_VERSION,
        "game": job.game,
        "replay_name": job.replay_name,
        "run": job.run,
        "ckpt": job.ckpt,
        "source": relative_replay_file(job.replay_name, job.run, "observation", job.ckpt),
        "source_length": header.shape[0],
        "add_count": add_count,
    }
    digest, size = write_shard(final, n, scalars, invalid, reader, header, job.full_check, attrs)
    return ShardEntry(
        path=job.relpath,
        game=job.game,
        run=job.run,
        ckpt=job.ckpt,
        length=n,
        sha256=digest,
        bytes=size,
        source=relative_replay_file(job.replay_name, job.run, "observation", job.ckpt),
        origin=replay_origin(src, job.replay_name, job.run),
    )


def replay_origin(src_root: Path, replay_name: str, run: int) -> str:
    """'collect' for a run `atari-pb collect` played locally (its record beside replay_logs/), else
    'dqn_replay': the same layout, downloaded."""
    collected = (run_dir(src_root, replay_name, run).parent / COLLECT_RECORD).is_file()
    return "collect" if collected else "dqn_replay"


def write_shard(
    final: Path,
    n: int,
    scalars: dict[str, np.ndarray],
    invalid: np.ndarray,
    reader,
    header,
    full_check: bool,
    attrs: dict,
) -> tuple[str, int]:
    """Write one shard the one atomic way: the scalar arrays, the invalid range, the first `n` frames streamed
    from `reader` in blocks, the stream's end checked when the prefix is the whole stream (or asked for), the
    attributes; under a temporary name, fsynced, hashed, then renamed to `final`. Returns (SHA-256, bytes).
    Closes the reader; any failure leaves no file under the final name."""
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        if n > header.shape[0]:
            raise DataError(f"{reader.path}: has {header.shape[0]} transitions, {n} were asked for")
        with h5py.File(tmp, "w", libver="v110") as f:
            for field in SCALAR_FIELDS:
                f.create_dataset(field, data=scalars[field], track_times=False)
            f.create_dataset("invalid_range", data=invalid, track_times=False)
            obs = f.create_dataset("observation", shape=(n, *FRAME_SHAPE), dtype=np.uint8, track_times=False)
            block = np.empty((min(n, _OBS_BLOCK), *FRAME_SHAPE), np.uint8)
            for start in range(0, n, _OBS_BLOCK):
                m = min(_OBS_BLOCK, n - start)
                read_items_into(reader, block[:m])
                obs[start : start + m] = block[:m]
            # The CRC-32 sits at the end of the stream: checking it costs the whole file. Done when the
            # prefix is the whole file anyway, or when asked for.
            if full_check or n == header.shape[0]:
                rest = reader.drain()
                if rest != (header.shape[0] - n) * FRAME_BYTES:
                    raise DataError(
                        f"{reader.path}: the stream ends {rest} bytes after frame {n}, not at frame {header.shape[0]}"
                    )
            f.attrs.update(attrs)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        digest, size = sha256_file(tmp), tmp.stat().st_size
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        reader.close()
    return digest, size


def observation_offset(path: Path) -> int:
    """Byte offset of the observation array inside the shard file, for memory-mapping."""
    with h5py.File(path, "r") as f:
        obs = f["observation"]
        offset = obs.id.get_offset()
        if obs.chunks is not None or obs.compression is not None or offset is None:
            raise DataError(f"{path}: observation is not a contiguous uncompressed dataset")
    return int(offset)


def shard_problems(path: Path, entry: ShardEntry) -> list[str]:
    """Shape, dtype and attribute checks of one shard against its manifest entry (no hashing)."""
    problems = []
    try:
        with h5py.File(path, "r") as f:
            for field, (dtype, item_shape) in STORE_FIELDS.items():
                if field not in f:
                    problems.append(f"missing dataset {field!r}")
                    continue
                want = (entry.length, *item_shape)
                if f[field].shape != want or f[field].dtype != dtype:
                    problems.append(f"{field} is {f[field].dtype}{f[field].shape}, expected {dtype}{want}")
            if "invalid_range" not in f or f["invalid_range"].dtype.kind not in "iu":
                problems.append("missing or non-integer invalid_range")
            for key, value in (("game", entry.game), ("run", entry.run), ("ckpt", entry.ckpt)):
                if f.attrs.get(key) != value:
                    problems.append(f"attribute {key}={f.attrs.get(key)!r}, manifest says {value!r}")
            if f.attrs.get("schema_version") != SHARD_SCHEMA_VERSION:
                problems.append(f"schema_version {f.attrs.get('schema_version')!r} != {SHARD_SCHEMA_VERSION}")
    except OSError as err:
        problems.append(f"not a readable HDF5 file ({err})")
    return problems
