"""Download DQN-Replay checkpoints over HTTP(S), whole or as a prefix of each observation file; or the same
runs from RL Unplugged Atari (`source="rlu"`, rlu.py), prefix-only too.

RL Unplugged (since 2025 the public DQN-Replay bucket answers 403 to the public): one GZIP TFRecord file per
checkpoint, `<base>/<Game>/run_<r>-<ckpt:05d>-of-<N:05d>`, mirrored as such into `dest`. N is discovered
per run with HEAD requests (TFDS's 50 and 49 first). The prefix ends after the record (episode) that
completes `samples_per_ckpt` transitions, every record's CRC32C checked on the way; the decision is made on
aligned 64 KiB blocks of the file, so the kept prefix is the same bytes however the download was split.
The checkpoint fallback below applies unchanged: RLU has shards 0-49 (0-48 for a few games), so a requested
checkpoint 50 becomes 49, or 48, and `download.json` says so. `<dest>/rlu.json` records the base URL.

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

from atari_pb.data import rlu
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
from atari_pb.data.rlu import RLU_LAYOUT, EpisodeCounter
from atari_pb.data.tfrecord import RecordStream
from atari_pb.errors import DataError, UsageError
from atari_pb.games import Game

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://storage.googleapis.com/atari-replay-datasets/dqn"
SOURCES = ("dqn_replay", RLU_LAYOUT)  # what `download --source` fetches
_REPLAY_HINT = "is the game in DQN-Replay?"
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
    base_url: str | None = None,
    retries: int = 5,
    timeout: float = 60.0,
    backoff: float = 1.0,
    progress: bool = True,
    fallback: bool = True,
    source: str = "dqn_replay",
    skip_missing_games: bool = False,
) -> DownloadReport:
    """Mirror every (game, run, checkpoint) of DQN-Replay (`source="dqn_replay"`) or of its RL Unplugged copy
    (`source="rlu"`, see rlu.py) into `dest`, skipping files already complete.

    With `samples_per_ckpt`, observation files (RLU: checkpoint files) stop after that many transitions;
    DQN-Replay's other files are small and always fetched whole. With `fallback`, a checkpoint 50 missing on
    the server is replaced by 49, then 48, as the released script does (see the module docstring); without
    it, a missing file is an error. RLU games that RL Unplugged lacks stop the request before anything is
    written, unless `skip_missing_games`.
    """
    dest = Path(dest)
    if source not in SOURCES:
        raise UsageError(f"source {source!r}; valid sources: {', '.join(SOURCES)}")
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"{dest} is a file; download needs a directory")
    _check_ids("runs", runs, RUNS)
    _check_ids("ckpts", ckpts, CKPTS)
    if samples_per_ckpt is not None and samples_per_ckpt < 1:
        raise UsageError(f"samples_per_ckpt={samples_per_ckpt}: must be at least 1 (or None for whole files)")
    if source == RLU_LAYOUT:
        games = rlu.check_coverage(games, skip_missing_games)
    base_url = base_url or (rlu.DEFAULT_RLU_URL if source == RLU_LAYOUT else DEFAULT_BASE_URL)
    report = DownloadReport()
    with tqdm(unit="B", unit_scale=True, unit_divisor=1024, disable=None if progress else True) as bar:
        fetcher = _Fetcher(retries, timeout, backoff, report, bar)
        if source == RLU_LAYOUT:
            rlu.write_source_record(dest, base_url)
        for game in games:
            for run in runs:
                if source == RLU_LAYOUT:
                    site = _RluRun(fetcher, dest, base_url, game, run)
                else:
                    site = _ReplayRun(fetcher, dest, base_url, game, run)
                for ckpt in ckpts:
                    used = _resolve_ckpt(site, ckpt, ckpts, fallback)
                    site.fetch(used, samples_per_ckpt)
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


class _ReplayRun:
    """One (game, run) of DQN-Replay: <base>/<Game>/<run>/replay_logs/<file>, six files a checkpoint."""

    def __init__(self, fetcher: _Fetcher, dest: Path, base_url: str, game: Game, run: int):
        self.fetcher, self.dest, self.base_url, self.game, self.run = fetcher, dest, base_url, game, run
        self.where = f"{base_url.rstrip('/')}/{game.replay_name}/{run}/replay_logs"

    def fetch(self, ckpt: int, samples_per_ckpt: int | None) -> None:
        _fetch_ckpt(
            self.fetcher, self.dest, self.base_url, self.game.replay_name, self.run, ckpt, samples_per_ckpt
        )

    def have_local(self, ckpt: int) -> bool:
        return all(
            replay_file(self.dest, self.game.replay_name, self.run, fld, ckpt).exists() for fld in ALL_FIELDS
        )

    def first_missing(self, ckpt: int) -> str | None:
        """The first file of the checkpoint that the server does not have (HTTP 404), observation first."""
        name = self.game.replay_name
        for fld in ALL_FIELDS:
            if not self.fetcher.exists(replay_url(self.base_url, name, self.run, fld, ckpt)):
                return file_name(fld, ckpt)
        return None


class _RluRun:
    """One (game, run) of RL Unplugged: <base>/<Game>/run_<r>-<ckpt>-of-<N>, one file a checkpoint; N is
    asked of the server (HEAD requests) the first time it is needed."""

    def __init__(self, fetcher: _Fetcher, dest: Path, base_url: str, game: Game, run: int):
        self.fetcher, self.dest, self.base_url, self.game, self.run = fetcher, dest, base_url, game, run
        self.where = f"{base_url.rstrip('/')}/{game.replay_name}/run_{run}-*"
        self._count: int | None = None

    @property
    def count(self) -> int:
        """The run's number of shards, discovered: TFDS's counts first, then any other up to the maximum."""
        if self._count is None:
            others = [n for n in range(rlu.MAX_SHARD_COUNT, 0, -1) if n not in rlu.KNOWN_SHARD_COUNTS]
            for n in (*rlu.KNOWN_SHARD_COUNTS, *others):
                if self.fetcher.exists(rlu.rlu_url(self.base_url, self.game, self.run, 0, n)):
                    self._count = n
                    break
            else:
                raise UsageError(
                    f"{rlu.rlu_url(self.base_url, self.game, self.run, 0, rlu.KNOWN_SHARD_COUNTS[0])}: not found "
                    f"(HTTP 404), nor with any other shard count up to {rlu.MAX_SHARD_COUNT}; "
                    f"does the server have {self.game.replay_name} run {self.run}?"
                )
            log.info("%s run %d: %d shards on the server", self.game.replay_name, self.run, self._count)
        return self._count

    def local(self, ckpt: int) -> Path:
        found = rlu.local_shard(self.dest, self.game, self.run, ckpt)
        return found or self.dest / self.game.replay_name / rlu.shard_name(self.run, ckpt, self.count)

    def have_local(self, ckpt: int) -> bool:
        return rlu.local_shard(self.dest, self.game, self.run, ckpt) is not None

    def first_missing(self, ckpt: int) -> str | None:
        if ckpt >= self.count:
            return f"{rlu.shard_name(self.run, ckpt, self.count)} (the run has shards 0-{self.count - 1})"
        url = rlu.rlu_url(self.base_url, self.game, self.run, ckpt, self.count)
        return None if self.fetcher.exists(url) else rlu.shard_name(self.run, ckpt, self.count)

    def fetch(self, ckpt: int, samples_per_ckpt: int | None) -> None:
        path = self.local(ckpt)
        count = int(path.name.rsplit("-", 1)[1])
        url = rlu.rlu_url(self.base_url, self.game, self.run, ckpt, count)
        self.fetcher.bar.set_description(f"{self.game.replay_name} {path.name}")
        hint = f"RL Unplugged names {self.game.replay_name} run {self.run}'s files {self.where}"
        if samples_per_ckpt is None:
            fetched = self.fetcher.whole(url, path, hint, whole=_is_whole_tfrecord)
        else:
            fetched = self.fetcher.prefix(url, path, rlu.EpisodeCounter(samples_per_ckpt), hint)
        if fetched:
            self.fetcher.report.files_fetched += 1
        else:
            self.fetcher.report.files_skipped += 1


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
            fetched = fetcher.prefix(url, path, _FrameCounter(samples_per_ckpt), _REPLAY_HINT)
        else:
            fetched = fetcher.whole(url, path, _REPLAY_HINT)
        if fetched:
            fetcher.report.files_fetched += 1
        else:
            fetcher.report.files_skipped += 1


def _resolve_ckpt(site: _ReplayRun | _RluRun, ckpt: int, ckpts: Sequence[int], fallback: bool) -> int:
    """The checkpoint whose files stand for `ckpt`: itself, or under the fallback rule the first of
    `FALLBACK_CKPTS[ckpt]` whose files are all on the server. Writes nothing."""
    if not fallback or ckpt not in FALLBACK_CKPTS:
        return ckpt
    name, run = site.game.replay_name, site.run
    used = read_used_ckpts(site.dest, name, run).get(ckpt)
    if used is None and site.have_local(ckpt):
        used = ckpt  # downloaded before, without a record
    if used is None:
        missing = []
        for candidate in (ckpt, *FALLBACK_CKPTS[ckpt]):
            absent = site.first_missing(candidate)
            if absent is None:
                used = candidate
                break
            missing.append(absent)
        else:
            tried = ", ".join(map(str, (ckpt, *FALLBACK_CKPTS[ckpt])))
            raise UsageError(
                f"{name} run {run}: checkpoints {tried} are all missing at {site.where} "
                f"(HTTP 404 for {', '.join(missing)}); pass other runs or checkpoints"
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
    path.parent.mkdir(parents=True, exist_ok=True)  # RLU trees have no <run>/ of their own
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

    def whole(self, url: str, path: Path, hint: str, whole=None) -> bool:
        """Fetch the whole file unless `path` already holds it (`whole(path)`, by default a whole .npy.gz);
        False when there was nothing to do."""
        if path.exists() and (whole or _is_whole_gzip)(path):
            return False
        part = _part_path(path)
        if path.exists():
            os.replace(path, part)  # a prefix from an earlier prefix download: continue it
        self._append(url, part, None, hint)
        os.replace(part, path)
        return True

    def prefix(self, url: str, path: Path, counter: _FrameCounter | EpisodeCounter, hint: str) -> bool:
        """Fetch the file until `counter` has its transitions, unless `path` already has them."""
        part = _part_path(path)
        if path.exists():
            _feed_file(counter, path, at_end=True)
            if counter.done:
                return False
            log.info(
                "%s: has %d transitions, %d asked for; fetching more",
                path,
                counter.frames_in,
                counter.samples,
            )
            os.replace(path, part)  # grow it like an unfinished download
        elif part.exists():
            _feed_file(counter, part, at_end=False)
        if not counter.done:
            self._append(url, part, counter, hint)
        if not counter.done:
            raise DataError(counter.shortfall(url))
        os.replace(part, path)
        return True

    def _append(
        self, url: str, part: Path, counter: _FrameCounter | EpisodeCounter | None, hint: str
    ) -> None:
        """Append the rest of `url` to `part` (with a counter: until it has its transitions), retrying."""
        self._retrying(url, lambda: self._get(url, part, counter, hint))

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
            raise DataError(f"{url}: HTTP {err.code} {err.reason}{_refused_hint(url, err.code)}") from None

    def _get(self, url: str, part: Path, counter: _FrameCounter | EpisodeCounter | None, hint: str) -> None:
        """One GET from the end of `part`; raises a _RETRYABLE error when the body stops short."""
        offset = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as err:
            err.close()
            if err.code == 404:
                raise UsageError(f"{url}: not found (HTTP 404); {hint}") from None
            if err.code == 416:  # Range starts at or past the end of the file
                size = _unsatisfied_range_size(err.headers.get("Content-Range"))
                if size == offset:
                    return  # the .part already holds the whole file
                log.info("%s: %s does not match the server's file (%s bytes); starting over", url, part, size)
                _start_over(part, counter)
                self._get(url, part, counter, hint)
                return
            if err.code >= 500:
                raise  # the server's trouble, likely passing: retried
            raise DataError(f"{url}: HTTP {err.code} {err.reason}{_refused_hint(url, err.code)}") from None
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
                    self.report.bytes_received += len(chunk)
                    self.bar.update(len(chunk))
                    keep = len(chunk) if counter is None else counter.feed(chunk, url)
                    f.write(chunk[:keep])
        have = part.stat().st_size
        if (counter is None or not counter.done) and size is not None and have < size:
            raise ConnectionError(f"connection closed at byte {have} of {size}")
        if counter is not None and not counter.done:
            counter.finish(url)  # the whole file is in: decide on its last bytes


class _FrameCounter:
    """Decompresses an observation .npy.gz fed in pieces and counts its frames, keeping none of them."""

    def __init__(self, frames: int):
        self.frames = self.samples = frames
        self.reset()

    def finish(self, source: str) -> None:
        """Nothing is held back: every byte fed has been decided on."""

    def shortfall(self, url: str) -> str:
        return f"{url}: the file ends after {self.frames_in} frames, {self.frames} were asked for"

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

    def feed(self, data: bytes, source: str) -> int:
        """Decompress `data` (from `source`, named in errors) until the frames are in or it runs out; all
        of `data` is kept (the file's end is not cut to a frame)."""
        self._feed(data, source)
        return len(data)

    def _feed(self, data: bytes, source: str) -> None:
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


def _feed_file(counter: _FrameCounter | EpisodeCounter, path: Path, at_end: bool) -> None:
    """Feed a local file (or .part) to `counter`; `at_end`: the file is all there is of it."""
    with open(path, "rb") as f:
        while not counter.done and (chunk := f.read(_CHUNK)):
            counter.feed(chunk, str(path))
    if at_end and not counter.done:
        counter.finish(str(path))


def _is_whole_tfrecord(path: Path) -> bool:
    """Whether a local RLU file holds its whole GZIP stream (read to its end, every record checked)."""
    stream = RecordStream(str(path))
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            for _ in stream.feed(chunk):
                pass
    return stream.gzip_ended and stream.at_record_boundary


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


def _start_over(part: Path, counter: _FrameCounter | EpisodeCounter | None) -> None:
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


def _refused_hint(url: str, code: int) -> str:
    """The public DQN-Replay bucket refuses the public (403/401 since 2025): point at its RL Unplugged copy."""
    if code in (401, 403) and url.startswith(DEFAULT_BASE_URL):
        return (
            "; the public DQN-Replay bucket refuses access since 2025: fetch the same runs from RL Unplugged "
            "with --source rlu (e.g. make download DATASET=rlu_pretrain)"
        )
    return ""


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"
