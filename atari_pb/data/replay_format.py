"""The DQN-Replay (Dopamine logged replay) on-disk format: paths, and gzip-compressed .npy arrays; and the
released Atari-PB Far-OOD buffer dumps (layout `atari_pb_far_ood`, below), which use the same file format.

Each file is one `numpy.save` array inside a gzip stream. The reader decompresses only as many bytes as
the caller asks for, so the first N frames of a 1M-frame observation file cost about N/1M of the work.
Nothing is ever unpickled: headers are parsed as literals and object dtypes are refused.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from atari_pb.errors import DataError

FRAME_SHAPE = (84, 84)
FRAME_BYTES = 84 * 84

# field -> (dtype, shape of one item); the `$store$_` arrays have one item per transition.
STORE_FIELDS: dict[str, tuple[np.dtype, tuple[int, ...]]] = {
    "observation": (np.dtype(np.uint8), FRAME_SHAPE),
    "action": (np.dtype(np.int32), ()),
    "reward": (np.dtype(np.float32), ()),
    "terminal": (np.dtype(np.uint8), ()),
}
META_FIELDS = ("add_count", "invalid_range")
ALL_FIELDS = tuple(STORE_FIELDS) + META_FIELDS

_READ_CHUNK = 1 << 20  # compressed bytes fed to zlib at a time

# Source layouts `atari-pb ingest --layout` reads.
#   dqn_replay        <root>/<Game>/<run>/replay_logs/$store$_<field>_ckpt.<k>.gz + add_count, invalid_range
#   atari_pb_far_ood  the released Far-OOD BC data, written by the released PERBuffer.save_buffer
#                     (src/agents/buffers/per_buffer.py:224-246): <root>/<Game>/<field>_<run>_<ckpt>.gz, with
#                     <Game> the CamelCase name (src/agents/base.py:224-225; read back the same way by
#                     src/common/dataset_utils.py:161,172). No add_count, no invalid_range.
#   rlu               RL Unplugged Atari (rlu.py): <root>/<Game>/run_<r>-<ckpt:05d>-of-<N:05d>, GZIP TFRecord
LAYOUTS = ("dqn_replay", "atari_pb_far_ood", "rlu")
RELEASED_LAYOUT = "atari_pb_far_ood"
# The released buffers are np.zeros(size) (float64) for action, reward and done (per_buffer.py:98-100) and
# uint8 frame stacks whose last frame is saved (per_buffer.py:97, 235): observation (N, 84, 84) uint8, the
# scalars (N,) of any real dtype, converted to the shard's dtypes after their values are checked.
RELEASED_SCALAR_KINDS = "fiub"


def file_name(field: str, ckpt: int) -> str:
    prefix = "$store$_" if field in STORE_FIELDS else ""
    return f"{prefix}{field}_ckpt.{ckpt}.gz"


def run_dir(root: Path, replay_name: str, run: int) -> Path:
    return Path(root) / replay_name / str(run) / "replay_logs"


def replay_file(root: Path, replay_name: str, run: int, field: str, ckpt: int) -> Path:
    """<root>/<Game>/<run>/replay_logs/$store$_<field>_ckpt.<k>.gz"""
    return run_dir(root, replay_name, run) / file_name(field, ckpt)


def relative_replay_file(replay_name: str, run: int, field: str, ckpt: int) -> str:
    return f"{replay_name}/{run}/replay_logs/{file_name(field, ckpt)}"


def released_file_name(field: str, run: int, ckpt: int) -> str:
    return f"{field}_{run}_{ckpt}.gz"


def released_file(root: Path, replay_name: str, run: int, field: str, ckpt: int) -> Path:
    """<root>/<Game>/<field>_<run>_<ckpt>.gz (the released Far-OOD layout)"""
    return Path(root) / replay_name / released_file_name(field, run, ckpt)


def relative_released_file(replay_name: str, run: int, field: str, ckpt: int) -> str:
    return f"{replay_name}/{released_file_name(field, run, ckpt)}"


class GzipPrefixReader:
    """A gzip file read front to back, decompressing only what is asked for (multi-member aware)."""

    def __init__(self, path: Path, raw=None):
        self.path = Path(path)
        self._raw = raw if raw is not None else open(self.path, "rb")
        self._inflate = zlib.decompressobj(wbits=31)
        self._pending = b""  # decompressed bytes not yet handed out
        self.bytes_out = 0

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> GzipPrefixReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _inflate_more(self, want: int) -> bytes:
        """Up to `want` more decompressed bytes; b'' only at the true end of the stream."""
        while True:
            d = self._inflate
            if d.unconsumed_tail:
                data = d.unconsumed_tail
            elif d.eof:
                data = d.unused_data  # a further gzip member may follow
                if not data:
                    data = self._raw.read(_READ_CHUNK)
                if not data:
                    return b""
                self._inflate = d = zlib.decompressobj(wbits=31)
            else:
                data = self._raw.read(_READ_CHUNK)
                if not data:
                    # zlib may still hold output for input it has already consumed (we capped the output)
                    out = d.decompress(b"", want)
                    if out:
                        return out
                    raise EOFError("gzip stream ends before its end-of-stream marker")
            try:
                out = d.decompress(data, want)
            except zlib.error as err:
                raise DataError(f"{self.path}: corrupt gzip data ({err})") from None
            if out:
                return out

    def readinto(self, buf: memoryview) -> int:
        """Fill `buf` completely; returns the number of bytes written (< len(buf) only at end of stream)."""
        buf = memoryview(buf).cast("B")
        pos = 0
        if self._pending:
            n = min(len(self._pending), len(buf))
            buf[:n] = self._pending[:n]
            self._pending = self._pending[n:]
            pos = n
        while pos < len(buf):
            try:
                out = self._inflate_more(len(buf) - pos)
            except EOFError:
                break
            if not out:
                break
            buf[pos : pos + len(out)] = out
            pos += len(out)
        self.bytes_out += pos
        return pos

    def drain(self) -> int:
        """Decompress the rest of the stream, which checks its CRC-32 and length trailer."""
        total = 0
        while True:
            try:
                out = self._pending or self._inflate_more(1 << 22)
            except EOFError:
                raise DataError(f"{self.path}: truncated gzip stream (no end-of-stream trailer)") from None
            self._pending = b""
            if not out:
                return total
            total += len(out)

    def read(self, n: int) -> bytes:
        buf = bytearray(n)
        got = self.readinto(memoryview(buf))
        return bytes(buf[:got])


@dataclass(frozen=True)
class NpyHeader:
    dtype: np.dtype
    shape: tuple[int, ...]
    fortran_order: bool


def read_npy_header(reader: GzipPrefixReader) -> NpyHeader:
    """Parse a .npy header from the front of a stream (no pickle, no code executed)."""
    path = reader.path
    try:
        version = np.lib.format.read_magic(reader)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(reader)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(reader)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except DataError:
        raise
    except (ValueError, EOFError, OSError, SyntaxError) as err:
        if reader.bytes_out == 0:
            raise DataError(f"{path}: not a gzip-compressed .npy file ({err})") from None
        raise DataError(f"{path}: bad .npy header ({err})") from None
    if dtype.hasobject:
        raise DataError(f"{path}: object arrays are refused (they would need unpickling)")
    return NpyHeader(dtype=dtype, shape=tuple(shape), fortran_order=fortran)


def _open_npy(path: Path) -> tuple[GzipPrefixReader, NpyHeader]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: missing file")
    try:
        reader = GzipPrefixReader(path)
    except OSError as err:
        raise DataError(f"{path}: cannot open ({err.strerror})") from None
    try:
        return reader, read_npy_header(reader)
    except BaseException:
        reader.close()
        raise


def open_released_array(path: Path, field: str) -> tuple[GzipPrefixReader, NpyHeader]:
    """Open a released Far-OOD file (`<field>_<run>_<ckpt>.gz`) and check its dtype and shape."""
    reader, header = _open_npy(path)
    try:
        if field == "observation":
            if header.dtype != np.uint8 or len(header.shape) != 3 or tuple(header.shape[1:]) != FRAME_SHAPE:
                raise DataError(
                    f"{path}: {header.dtype}{header.shape} but {RELEASED_LAYOUT} observation is uint8 "
                    "(N, 84, 84), the last frame of each stored stack"
                )
            if header.fortran_order:
                raise DataError(
                    f"{path}: Fortran-ordered observation arrays are not {RELEASED_LAYOUT} format"
                )
        elif len(header.shape) != 1 or header.dtype.kind not in RELEASED_SCALAR_KINDS:
            raise DataError(
                f"{path}: {header.dtype}{header.shape} but {RELEASED_LAYOUT} {field} is (N,) of numbers"
            )
    except BaseException:
        reader.close()
        raise
    return reader, header


def read_released_prefix(path: Path, field: str, n: int) -> tuple[np.ndarray, int]:
    """The first n items of a released scalar file, in its own dtype, and its length; the rest of the
    stream is decompressed too (a few MB), so its CRC-32 is checked."""
    reader, header = open_released_array(path, field)
    with reader:
        length = header.shape[0]
        if n > length:
            raise DataError(f"{path}: has {length} transitions, {n} were asked for")
        out = np.empty(n, dtype=header.dtype)
        read_items_into(reader, out)
        rest = reader.drain()
        if rest != (length - n) * header.dtype.itemsize:
            raise DataError(f"{path}: the stream holds {rest} bytes after item {n}, its header promised more")
    return out, length


def open_store_array(path: Path, field: str) -> tuple[GzipPrefixReader, NpyHeader]:
    """Open a `$store$_` file and check its dtype and item shape against the DQN-Replay format."""
    reader, header = _open_npy(path)
    try:
        dtype, item_shape = STORE_FIELDS[field]
        if header.dtype != dtype:
            raise DataError(f"{path}: dtype {header.dtype} but DQN-Replay {field} is {dtype}")
        if len(header.shape) != 1 + len(item_shape) or tuple(header.shape[1:]) != item_shape:
            want = "(N, " + ", ".join(map(str, item_shape)) + ")" if item_shape else "(N,)"
            raise DataError(f"{path}: shape {header.shape} but DQN-Replay {field} is {want}")
        if header.fortran_order and item_shape:
            raise DataError(f"{path}: Fortran-ordered {field} arrays are not DQN-Replay format")
    except BaseException:
        reader.close()
        raise
    return reader, header


def read_items_into(reader: GzipPrefixReader, out: np.ndarray) -> None:
    """Fill `out` with the next len(out) items of the stream, or raise naming the file."""
    want = out.nbytes
    got = reader.readinto(memoryview(out.reshape(-1).view(np.uint8)))
    if got < want:
        raise DataError(f"{reader.path}: truncated gzip stream (needed {want} more bytes, got {got})")


def read_store_prefix(path: Path, field: str, n: int, check_trailer: bool = False) -> tuple[np.ndarray, int]:
    """The first n items of a `$store$_` file and the file's full length (from its header).

    Only a stream read to its end can be checked against gzip's CRC-32; `check_trailer` does that at the
    cost of decompressing the rest of the file.
    """
    reader, header = open_store_array(path, field)
    with reader:
        length = header.shape[0]
        if n > length:
            raise DataError(f"{path}: has {length} transitions, {n} were asked for")
        dtype, item_shape = STORE_FIELDS[field]
        out = np.empty((n, *item_shape), dtype=dtype)
        read_items_into(reader, out)
        if check_trailer:
            rest = reader.drain()
            if rest != (length - n) * out.itemsize * int(np.prod(item_shape, dtype=np.int64)):
                raise DataError(
                    f"{path}: the stream holds {rest} bytes after item {n}, its header promised more"
                )
    return out, length


def read_small_array(path: Path) -> np.ndarray:
    """add_count / invalid_range: a small integer array (or scalar), read whole."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: missing file")
    with GzipPrefixReader(path) as reader:
        header = read_npy_header(reader)
        if header.dtype.kind not in "iu":
            raise DataError(f"{path}: dtype {header.dtype}, expected an integer array")
        count = int(np.prod(header.shape, dtype=np.int64))
        if count > 1_000_000:
            raise DataError(f"{path}: {count} entries is not a small array")
        out = np.empty(count, dtype=header.dtype)
        read_items_into(reader, out)
        reader.drain()
    return out.reshape(header.shape)


class GzipNpyWriter:
    """Write one .npy array into a gzip file in pieces (bounded memory), atomically on close."""

    def __init__(self, path: Path, dtype: np.dtype, shape: tuple[int, ...], compresslevel: int = 6):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(s) for s in shape)
        self._expected = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self._written = 0
        self._tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        self._raw = open(self._tmp, "wb")
        # mtime=0 and no file name in the header: the same array always gives the same bytes.
        self._gz = gzip.GzipFile(
            filename="", fileobj=self._raw, mode="wb", compresslevel=compresslevel, mtime=0
        )
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": self.shape,
        }
        np.lib.format.write_array_header_1_0(self._gz, header)

    def write(self, items: np.ndarray) -> None:
        items = np.ascontiguousarray(items, dtype=self.dtype)
        self._gz.write(memoryview(items.reshape(-1).view(np.uint8)))
        self._written += items.nbytes

    def close(self) -> None:
        if self._written != self._expected:
            self.abort()
            raise ValueError(f"{self.path}: wrote {self._written} bytes, header promised {self._expected}")
        self._gz.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._gz.close()
        self._raw.close()
        self._tmp.unlink(missing_ok=True)


def write_gz_npy(path: Path, array: np.ndarray, compresslevel: int = 6) -> None:
    writer = GzipNpyWriter(path, array.dtype, array.shape, compresslevel)
    writer.write(array)
    writer.close()
