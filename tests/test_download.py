"""`atari_pb.data.download` against a local HTTP server that serves a small collected DQN-Replay tree.

The server (127.0.0.1 only) honours `Range: bytes=<a>-`, counts the body bytes it sends per file, and can
drop connections midway or ignore Range, so resuming, retrying and early stopping are all exercised over
real sockets.
"""

from __future__ import annotations

import json
import re
import shutil
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
from atari_pb.data.download import RECORD_NAME, download, replay_url
from atari_pb.data.replay_format import ALL_FIELDS, read_store_prefix, relative_replay_file, replay_file
from atari_pb.errors import DataError, UsageError
from atari_pb.games import get_game

pytestmark = pytest.mark.timeout(60)

PONG = get_game("pong")
CKPTS = [0, 1]
TRANSITIONS = 1500
OBS = relative_replay_file("Pong", 1, "observation", 0)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, root: Path, drops=0, drop_after=50, fails=0, stall=0.0, ignore_range=False, head_fails=0
    ):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.drops = drops  # the first `drops` requests of each file stop after `drop_after` body bytes
        self.drop_after = drop_after
        self.fails = fails  # the first `fails` requests of each file get a 503
        self.stall = stall  # the first answered request of OBS goes quiet for `stall` s after 2 KiB of body
        self.ignore_range = ignore_range
        self.head_fails = head_fails  # the first `head_fails` HEAD requests of each file get a 503
        self.lock = threading.Lock()
        self.sent: Counter[str] = Counter()  # file -> body bytes sent
        self.requests: list[tuple[str, str | None]] = []  # (file, Range header) of each GET
        self.heads: list[str] = []  # the file of each HEAD request

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/dqn"

    def ranges(self, rel: str) -> list[str | None]:
        return [r for p, r in self.requests if p == rel]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format, *args) -> None:  # keep test output quiet
        pass

    def _rel(self) -> str:
        return urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).removeprefix("/dqn/")

    def do_HEAD(self) -> None:  # what `gsutil stat` asks the bucket
        srv = self.server
        rel = self._rel()
        with srv.lock:
            earlier = srv.heads.count(rel)
            srv.heads.append(rel)
        file = (srv.root / rel).resolve()
        if not file.is_relative_to(srv.root) or not file.is_file():
            self.send_error(404)
        elif earlier < srv.head_fails:
            self.send_error(503)
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(file.stat().st_size))
            self.end_headers()

    def do_GET(self) -> None:
        srv = self.server
        rel = self._rel()
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
                with srv.lock:  # counted before it is written: a client may return once it has the bytes
                    srv.sent[rel] += len(piece)
                self.wfile.write(piece)
                time.sleep(0.002)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client hung up once it had enough


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dqn_replay")
    collect(root, [PONG], [1], CKPTS, CollectConfig(transitions_per_ckpt=TRANSITIONS))
    return root.resolve()


def serving(default_root: Path):
    """Yields start(root=None, **flags) -> a running _Server (serving default_root unless told otherwise);
    stops every server it started when resumed. The body of the `serve` fixtures here and in test_rlu."""
    servers: list[_Server] = []

    def start(root: Path | None = None, **flags) -> _Server:
        server = _Server(default_root if root is None else root, **flags)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def serve(tree):
    yield from serving(tree)


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


# --- The checkpoint fallback of the released script: 50 -> 49 -> 48 (download.py's docstring) ---

FB_TRANSITIONS = 300
FB_SAMPLES = 200
OFFLINE_BC = Path(__file__).resolve().parents[1] / "datasets" / "offline_bc.yaml"


@pytest.fixture(scope="module")
def ckpt_tree(tmp_path_factory) -> Path:
    """Pong runs 1 and 2 with checkpoints 48, 49 and 50, as the bucket holds them."""
    root = tmp_path_factory.mktemp("dqn_replay_48_50")
    collect(root, [PONG], [1, 2], [48, 49, 50], CollectConfig(transitions_per_ckpt=FB_TRANSITIONS))
    return root.resolve()


def variant(ckpt_tree: Path, where: Path, drop: dict[int, tuple[str, ...]], run: int = 1) -> Path:
    """A copy of ckpt_tree whose `run` lacks, for each checkpoint in `drop`, the files of those fields."""
    root = where / "served"
    shutil.copytree(ckpt_tree, root)
    for ckpt, fields in drop.items():
        for fld in fields:
            replay_file(root, "Pong", run, fld, ckpt).unlink()
    return root.resolve()


def fetch50(server: _Server, dest: Path, runs=(1, 2), ckpts=(50,), **kw):
    kw = {
        "retries": 3,
        "timeout": 5.0,
        "backoff": 0.01,
        "progress": False,
        "samples_per_ckpt": FB_SAMPLES,
    } | kw
    return download(dest, [PONG], list(runs), list(ckpts), base_url=server.base_url, **kw)


def ckpts_in(root: Path, run: int) -> dict[int, set[str]]:
    """Checkpoint -> names of the files (finished or .part) that `root` holds for Pong `run`."""
    held: dict[int, set[str]] = {}
    logs = root / "Pong" / str(run) / "replay_logs"
    for p in logs.iterdir() if logs.is_dir() else []:
        held.setdefault(int(p.name.split("_ckpt.")[1].split(".")[0]), set()).add(p.name)
    return held


def record(root: Path, run: int) -> dict | None:
    path = root / "Pong" / str(run) / RECORD_NAME
    return json.loads(path.read_text()) if path.exists() else None


def test_missing_ckpt_50_falls_back_to_49_then_ingests(ckpt_tree, serve, tmp_path):
    """Run 1 has no checkpoint 50 on the server: the CLI download takes 49 for it (run 2 keeps 50),
    records it, and `ingest --dataset datasets/offline_bc.yaml` builds a shard from checkpoint 49, named
    and listed as such."""
    from .test_ingest import atari_pb

    server = serve(root=variant(ckpt_tree, tmp_path, {50: ALL_FIELDS}))
    dest, shards = tmp_path / "replay", tmp_path / "shards"
    selection = [
        "--dataset",
        OFFLINE_BC,
        "--games",
        "pong",
        "--runs",
        "1",
        "2",
        "--samples-per-ckpt",
        FB_SAMPLES,
    ]
    proc = atari_pb("download", dest, *selection, "--base-url", server.base_url, "--retries", "3")
    assert proc.returncode == 0, proc.stderr
    assert "ckpt 50 -> 49" in proc.stderr or "using checkpoint 49" in proc.stderr
    assert record(dest, 1) == {"used_ckpt": {"50": 49}} and record(dest, 2) == {"used_ckpt": {"50": 50}}
    assert set(ckpts_in(dest, 1)) == {49} and len(ckpts_in(dest, 1)[49]) == len(ALL_FIELDS)
    assert set(ckpts_in(dest, 2)) == {50}
    # Probed as `gsutil stat` does, observation first; nothing of run 1's checkpoint 50 was ever fetched.
    obs = lambda run, k: relative_replay_file("Pong", run, "observation", k)  # noqa: E731
    assert server.heads[: 1 + len(ALL_FIELDS)] == [obs(1, 50)] + [
        relative_replay_file("Pong", 1, f, 49) for f in ALL_FIELDS
    ]
    assert not any("ckpt.50" in rel for rel, _ in server.requests if rel.startswith("Pong/1/"))
    np.testing.assert_array_equal(
        frames(dest / obs(1, 49), FB_SAMPLES), frames(ckpt_tree / obs(1, 49), FB_SAMPLES)
    )

    # A rerun follows the record: no probe, nothing fetched.
    heads, sent = len(server.heads), server.sent.copy()
    report = fetch50(server, dest)
    assert (report.files_fetched, report.fallbacks) == (0, ["Pong run 1: ckpt 50 -> 49"])
    assert len(server.heads) == heads and server.sent == sent

    ingest = ["ingest", dest, shards, *selection]
    assert atari_pb(*ingest, check=True).returncode == 0
    manifest = json.loads((shards / "manifest.json").read_text())
    got = {(e["run"], e["ckpt"]): (e["path"], e["source"]) for e in manifest["shards"]}
    assert got == {(1, 49): ("pong/run1_ckpt49.h5", obs(1, 49)), (2, 50): ("pong/run2_ckpt50.h5", obs(2, 50))}
    assert atari_pb("verify", shards).returncode == 0
    shard = ShardSet(shards)
    k = [s.ckpt for s in shard.shards].index(49)
    np.testing.assert_array_equal(shard.maps[k][:], frames(ckpt_tree / obs(1, 49), FB_SAMPLES))
    before = (shards / "manifest.json").read_bytes()
    assert atari_pb(*ingest, check=True).returncode == 0  # finds the ckpt-49 shard: nothing rebuilt
    assert (shards / "manifest.json").read_bytes() == before


def test_any_missing_file_of_ckpt_50_falls_back(ckpt_tree, serve, tmp_path):
    """Not only the observation file: a checkpoint is used whole or not at all."""
    server = serve(root=variant(ckpt_tree, tmp_path, {50: ("terminal",)}))
    dest = tmp_path / "out"
    report = fetch50(server, dest, runs=[1])
    assert report.fallbacks == ["Pong run 1: ckpt 50 -> 49"] and record(dest, 1) == {"used_ckpt": {"50": 49}}
    assert set(ckpts_in(dest, 1)) == {49}  # not even 50's observation, which the server has
    assert [r for r in server.heads if "ckpt.50" in r][-1] == relative_replay_file("Pong", 1, "terminal", 50)


def test_falls_back_to_48_when_49_is_missing_too(ckpt_tree, serve, tmp_path):
    server = serve(root=variant(ckpt_tree, tmp_path, {50: ALL_FIELDS, 49: ("observation",)}))
    dest = tmp_path / "out"
    assert fetch50(server, dest, runs=[1]).fallbacks == ["Pong run 1: ckpt 50 -> 48"]
    assert record(dest, 1) == {"used_ckpt": {"50": 48}} and set(ckpts_in(dest, 1)) == {48}


def test_no_fallback_asks_for_exactly_50(ckpt_tree, serve, tmp_path):
    server = serve(root=variant(ckpt_tree, tmp_path, {50: ALL_FIELDS}))
    with pytest.raises(UsageError) as err:
        fetch50(server, tmp_path / "out", runs=[1], fallback=False)
    assert replay_url(server.base_url, "Pong", 1, "observation", 50) in str(err.value)
    assert server.heads == [] and not (tmp_path / "out").exists()


def test_no_ckpt_to_fall_back_to_fails_in_one_line(ckpt_tree, serve, tmp_path):
    """Run 1 lacks 50, 49 and 48: one line naming the game, the run and the checkpoints tried; run 2,
    downloaded before it, stays finished, and nothing of run 1 is left behind."""
    from .conftest import one_error_line
    from .test_ingest import atari_pb

    server = serve(root=variant(ckpt_tree, tmp_path, {k: ("observation",) for k in (48, 49, 50)}))
    dest = tmp_path / "out"
    selection = ["--games", "pong", "--runs", "2", "1", "--ckpts", "50", "--samples-per-ckpt", FB_SAMPLES]
    line = one_error_line(atari_pb("download", dest, *selection, "--base-url", server.base_url), 2)
    assert "Pong run 1: checkpoints 50, 49, 48 are all missing" in line
    assert "$store$_observation_ckpt.48.gz" in line
    assert set(ckpts_in(dest, 2)) == {50} and record(dest, 2) == {"used_ckpt": {"50": 50}}
    assert ckpts_in(dest, 1) == {} and record(dest, 1) is None
    assert not any(rel.startswith("Pong/1/") for rel, _ in server.requests)  # only probed


@pytest.mark.parametrize("head_fails", [2, 100])
def test_server_errors_while_probing_are_retried_not_a_fallback(ckpt_tree, serve, tmp_path, head_fails):
    server = serve(root=ckpt_tree, head_fails=head_fails)
    dest = tmp_path / "out"
    if head_fails == 2:
        assert fetch50(server, dest, runs=[1]).fallbacks == []
        assert record(dest, 1) == {"used_ckpt": {"50": 50}}
        assert server.heads.count(relative_replay_file("Pong", 1, "observation", 50)) == 3
    else:
        with pytest.raises(DataError, match="failed after 3 retries.*HTTP Error 503"):
            fetch50(server, dest, runs=[1])
        assert server.heads == [relative_replay_file("Pong", 1, "observation", 50)] * 4
        assert not dest.exists()


def test_a_corrupt_ckpt_50_is_an_error_not_a_fallback(ckpt_tree, serve, tmp_path):
    root = variant(ckpt_tree, tmp_path, {})
    replay_file(root, "Pong", 1, "observation", 50).write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)) * 64)
    server = serve(root=root)
    dest = tmp_path / "out"
    with pytest.raises(DataError, match="corrupt gzip data"):
        fetch50(server, dest, runs=[1])
    assert not any("ckpt.49" in rel for rel, _ in server.requests)
    assert record(dest, 1) is None
    assert ckpts_in(dest, 1) == {50: {"$store$_observation_ckpt.50.gz.part"}}  # unfinished, never renamed


def test_a_fallback_onto_a_requested_ckpt_is_refused(ckpt_tree, serve, tmp_path):
    server = serve(root=variant(ckpt_tree, tmp_path, {50: ALL_FIELDS}))
    with pytest.raises(UsageError, match="checkpoint 50 is missing and falls back to 49, which is requested"):
        fetch50(server, tmp_path / "out", runs=[1], ckpts=[49, 50])


@pytest.mark.parametrize(
    ("used_ckpt", "ckpts", "error", "match"),
    [
        ({"50": 49}, [49, 50], UsageError, "checkpoints 49 and 50 both read checkpoint 49"),
        ({"50": 47}, [50], DataError, "50 -> 47 is not a fallback of the released rule"),
        ({"50": "x"}, [50], DataError, "malformed download record"),
        ({"50": 48}, [50], UsageError, r"ckpt\.48\.gz does not exist \(checkpoint 50 falls back to 48"),
    ],
)
def test_ingest_checks_the_download_record(ckpt_tree, tmp_path, used_ckpt, ckpts, error, match):
    from atari_pb.data.ingest import plan_ingest

    root = variant(ckpt_tree, tmp_path, {48: ("observation",)})
    (root / "Pong" / "1" / RECORD_NAME).write_text(json.dumps({"used_ckpt": used_ckpt}))
    with pytest.raises(error, match=match):
        plan_ingest(root, tmp_path / "shards", [PONG], [1], ckpts, FB_SAMPLES)
    assert not (tmp_path / "shards").exists()
