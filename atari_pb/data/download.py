"""Download DQN-Replay checkpoints over HTTP(S), whole or as a prefix of each observation file.

DQN-Replay is a public bucket laid out exactly as on disk (see replay_format.py), so the download mirrors
it into `dest`. An observation file holds 1M frames (7 GB once decompressed); when only the first
`samples_per_ckpt` are wanted, the file is decompressed as it streams in and the connection is closed as
soon as they have arrived. The compressed bytes read until then are kept: a truncated gzip stream is still
a valid prefix, and a prefix is all that ingest reads.

Every file is written to `<name>.part` and renamed once complete, so an interrupted download leaves either
nothing or a `.part` that the next run continues with an HTTP Range request. Dropped connections are
retried the same way, from the byte they stopped at.

Checkpoint fallback (on by default; `fallback=False`, `atari-pb download --no-fallback` for exact requests).
The released Atari-PB script (scripts/download_offline_bc_dataset.sh, lines 10-21) allows for runs whose
checkpoint 50 is missing from the bucket: it then takes checkpoint 49, and failing that 48, and nothing
else: checkpoint 50 is the only one that falls back (the pre-training script, checkpoints 1-10, has
no fallback). The same rule here: a requested checkpoint 50 is probed with HTTP HEAD requests (the
script's `gsutil stat`) before anything is written, and when the server answers 404 for any of its files
(observation or any other) the next one down is probed, so that all files of a checkpoint come from one
checkpoint. (The script decides file by file, which could pair one checkpoint's observations with
another's rewards.) Only a 404 falls back: a network failure or a server error is retried and then fails,
and a corrupt file fails, as for any file. When none of 50, 49, 48 is complete, the download stops with
one line naming the game, the run and the checkpoints tried, before writing anything of that run.

The checkpoint a request ended up with is recorded once its files are complete, in
`<dest>/<Game>/<run>/download.json` (`{"used_ckpt": {"50": 49}}`, 50 -> 50 when none was needed). The
files keep their true names (`$store$_observation_ckpt.49.gz`), and `ingest` reads the record: asked for
checkpoint 50 it builds the shard from checkpoint 49's files and names it after the checkpoint it holds,
`<game>/run<r>_ckpt49.h5`, with `ckpt: 49` in the manifest (the released script instead saved the files
under 50's name). A later download of the same request follows the record without probing again.
"""

from __future__ import annotations

import dataclasses
import http.client
import io
import json
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from atari_pb.data.replay_format import (
    ALL_FIELDS,
    FRAME_BYTES,
    FRAME_SHAPE,
    GzipPrefixReader,
    file_name,
    read_npy_header,
    replay_file,
    run_dir,
)
from atari_pb.errors import DataError, UsageError
from atari_pb.games import Game

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://storage.googleapis.com/atari-replay-datasets/dqn"
RUNS = range(1, 6)  # DQN-Replay logged runs 1-5 of each game ...
CKPTS = range(0, 51)  # ... each with checkpoints 0-50
# The released rule (scripts/download_offline_bc_dataset.sh, lines 10-21): a missing checkpoint 50 is
# replaced by 49, then 48; no other checkpoint falls back.
FALLBACK_CKPTS: dict[int, tuple[int, ...]] = {50: (49, 48)}
RECORD_NAME = "download.json"  # beside replay_logs/: which checkpoint each fallback request used

_CHUNK = 1 << 16  # compressed bytes read from the socket or a local file at a time
_INFLATE_CHUNK = 1 << 20  # decompressed bytes produced (and dropped) at a time
# A connection that failed midway is worth another try; an HTTP 4xx answer is not.
_RETRYABLE = (http.client.HTTPException, ConnectionError, TimeoutError, urllib.error.URLError)


@dataclass
class DownloadReport:
    files_fetched: int = 0  # downloaded now (including ones finished from a .part)
    files_skipped: int = 0  # already complete in dest
    bytes_received: int = 0  # compressed bytes read from the network
    fallbacks: list[str] = dataclasses.field(
        default_factory=list
    )  # "<Game> run <r>: ckpt 50 -> 49", one per fallback


def replay_url(base_url: str, replay_name: str, run: int, field: str, ckpt: int) -> str:
    """<base_url>/<Game>/<run>/replay_logs/<file name>, with `$` quoted."""
    name = urllib.parse.quote(file_name(field, ckpt))
    return f"{base_url.rstrip('/')}/{replay_name}/{run}/replay_logs/{name}"


def download(
    dest: Path,
    games: Sequence[Game],
    runs: Sequence[int],
    ckpts: Sequence[int],
    *,
    samples_per_ckpt: int | None,
    base_url: str = DEFAULT_BASE_URL,
    retries: int = 5,
    timeout: float = 60.0,
    backoff: float = 1.0,
    progress: bool = True,
    fallback: bool = True,
) -> DownloadReport:
    """Mirror every (game, run, checkpoint) of DQN-Replay into `dest`, skipping files already complete.

    With `samples_per_ckpt`, observation files stop after that many frames; the other files are small and
    always fetched whole. With `fallback`, a checkpoint 50 missing on the server is replaced by 49, then
    48, as the released script does (see the module docstring); without it, a missing file is an error.
    """
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"{dest} is a file; download needs a directory")
    _check_ids("runs", runs, RUNS)
    _check_ids("ckpts", ckpts, CKPTS)
    if samples_per_ckpt is not None and samples_per_ckpt < 1:
        raise UsageError(f"samples_per_ckpt={samples_per_ckpt}: must be at least 1 (or None for whole files)")
    report = DownloadReport()
    with tqdm(unit="B", unit_scale=True, unit_divisor=1024, disable=None if progress else True) as bar:
        fetcher = _Fetcher(retries, timeout, backoff, report, bar)
        for game in games:
            for run in runs:
                for ckpt in ckpts:
                    used = _resolve_ckpt(fetcher, dest, base_url, game, run, ckpt, ckpts, fallback)
                    _fetch_ckpt(fetcher, dest, base_url, game.replay_name, run, used, samples_per_ckpt)
                    if ckpt in FALLBACK_CKPTS:  # the files are complete: ingest may now follow the record
                        _record_used_ckpt(dest, game.replay_name, run, ckpt, used)
                    if used != ckpt:
                        report.fallbacks.append(f"{game.replay_name} run {run}: ckpt {ckpt} -> {used}")
    log.info(
        "download: %d files fetched, %d already complete, %d bytes received",
        report.files_fetched,
        report.files_skipped,
        report.bytes_received,
    )
    return report


def _fetch_ckpt(
    fetcher: _Fetcher,
    dest: Path,
    base_url: str,
    replay_name: str,
    run: int,
    ckpt: int,
    samples_per_ckpt: int | None,
) -> None:
    """Fetch the files of one checkpoint, skipping those already complete."""
    for fld in ALL_FIELDS:
        fetcher.bar.set_description(f"{replay_name}/{run} {fld} {ckpt}")
        path = replay_file(dest, replay_name, run, fld, ckpt)
        url = replay_url(base_url, replay_name, run, fld, ckpt)
        if fld == "observation" and samples_per_ckpt is not None:
            fetched = fetcher.prefix(url, path, samples_per_ckpt)
        else:
            fetched = fetcher.whole(url, path)
        if fetched:
            fetcher.report.files_fetched += 1
        else:
            fetcher.report.files_skipped += 1


def _resolve_ckpt(
    fetcher: _Fetcher,
    dest: Path,
    base_url: str,
    game: Game,
    run: int,
    ckpt: int,
    ckpts: Sequence[int],
    fallback: bool,
) -> int:
    """The checkpoint whose files stand for `ckpt`: itself, or under the fallback rule the first of
    `FALLBACK_CKPTS[ckpt]` whose files are all on the server. Writes nothing."""
    if not fallback or ckpt not in FALLBACK_CKPTS:
        return ckpt
    name = game.replay_name
    used = read_used_ckpts(dest, name, run).get(ckpt)
    if used is None and all(replay_file(dest, name, run, fld, ckpt).exists() for fld in ALL_FIELDS):
        used = ckpt  # downloaded before, without a record
    if used is None:
        missing = []
        for candidate in (ckpt, *FALLBACK_CKPTS[ckpt]):
            absent = _first_missing(fetcher, base_url, name, run, candidate)
            if absent is None:
                used = candidate
                break
            missing.append(file_name(absent, candidate))
        else:
            tried = ", ".join(map(str, (ckpt, *FALLBACK_CKPTS[ckpt])))
            raise UsageError(
                f"{name} run {run}: checkpoints {tried} are all missing at {base_url.rstrip('/')}/{name}/{run}/"
                f"replay_logs (HTTP 404 for {', '.join(missing)}); pass other runs or checkpoints"
            )
    if used != ckpt:
        if used in ckpts:
            raise UsageError(
                f"{name} run {run}: checkpoint {ckpt} is missing and falls back to {used}, which is "
                f"requested too; leave one of them out"
            )
        log.warning(
            "%s run %d: checkpoint %d is missing on the server; using checkpoint %d", name, run, ckpt, used
        )
    return used


def _first_missing(fetcher: _Fetcher, base_url: str, replay_name: str, run: int, ckpt: int) -> str | None:
    """The first file of the checkpoint that the server does not have (HTTP 404), observation first."""
    for fld in ALL_FIELDS:
        if not fetcher.exists(replay_url(base_url, replay_name, run, fld, ckpt)):
            return fld
    return None


def _record_path(root: Path, replay_name: str, run: int) -> Path:
    return run_dir(root, replay_name, run).parent / RECORD_NAME


def read_used_ckpts(root: Path, replay_name: str, run: int) -> dict[int, int]:
    """requested -> used checkpoint, from `<root>/<Game>/<run>/download.json`; {} without a record."""
    path = _record_path(root, replay_name, run)
    if not path.exists():
        return {}
    try:
        used = {int(k): int(v) for k, v in json.loads(path.read_text())["used_ckpt"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(f"{path}: malformed download record ({err})") from None
    for ckpt, got in used.items():
        if got not in (ckpt, *FALLBACK_CKPTS.get(ckpt, ())):
            raise DataError(f"{path}: checkpoint {ckpt} -> {got} is not a fallback of the released rule")
    return used


def _record_used_ckpt(root: Path, replay_name: str, run: int, ckpt: int, used: int) -> None:
    """Add requested -> used to the run's record, atomically."""
    path = _record_path(root, replay_name, run)
    record = read_used_ckpts(root, replay_name, run)
    if record.get(ckpt) == used:
        return
    record[ckpt] = used
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    doc = {"used_ckpt": {str(k): record[k] for k in sorted(record)}}
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)


def _check_ids(what: str, values: Sequence[int], valid: range) -> None:
    values = list(values)
    if not values:
        raise UsageError(f"no {what} given")
    if any(v not in valid for v in values) or len(set(values)) != len(values):
        raise UsageError(
            f"{what} {values}: must be distinct integers in {valid.start}..{valid.stop - 1} "
            f"(DQN-Replay has {what} {valid.start}-{valid.stop - 1})"
        )


class _Fetcher:
    """HTTP GETs appended to `<file>.part`, retried from the byte where the connection dropped."""

    def __init__(self, retries: int, timeout: float, backoff: float, report: DownloadReport, bar: tqdm):
        self.retries = retries
        self.timeout = timeout
        self.backoff = backoff
        self.report = report
        self.bar = bar

    def whole(self, url: str, path: Path) -> bool:
        """Fetch the whole file unless `path` already holds it; False when there was nothing to do."""
        if path.exists() and _is_whole_gzip(path):
            return False
        part = _part_path(path)
        if path.exists():
            os.replace(path, part)  # a prefix from an earlier prefix download: continue it
        self._append(url, part, None)
        os.replace(part, path)
        return True

    def prefix(self, url: str, path: Path, frames: int) -> bool:
        """Fetch the observation file until its first `frames` frames are in, unless `path` has them."""
        part = _part_path(path)
        counter = _FrameCounter(frames)
        if path.exists():
            _feed_file(counter, path)
            if counter.done:
                return False
            log.info("%s: has %d frames, %d asked for; fetching more", path, counter.frames_in, frames)
            os.replace(path, part)  # grow it like an unfinished download
        elif part.exists():
            _feed_file(counter, part)
        if not counter.done:
            self._append(url, part, counter)
        if not counter.done:
            raise DataError(f"{url}: the file ends after {counter.frames_in} frames, {frames} were asked for")
        os.replace(part, path)
        return True

    def _append(self, url: str, part: Path, counter: _FrameCounter | None) -> None:
        """Append the rest of `url` to `part` (with a counter: until it has its frames), retrying."""
        self._retrying(url, lambda: self._get(url, part, counter))

    def exists(self, url: str) -> bool:
        """Whether the server has `url` (a HEAD request): False only for an HTTP 404, retried otherwise."""
        return self._retrying(url, lambda: self._head(url))

    def _retrying(self, url: str, attempt_once):
        """`attempt_once()`, tried again after a _RETRYABLE failure, with exponential backoff."""
        for attempt in range(self.retries + 1):
            try:
                return attempt_once()
            except _RETRYABLE as err:
                if attempt == self.retries:
                    raise DataError(
                        f"{url}: failed after {self.retries} retries ({_describe(err)})"
                    ) from None
                delay = self.backoff * 2**attempt
                log.warning(
                    "%s: %s; retry %d of %d in %.2fs", url, _describe(err), attempt + 1, self.retries, delay
                )
                time.sleep(delay)

    def _head(self, url: str) -> bool:
        request = urllib.request.Request(url, method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout):
                return True
        except urllib.error.HTTPError as err:
            err.close()
            if err.code == 404:
                return False
            if err.code >= 500:
                raise  # the server's trouble, likely passing: retried
            raise DataError(f"{url}: HTTP {err.code} {err.reason}") from None

    def _get(self, url: str, part: Path, counter: _FrameCounter | None) -> None:
        """One GET from the end of `part`; raises a _RETRYABLE error when the body stops short."""
        offset = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as err:
            err.close()
            if err.code == 404:
                raise UsageError(f"{url}: not found (HTTP 404); is the game in DQN-Replay?") from None
            if err.code == 416:  # Range starts at or past the end of the file
                size = _unsatisfied_range_size(err.headers.get("Content-Range"))
                if size == offset:
                    return  # the .part already holds the whole file
                log.info("%s: %s does not match the server's file (%s bytes); starting over", url, part, size)
                _start_over(part, counter)
                self._get(url, part, counter)
                return
            if err.code >= 500:
                raise  # the server's trouble, likely passing: retried
            raise DataError(f"{url}: HTTP {err.code} {err.reason}") from None
        with response:
            if response.status == 206:
                start, size = _content_range(url, response.headers.get("Content-Range"))
                if start != offset:
                    raise DataError(f"{url}: asked for bytes from {offset}, got them from {start}")
            else:
                if offset:
                    log.info("%s: the server ignored the Range request; starting over", url)
                    _start_over(part, counter)
                # No Content-Length means a chunked body, whose end http.client checks itself.
                length = response.headers.get("Content-Length")
                size = int(length) if length is not None else None
            part.parent.mkdir(parents=True, exist_ok=True)
            with open(part, "ab") as f:
                # Stop reading once the counter has its frames; closing the response drops the connection.
                while counter is None or not counter.done:
                    chunk = response.read1(_CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    self.report.bytes_received += len(chunk)
                    self.bar.update(len(chunk))
                    if counter is not None:
                        counter.feed(chunk, url)
        have = part.stat().st_size
        if (counter is None or not counter.done) and size is not None and have < size:
            raise ConnectionError(f"connection closed at byte {have} of {size}")


class _FrameCounter:
    """Decompresses an observation .npy.gz fed in pieces and counts its frames, keeping none of them."""

    def __init__(self, frames: int):
        self.frames = frames
        self.reset()

    def reset(self) -> None:
        self._inflate = zlib.decompressobj(wbits=31)
        self._head = b""  # decompressed bytes until the .npy header is complete
        self.header_len: int | None = None
        self.out_bytes = 0  # decompressed bytes so far, header included

    @property
    def need(self) -> int | None:
        return None if self.header_len is None else self.header_len + self.frames * FRAME_BYTES

    @property
    def done(self) -> bool:
        return self.header_len is not None and self.out_bytes >= self.need

    @property
    def frames_in(self) -> int:
        return 0 if self.header_len is None else (self.out_bytes - self.header_len) // FRAME_BYTES

    def feed(self, data: bytes, source: str) -> None:
        """Decompress `data` (from `source`, named in errors) until the frames are in or it runs out."""
        while not self.done:
            if self._inflate.eof:  # another gzip member follows
                self._inflate = zlib.decompressobj(wbits=31)
            want = _INFLATE_CHUNK if self.need is None else min(_INFLATE_CHUNK, self.need - self.out_bytes)
            try:
                out = self._inflate.decompress(data, want)
            except zlib.error as err:
                raise DataError(f"{source}: corrupt gzip data ({err})") from None
            data = self._inflate.unused_data if self._inflate.eof else self._inflate.unconsumed_tail
            self.out_bytes += len(out)
            if self.header_len is None:
                self._read_header(out, source)
            # Called with no input left, zlib still hands out what it held back for lack of room.
            if not out and not data:
                return

    def _read_header(self, out: bytes, source: str) -> None:
        """Once the whole .npy header is in, check it and work out how many bytes the frames need."""
        head = self._head = self._head + out
        if len(head) < 12:  # magic (6), version (2), header length (2 or 4)
            return
        if not head.startswith(b"\x93NUMPY"):
            raise DataError(f"{source}: not a .npy file")
        if head[6] == 1:
            header_len = 10 + int.from_bytes(head[8:10], "little")
        else:
            header_len = 12 + int.from_bytes(head[8:12], "little")
        if len(head) < header_len:
            return
        fp = io.BytesIO(head)
        fmt = np.lib.format
        version = fmt.read_magic(fp)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        try:
            shape, fortran_order, dtype = read(fp)  # a literal parse, nothing unpickled
        except ValueError as err:
            raise DataError(f"{source}: bad .npy header ({err})") from None
        if dtype != np.uint8 or tuple(shape[1:]) != FRAME_SHAPE or len(shape) != 3 or fortran_order:
            raise DataError(f"{source}: a {dtype} {shape} array, not DQN-Replay's (N, 84, 84) uint8 frames")
        if shape[0] < self.frames:
            raise DataError(f"{source}: has {shape[0]} transitions, {self.frames} were asked for")
        self.header_len = header_len
        self._head = b""


def _feed_file(counter: _FrameCounter, path: Path) -> None:
    with open(path, "rb") as f:
        while not counter.done and (chunk := f.read(_CHUNK)):
            counter.feed(chunk, str(path))


def _is_whole_gzip(path: Path) -> bool:
    """Whether `path` holds its whole array, not a prefix left by a prefix download.

    A gzip stream ends with its uncompressed size mod 2**32; in a truncated prefix those 4 bytes are
    compressed data, which match by chance once in 2**32.
    """
    with GzipPrefixReader(path) as reader:
        header = read_npy_header(reader)
        size = reader.bytes_out + int(np.prod(header.shape, dtype=np.int64)) * header.dtype.itemsize
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        return int.from_bytes(f.read(4), "little") == size % 2**32


def _part_path(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def _start_over(part: Path, counter: _FrameCounter | None) -> None:
    part.unlink(missing_ok=True)
    if counter is not None:
        counter.reset()


def _content_range(url: str, value: str | None) -> tuple[int, int]:
    """First byte and file size of a 206 answer's `Content-Range: bytes <first>-<last>/<size>`."""
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+)", value or "")
    if match is None:
        raise DataError(f"{url}: unusable Content-Range {value!r} in a 206 answer")
    return int(match[1]), int(match[2])


def _unsatisfied_range_size(value: str | None) -> int | None:
    """File size from a 416 answer's `Content-Range: bytes */<size>`, if the server sent one."""
    match = re.fullmatch(r"bytes \*/(\d+)", value or "")
    return int(match[1]) if match else None


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"
