"""`atari_pb.data.download` against a local HTTP server that serves a small collected DQN-Replay tree.

The server (127.0.0.1 only) honours `Range: bytes=<a>-`, counts the body bytes it sends per file, and can
drop connections midway or ignore Range, so resuming, retrying and early stopping are all exercised over
real sockets.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from atari_pb.data import ShardSet
from atari_pb.data.collect import CollectConfig, collect
from atari_pb.data.download import download, replay_url
from atari_pb.data.replay_format import read_store_prefix, relative_replay_file
from atari_pb.errors import DataError, UsageError
from atari_pb.games import get_game

pytestmark = pytest.mark.timeout(60)

PONG = get_game("pong")
CKPTS = [0, 1]
TRANSITIONS = 1500
OBS = relative_replay_file("Pong", 1, "observation", 0)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, drops=0, drop_after=50, fails=0, stall=0.0, ignore_range=False):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.drops = drops  # the first `drops` requests of each file stop after `drop_after` body bytes
        self.drop_after = drop_after
        self.fails = fails  # the first `fails` requests of each file get a 503
        self.stall = stall  # the first answered request of OBS goes quiet for `stall` s after 2 KiB of body
        self.ignore_range = ignore_range
        self.lock = threading.Lock()
        self.sent: Counter[str] = Counter()  # file -> body bytes sent
        self.requests: list[tuple[str, str | None]] = []  # (file, Range header)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/dqn"

    def ranges(self, rel: str) -> list[str | None]:
        return [r for p, r in self.requests if p == rel]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        srv = self.server
        rel = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).removeprefix("/dqn/")
        range_header = self.headers.get("Range")
        with srv.lock:
            earlier = len(srv.ranges(rel))
            srv.requests.append((rel, range_header))
        file = (srv.root / rel).resolve()
        if not file.is_relative_to(srv.root) or not file.is_file():
            self.send_error(404)
            return
        if earlier < srv.fails:
            self.send_error(503)
            return
        data = file.read_bytes()
        start = 0
        if range_header and not srv.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", range_header)[1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if earlier < srv.drops:
            body = body[: srv.drop_after]  # then the connection closes: a dropped download
        self.close_connection = True
        try:
            # Small paced writes (about 1 MB/s), so a client that stops early really does stop the server
            # instead of finding the whole file already sitting in loopback socket buffers.
            for i in range(0, len(body), 2048):
                if i == 2048 and rel == OBS and earlier == srv.fails:
                    time.sleep(srv.stall)
                piece = body[i : i + 2048]
                self.wfile.write(piece)
                with srv.lock:
                    srv.sent[rel] += len(piece)
                time.sleep(0.002)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client hung up once it had enough


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dqn_replay")
    collect(root, [PONG], [1], CKPTS, CollectConfig(transitions_per_ckpt=TRANSITIONS))
    return root.resolve()


@pytest.fixture
def serve(tree):
    servers: list[_Server] = []

    def start(**flags) -> _Server:
        server = _Server(tree, **flags)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def fetch(server: _Server, dest: Path, samples: int | None = None, games=(PONG,), **kw):
    kw = {"retries": 3, "timeout": 5.0, "backoff": 0.01, "progress": False} | kw
    return download(dest, list(games), [1], CKPTS, samples_per_ckpt=samples, base_url=server.base_url, **kw)


def files(root: Path) -> dict[str, bytes]:
    """The DQN-Replay files under root (not collect's own record of how it played)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "replay_logs" in p.parts
    }


def frames(path: Path, n: int) -> np.ndarray:
    return read_store_prefix(path, "observation", n)[0]


def test_whole_download_is_byte_identical(tree, serve, tmp_path):
    server = serve()
    report = fetch(server, tmp_path / "out")
    source = files(tree)
    assert files(tmp_path / "out") == source  # no .part left behind either
    assert (report.files_fetched, report.files_skipped) == (len(source), 0)
    assert report.bytes_received == sum(len(b) for b in source.values())
    assert all(r is None for _, r in server.requests)


def test_prefix_download_stops_early(tree, serve, tmp_path):
    server = serve()
    report = fetch(server, tmp_path, samples=200)
    obs_size = (tree / OBS).stat().st_size
    assert server.sent[OBS] < 0.5 * obs_size
    got, length = read_store_prefix(tmp_path / OBS, "observation", 200)
    assert length == TRANSITIONS  # the header still describes the whole array
    np.testing.assert_array_equal(got, frames(tree / OBS, 200))
    source, local = files(tree), files(tmp_path)
    assert set(local) == set(source)
    for rel, data in source.items():
        if "observation" in rel:
            assert data.startswith(local[rel]) and len(local[rel]) < len(data)
        else:
            assert local[rel] == data
    assert report.files_fetched == len(source)
    assert report.bytes_received < sum(len(b) for b in source.values())


@pytest.mark.parametrize("samples", [None, 200])
def test_dropped_connections_are_resumed(tree, serve, tmp_path, samples):
    server = serve(drops=1, drop_after=50)
    fetch(server, tmp_path, samples=samples)
    for rel, data in files(tree).items():
        assert server.ranges(rel) == [None, "bytes=50-"]
        if "observation" in rel and samples:
            np.testing.assert_array_equal(frames(tmp_path / rel, samples), frames(tree / rel, samples))
        else:
            assert (tmp_path / rel).read_bytes() == data


def test_server_errors_and_timeouts_are_retried(tree, serve, tmp_path):
    server = serve(fails=2, stall=1.0)
    fetch(server, tmp_path, timeout=0.2)
    assert files(tmp_path) == files(tree)
    # Two 503s, a read that timed out after 2 KiB, then the rest from there.
    assert server.ranges(OBS) == [None, None, None, "bytes=2048-"]


def test_retries_run_out(serve, tmp_path):
    server = serve(drops=100, drop_after=10)
    with pytest.raises(DataError) as err:
        fetch(server, tmp_path, retries=2)
    url = replay_url(server.base_url, "Pong", 1, "observation", 0)
    assert url in str(err.value) and "connection closed at byte" in str(err.value)
    assert len(server.ranges(OBS)) == 3  # the first try and 2 retries


@pytest.mark.parametrize("samples", [None, 200])
def test_rerun_fetches_nothing(tree, serve, tmp_path, samples):
    server = serve()
    fetch(server, tmp_path, samples=samples)
    before, sent = files(tmp_path), server.sent.copy()
    report = fetch(server, tmp_path, samples=samples)
    assert (report.files_fetched, report.files_skipped, report.bytes_received) == (0, len(before), 0)
    assert server.sent == sent
    assert files(tmp_path) == before


def test_growing_a_prefix_continues_it(tree, serve, tmp_path):
    server = serve()
    fetch(server, tmp_path, samples=200)
    size_200 = (tmp_path / OBS).stat().st_size
    report = fetch(server, tmp_path, samples=1000)
    assert server.ranges(OBS) == [None, f"bytes={size_200}-"]
    assert report.files_fetched == len(CKPTS)  # the other files are already whole
    np.testing.assert_array_equal(frames(tmp_path / OBS, 1000), frames(tree / OBS, 1000))
    # ... and a whole download after that completes the prefix into the original file.
    size_1000 = (tmp_path / OBS).stat().st_size
    fetch(server, tmp_path)
    assert server.ranges(OBS)[-1] == f"bytes={size_1000}-"
    assert files(tmp_path) == files(tree)


@pytest.mark.parametrize("kept", ["half", "all", "too_much"])
def test_a_part_file_is_resumed(tree, serve, tmp_path, kept):
    server = serve()
    source = (tree / OBS).read_bytes()
    part = {"half": source[: len(source) // 2], "all": source, "too_much": source + b"junk"}[kept]
    (tmp_path / OBS).parent.mkdir(parents=True)
    (tmp_path / f"{OBS}.part").write_bytes(part)
    fetch(server, tmp_path)
    assert files(tmp_path) == files(tree)
    if kept == "too_much":  # the server answers 416, so the download starts over
        assert server.ranges(OBS) == [f"bytes={len(part)}-", None]
        assert server.sent[OBS] == len(source)
    else:
        assert server.ranges(OBS) == [f"bytes={len(part)}-"]
        assert server.sent[OBS] == len(source) - len(part)


@pytest.mark.parametrize("samples", [None, 200])
def test_a_server_ignoring_range_restarts_the_file(tree, serve, tmp_path, samples):
    server = serve(ignore_range=True)
    (tmp_path / OBS).parent.mkdir(parents=True)
    # The right first 100 bytes: appending the whole 200 answer to them would garble the file.
    (tmp_path / f"{OBS}.part").write_bytes((tree / OBS).read_bytes()[:100])
    fetch(server, tmp_path, samples=samples)
    assert server.ranges(OBS) == ["bytes=100-"]
    np.testing.assert_array_equal(frames(tmp_path / OBS, 200), frames(tree / OBS, 200))
    if samples is None:
        assert (tmp_path / OBS).read_bytes() == (tree / OBS).read_bytes()
    assert not (tmp_path / f"{OBS}.part").exists()


def test_missing_game_is_a_usage_error(serve, tmp_path):
    server = serve()
    with pytest.raises(UsageError) as err:
        fetch(server, tmp_path / "out", games=[get_game("breakout")])
    url = replay_url(server.base_url, "Breakout", 1, "observation", 0)
    assert url in str(err.value) and "\n" not in str(err.value)
    assert server.ranges(relative_replay_file("Breakout", 1, "observation", 0)) == [None]  # no retries
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("runs", "ckpts", "match"),
    [
        ([0], [0], r"runs \[0\].*1\.\.5"),
        ([6], [0], r"1\.\.5"),
        ([1], [51], r"ckpts.*0\.\.50"),
        ([], [0], "no runs"),
    ],
)
def test_bad_runs_and_ckpts(tmp_path, runs, ckpts, match):
    with pytest.raises(UsageError, match=match):
        download(
            tmp_path,
            [PONG],
            runs,
            ckpts,
            samples_per_ckpt=None,
            base_url="http://127.0.0.1:9",
            progress=False,
        )


def test_dest_must_not_be_a_file(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(UsageError, match="is a file"):
        download(tmp_path / "f", [PONG], [1], [0], samples_per_ckpt=None, progress=False)


def test_too_many_samples_is_a_data_error(serve, tmp_path):
    server = serve()
    with pytest.raises(DataError, match=f"has {TRANSITIONS} transitions, 2000 were asked for"):
        fetch(server, tmp_path, samples=2000)


def test_cli_prefix_download_then_ingest(tree, serve, tmp_path):
    """The real pipeline: stream 200-frame prefixes over HTTP, then ingest and verify them."""
    from .test_ingest import atari_pb

    server = serve(drops=1)
    dest, shards = tmp_path / "replay", tmp_path / "shards"
    selection = ["--games", "pong", "--runs", "1", "--ckpts", *map(str, CKPTS), "--samples-per-ckpt", "200"]
    proc = atari_pb("download", dest, *selection, "--base-url", server.base_url, "--retries", "3")
    assert proc.returncode == 0, proc.stderr
    assert server.sent[OBS] < 0.5 * (tree / OBS).stat().st_size
    assert atari_pb("ingest", dest, shards, *selection, check=True).returncode == 0
    assert atari_pb("verify", shards).returncode == 0
    np.testing.assert_array_equal(
        ShardSet(shards).maps[0][:200], frames(tree / "Pong/1/replay_logs/$store$_observation_ckpt.0.gz", 200)
    )
