"""RL Unplugged Atari: download (prefix only, resumable, CRC-checked), ingest into the usual shards, and every
bad input, against a local HTTP server (127.0.0.1, Range support) serving files in RLU's exact layout written
by an independent writer (tests/rlu_files.py: the `tfrecord` package, Pillow, gzip) from real ALE frames.

The served tree: Breakout with 50 shards (0, 1, 2 and 49 present) and Gravitar with 49 (0 and 48), each file
holding terminal and cut (non-terminal) episode ends, and an episode that straddles the 500-transition prefix.
"""

from __future__ import annotations

import gzip
import json
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from atari_pb.data import ShardSet
from atari_pb.data.collect import CollectConfig, collect
from atari_pb.data.download import RECORD_NAME, download
from atari_pb.data.ingest import ingest, verify
from atari_pb.data.manifest import read_manifest
from atari_pb.data.replay_format import read_store_prefix, replay_file
from atari_pb.data.rlu import BLOCK, shard_name
from atari_pb.errors import DataError, UsageError
from atari_pb.games import get_game

from .rlu_files import Episode, expected, make_episodes, write_rlu_file
from .test_download import serving
from .test_ingest import atari_pb, tree_bytes

pytestmark = pytest.mark.timeout(120)

BREAKOUT, GRAVITAR = get_game("breakout"), get_game("gravitar")
SAMPLES = 500
# (steps, terminal) of each episode in a file: ends of both kinds, and the 4th episode straddles the prefix
# (119 + 199 + 89 = 407 transitions before it, 93 of its 399 kept)
PLAN = [(120, True), (200, False), (90, True), (400, True), (400, True), (300, False)]
STRADDLING = 3
SERVED = {BREAKOUT: (50, [0, 1, 2, 49]), GRAVITAR: (49, [0, 48])}


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Real Breakout frames, actions and clipped rewards from ale-py."""
    root = tmp_path_factory.mktemp("frames")
    collect(root, [BREAKOUT], [1], [0], CollectConfig(transitions_per_ckpt=3000, seed=3))
    read = lambda fld: read_store_prefix(replay_file(root, "Breakout", 1, fld, 0), fld, 3000)[0]  # noqa: E731
    return read("observation"), read("action"), read("reward")


def file_episodes(pool, game, ckpt: int) -> list[Episode]:
    frames, actions, rewards = pool
    at = (ckpt * 37 + len(game.name) * 11) % 1400  # each file its own frames
    n = sum(length for length, _ in PLAN)
    return make_episodes(
        frames[at : at + n], actions[at : at + n], rewards[at : at + n], PLAN, start_idx=ckpt
    )


@pytest.fixture(scope="module")
def served(pool, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rlu")
    for game, (count, ckpts) in SERVED.items():
        for ckpt in ckpts:
            write_rlu_file(
                root / game.replay_name / shard_name(1, ckpt, count), file_episodes(pool, game, ckpt), ckpt
            )
    return root.resolve()


@pytest.fixture
def serve(served):
    yield from serving(served)


def fetch(server, dest, games=(BREAKOUT,), ckpts=(1, 2), samples=SAMPLES, **kw):
    kw = {"retries": 3, "timeout": 5.0, "backoff": 0.01, "progress": False} | kw
    return download(
        dest,
        list(games),
        [1],
        list(ckpts),
        samples_per_ckpt=samples,
        base_url=server.base_url,
        source="rlu",
        **kw,
    )


def needed_bytes(path: Path, record: int) -> int:
    """The fewest compressed bytes of `path` that decompress past the end of record `record` (counted from
    the TFRecord framing with struct, not with atari_pb's reader)."""
    data = gzip.decompress(path.read_bytes())
    end = 0
    for _ in range(record + 1):
        (length,) = struct.unpack_from("<Q", data, end)
        end += 12 + length + 4
    compressed = path.read_bytes()
    lo, hi = 1, len(compressed)
    while lo < hi:  # the least k whose prefix inflates to at least `end` bytes
        mid = (lo + hi) // 2
        out = zlib.decompressobj(wbits=31).decompress(compressed[:mid])
        lo, hi = (mid + 1, hi) if len(out) < end else (lo, mid)
    return lo


def test_download_ingest_and_verify_hold_exactly_what_was_written(pool, served, serve, tmp_path):
    server = serve()
    dest, shards = tmp_path / "rlu", tmp_path / "shards"
    report = fetch(server, dest, games=(BREAKOUT, GRAVITAR), ckpts=(50,))
    assert report.fallbacks == ["Breakout run 1: ckpt 50 -> 49", "Gravitar run 1: ckpt 50 -> 48"]
    for game, used in ((BREAKOUT, 49), (GRAVITAR, 48)):
        assert json.loads((dest / game.replay_name / "1" / RECORD_NAME).read_text()) == {
            "used_ckpt": {"50": used}
        }
    fetch(server, dest, ckpts=(1, 2))
    # Only the prefix came: at least the bytes that hold the straddling episode, at most one block more
    for game, ckpt, count in ((BREAKOUT, 1, 50), (BREAKOUT, 49, 50), (GRAVITAR, 48, 49)):
        rel = f"{game.replay_name}/{shard_name(1, ckpt, count)}"
        need, kept = needed_bytes(served / rel, STRADDLING), (dest / rel).stat().st_size
        assert need <= kept <= need + BLOCK, (rel, need, kept)
        assert kept < 0.9 * (served / rel).stat().st_size
        assert (served / rel).read_bytes()[:kept] == (dest / rel).read_bytes()
        assert (
            server.sent[rel] <= need + 2 * BLOCK + 64 * 1024
        )  # what the server sent: the prefix + in flight
    report = ingest(dest, shards, [BREAKOUT, GRAVITAR], [1], [50], SAMPLES, layout="rlu")
    assert report.errors == [] and sorted(report.built) == [
        "breakout/run1_ckpt49.h5",
        "gravitar/run1_ckpt48.h5",
    ]
    report = ingest(dest, shards, [BREAKOUT], [1], [1, 2], SAMPLES, layout="rlu")
    assert report.errors == [] and len(report.built) == 2
    assert verify(shards) == []
    entries = read_manifest(shards)
    for (game, _run, ckpt), entry in entries.items():
        g = get_game(game)
        want = expected(file_episodes(pool, g, ckpt), SAMPLES)
        with h5py.File(shards / entry.path) as f:
            for fld in ("observation", "action", "reward", "terminal"):
                np.testing.assert_array_equal(f[fld][:], want[fld], err_msg=f"{entry.path} {fld}")
            assert f["invalid_range"].shape == (0,) and f.attrs["layout"] == "rlu"
        details = entry.details
        assert (
            entry.origin == "rlu"
            and entry.source == f"rlu:{g.replay_name}/{shard_name(1, ckpt, SERVED[g][0])}"
        )
        assert details["url"] == f"{server.base_url}/{g.replay_name}/{shard_name(1, ckpt, SERVED[g][0])}"
        assert details["used_ckpt"] == ckpt and details["asked_ckpt"] == (50 if ckpt >= 48 else ckpt)
        assert [e["transitions"] for e in details["episodes"]] == [119, 199, 89, 93]
        assert [e["episode_idx"] for e in details["episodes"]] == [ckpt + i for i in range(4)]
        assert (details["terminal_ends"], details["cut_ends"]) == (2, 1)
        assert details["dropped_rewards"] == details["return_mismatches"] == 0
        assert details["checkpoint_idx"] == [ckpt]
        assert (
            details["bytes_read"] <= (dest / g.replay_name / shard_name(1, ckpt, SERVED[g][0])).stat().st_size
        )


def test_the_sampler_never_stacks_across_episodes(pool, served, tmp_path):
    """Every frame stack of a sampled batch against one built here from the expected transitions: frames
    from before an episode's first step are zeros (the sampler's contract, checked on RLU shards)."""
    shards = tmp_path / "shards"
    assert ingest(served, shards, [BREAKOUT], [1], [1], SAMPLES, layout="rlu").errors == []
    want = expected(file_episodes(pool, BREAKOUT, 1), SAMPLES)
    obs, term = want["observation"], want["terminal"]
    batch = ShardSet(shards).sample(512, frames=4, n_step=3, seed=0)
    for b in range(512):
        i = int(batch["index"][b, 1])
        assert not term[i : i + 3].any() or batch["done"][b, 0] == 1
        stack = np.zeros((4, 84, 84), np.uint8)
        for f in range(4):
            j = i - 3 + f
            if j >= 0 and not term[j:i].any():
                stack[f] = obs[j]
        np.testing.assert_array_equal(batch["obs"][b, 0].numpy(), stack)


def test_rerun_fetches_nothing_and_kill_9_resumes_byte_identical(served, serve, tmp_path):
    server = serve()
    whole = tmp_path / "uninterrupted"
    fetch(server, whole, ckpts=(1, 2))
    again = fetch(server, whole, ckpts=(1, 2))
    assert (again.files_fetched, again.files_skipped, again.bytes_received) == (0, 2, 0)

    # the server sends at about 1 MB/s: the kill lands mid-file
    dest = tmp_path / "killed"
    cmd = [
        "download",
        dest,
        "--source",
        "rlu",
        "--base-url",
        server.base_url,
        "--games",
        "breakout",
        "--runs",
        "1",
    ]
    cmd += ["--ckpts", "1", "2", "--samples-per-ckpt", str(SAMPLES), "--retries", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "atari_pb", *map(str, cmd)], stderr=subprocess.DEVNULL)
    part = dest / "Breakout" / (shard_name(1, 1, 50) + ".part")
    deadline = time.monotonic() + 60
    while not (part.exists() and part.stat().st_size > 100_000) and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert part.exists(), "the download was not caught mid-file"
    assert atari_pb(*cmd).returncode == 0
    assert tree_bytes(dest) == tree_bytes(whole)


def test_cli_pipeline_on_rlu_shards(served, serve, tmp_path):
    """download -> ingest -> verify -> pre-training -> offline BC, with the datasets' CLI, unchanged."""
    server = serve()
    dest, shards = tmp_path / "rlu", tmp_path / "shards"
    sel = ["--games", "breakout", "--runs", "1", "--ckpts", "1", "2", "--samples-per-ckpt", str(SAMPLES)]
    atari_pb("download", dest, "--source", "rlu", "--base-url", server.base_url, *sel, check=True)
    atari_pb("ingest", dest, shards, "--layout", "rlu", *sel, "--workers", "2", check=True)
    atari_pb("verify", shards, check=True)
    run = tmp_path / "run"
    atari_pb("pretrain", "--objective", "curl", "--data", shards, "--out", run, "--preset", "tiny",
             "--steps", "2", "--batch-size", "8", "--save-every", "2", check=True)  # fmt: skip
    results = tmp_path / "results"
    atari_pb("finetune", "--protocol", "offline_bc", "--encoder", run / "encoder.safetensors", "--split", "id",
             "--games", "breakout", "--seeds", "0", "--data", shards, "--results", results, "--episodes", "1",
             "--eval-envs", "1", "train.max_steps=2", "train.batch_size=8", "eval.env.horizon=30", check=True)  # fmt: skip
    record = json.loads((results / "curl" / "offline_bc" / "breakout" / "seed0.json").read_text())
    provenance = {"source": "rlu", "games": 1, "transitions": 2 * SAMPLES, "shards": 2}
    assert record["config"]["pretrain_data"] == provenance  # the record says what the encoder was trained on
    assert record["scoring"] == {"scale": "game", "parts": [], "parts_title": "part"}  # and how it is scored


# ------------------------------------------------------------------------------------------ coverage
def test_games_rlu_lacks_stop_the_request_in_one_line(serve, tmp_path):
    server = serve()
    dest = tmp_path / "rlu"
    proc = atari_pb("download", dest, "--source", "rlu", "--base-url", server.base_url, "--games", "air_raid",
                    "breakout", "tennis", "--runs", "1", "--ckpts", "1", "--samples-per-ckpt", "50")  # fmt: skip
    assert proc.returncode == 2 and not dest.exists()
    assert proc.stderr.strip().splitlines() == [
        "atari-pb: error: RL Unplugged Atari has no data for 2 of the 3 games asked for: air_raid, tennis; "
        "pass --skip-missing-games to go on with the other 1"
    ]
    with pytest.raises(UsageError, match="no data for 1 of the 1 games asked for: tennis"):
        ingest(tmp_path, tmp_path / "shards", [get_game("tennis")], [1], [1], 50, layout="rlu")
    report = fetch(server, dest, games=(get_game("air_raid"), BREAKOUT), ckpts=(1,), skip_missing_games=True)
    assert report.files_fetched == 1 and not (dest / "AirRaid").exists()


def test_the_shipped_selections_name_only_games_rlu_has():
    from atari_pb.config import dataset_file, load_config
    from atari_pb.data.dataset import DatasetConfig
    from atari_pb.data.rlu import RLU_GAMES
    from atari_pb.games import resolve_games

    for name, games, runs, ckpts in (("rlu_pretrain", 38, [1, 2], list(range(1, 11))),
                                     ("rlu_offline_bc", 46, [1, 2, 3, 4, 5], [50])):  # fmt: skip
        cfg = load_config(DatasetConfig, dataset_file(name), [])
        resolved = resolve_games(cfg.games)
        assert (
            cfg.layout == "rlu" and len(resolved) == games and {g.replay_name for g in resolved} <= RLU_GAMES
        )
        assert (cfg.runs, cfg.ckpts, cfg.samples_per_ckpt) == (runs, ckpts, 10000)
    assert len(RLU_GAMES) == 46


# ----------------------------------------------------------------------------------------- bad input
def rewrite(path: Path, edit) -> None:
    """Decompress, edit the raw TFRecord bytes, compress again."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    edit(raw)
    path.write_bytes(gzip.compress(bytes(raw), mtime=0))


def record_offset(raw: bytes, index: int) -> int:
    at = 0
    for _ in range(index):
        at += 12 + struct.unpack_from("<Q", raw, at)[0] + 4
    return at


def local_tree(served: Path, tmp_path: Path) -> Path:
    root = tmp_path / "local"
    shutil.copytree(served / "Breakout", root / "Breakout")
    return root


def bad_ingest(root: Path, tmp_path: Path, ckpts=("1",)) -> subprocess.CompletedProcess:
    shards = tmp_path / "shards"
    proc = atari_pb("ingest", root, shards, "--layout", "rlu", "--games", "breakout", "--runs", "1", "--ckpts",
                    *ckpts, "--samples-per-ckpt", str(SAMPLES))  # fmt: skip
    assert proc.returncode != 0
    return proc


def ingest_error(root: Path, tmp_path: Path) -> str:
    """The one error line of an ingest of breakout run 1 checkpoint 1 (in-process: the CLI prints the same
    line, as the CRC test checks through the real command)."""
    report = ingest(root, tmp_path / "shards", [BREAKOUT], [1], [1], SAMPLES, layout="rlu")
    assert len(report.errors) == 1 and not report.built, report
    return f"atari-pb: error: {report.errors[0]}"


def one_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_a_crc_mismatch_names_file_and_record_and_keeps_finished_shards(served, tmp_path):
    root = local_tree(served, tmp_path)
    bad = root / "Breakout" / shard_name(1, 2, 50)
    rewrite(
        bad, lambda raw: raw.__setitem__(record_offset(raw, 2) + 500, raw[record_offset(raw, 2) + 500] ^ 1)
    )
    proc = bad_ingest(root, tmp_path, ckpts=("1", "2"))
    assert proc.returncode == 1
    assert one_line(proc) == f"atari-pb: error: {bad}: record 2: the data's CRC32C does not match"
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert [s["path"] for s in manifest["shards"]] == ["breakout/run1_ckpt1.h5"]  # the good one is kept
    assert sorted(p.name for p in (tmp_path / "shards" / "breakout").iterdir()) == ["run1_ckpt1.h5"]


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncated", "truncated GZIP stream"),
        ("corrupt", ""),  # zlib's complaint or a CRC mismatch: either way the file is named
    ],
)
def test_a_truncated_or_corrupt_gzip_stream(served, tmp_path, damage, message):
    root = local_tree(served, tmp_path)
    bad = root / "Breakout" / shard_name(1, 1, 50)
    data = bytearray(bad.read_bytes())
    if damage == "truncated":
        bad.write_bytes(bytes(data[: len(data) // 5]))
    else:
        for at in range(len(data) // 3, len(data) // 3 + 400, 7):  # past record 0, inside the prefix
            data[at] ^= 0x5A
        bad.write_bytes(bytes(data))
    line = ingest_error(root, tmp_path)
    assert line.startswith(f"atari-pb: error: {bad}: ") and message in line
    assert not (tmp_path / "shards" / "breakout" / "run1_ckpt1.h5").exists()


def _datums(pool, edit) -> list[dict]:
    episodes = file_episodes(pool, BREAKOUT, 1)
    datums = [e.datum(1) for e in episodes]
    edit(datums)
    return datums


def _png(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d[1]["observations"][0].__setitem__(7, b"\x89PNG not really"), "record 1: the PNG of transition 126 does not decode"),
        (lambda d: d[0]["observations"][0].__setitem__(3, _png(np.zeros((84, 84, 3), np.uint8))),
         "record 0: the PNG of transition 3 is uint8 (84, 84, 3), not an 84x84x1 uint8 frame"),
        (lambda d: d[0]["observations"][0].__setitem__(3, _png(np.zeros((80, 84), np.uint8))),
         "record 0: the PNG of transition 3 is uint8 (80, 84), not an 84x84x1 uint8 frame"),
        (lambda d: d[2].__setitem__("actions", (d[2]["actions"][0][:-1], "int")),
         "record 2: lists of unequal length in one episode (observations 90, actions 89, unclipped_rewards 90, "
         "clipped_rewards 90, discounts 90)"),
    ],
    ids=["png-garbage", "png-rgb", "png-size", "unequal-lists"],
)  # fmt: skip
def test_bad_records_name_file_and_record(pool, tmp_path, edit, message):
    root = tmp_path / "local"
    bad = write_rlu_file(root / "Breakout" / shard_name(1, 1, 50), [], 1, datums=_datums(pool, edit))
    assert ingest_error(root, tmp_path) == f"atari-pb: error: {bad}: {message}"
    assert not (tmp_path / "shards" / "breakout").exists() or not any(
        (tmp_path / "shards" / "breakout").iterdir()
    )


def test_what_the_server_does_not_have_is_one_line(serve, tmp_path):
    server = serve()
    sel = ["--source", "rlu", "--base-url", server.base_url, "--runs", "1", "--samples-per-ckpt", "50"]
    proc = atari_pb("download", tmp_path / "a", *sel, "--games", "breakout", "--ckpts", "3")
    assert proc.returncode == 2
    assert one_line(proc) == (
        f"atari-pb: error: {server.base_url}/Breakout/{shard_name(1, 3, 50)}: not found (HTTP 404); "
        f"RL Unplugged names Breakout run 1's files {server.base_url}/Breakout/run_1-*"
    )
    proc = atari_pb("download", tmp_path / "b", *sel, "--games", "pong", "--ckpts", "1")
    assert proc.returncode == 2
    assert one_line(proc).startswith(
        f"atari-pb: error: {server.base_url}/Pong/{shard_name(1, 0, 50)}: not found"
    )


def test_no_checkpoint_to_fall_back_to(served, serve, tmp_path):
    root = tmp_path / "served"
    shutil.copytree(served / "Gravitar", root / "Gravitar")
    (root / "Gravitar" / shard_name(1, 48, 49)).unlink()
    server = serve(root.resolve())
    with pytest.raises(UsageError) as err:
        fetch(server, tmp_path / "dest", games=(GRAVITAR,), ckpts=(50,))
    assert str(err.value) == (
        f"Gravitar run 1: checkpoints 50, 49, 48 are all missing at {server.base_url}/Gravitar/run_1-* (HTTP 404 "
        "for run_1-00050-of-00049 (the run has shards 0-48), run_1-00049-of-00049 (the run has shards 0-48), "
        "run_1-00048-of-00049); pass other runs or checkpoints"
    )
    assert not (tmp_path / "dest" / "Gravitar").exists()


def test_a_dqn_replay_tree_or_file_as_rlu_and_the_reverse(served, pool, tmp_path):
    replay = tmp_path / "replay"
    collect(replay, [BREAKOUT], [1], [1], CollectConfig(transitions_per_ckpt=100))
    proc = atari_pb("ingest", replay, tmp_path / "s1", "--layout", "rlu", "--games", "breakout", "--runs", "1",
                    "--ckpts", "1", "--samples-per-ckpt", "50")  # fmt: skip
    assert (
        proc.returncode == 2
        and "is a DQN-Replay tree" in one_line(proc)
        and "--layout dqn_replay" in proc.stderr
    )
    # a DQN-Replay observation file under an RLU name
    fake = tmp_path / "fake"
    (fake / "Breakout").mkdir(parents=True)
    shutil.copy(
        replay_file(replay, "Breakout", 1, "observation", 1), fake / "Breakout" / shard_name(1, 1, 50)
    )
    proc = atari_pb("ingest", fake, tmp_path / "s2", "--layout", "rlu", "--games", "breakout", "--runs", "1",
                    "--ckpts", "1", "--samples-per-ckpt", "50")  # fmt: skip
    assert proc.returncode == 1
    assert one_line(proc) == (
        f"atari-pb: error: {fake / 'Breakout' / shard_name(1, 1, 50)}: a DQN-Replay .npy array, not an RL "
        "Unplugged TFRecord file; ingest it with --layout dqn_replay"
    )
    proc = atari_pb("ingest", served, tmp_path / "s3", "--games", "breakout", "--runs", "1", "--ckpts", "1",
                    "--samples-per-ckpt", "50")  # fmt: skip
    assert (
        proc.returncode == 2
        and "holds RL Unplugged files" in one_line(proc)
        and "--layout rlu" in proc.stderr
    )
    with pytest.raises(DataError):
        ingest(fake, tmp_path / "s4", [BREAKOUT], [1], [1], 50, layout="rlu")


def test_full_check_reads_every_record_to_the_end(served, tmp_path):
    from atari_pb.data.rlu import read_prefix

    path = served / "Breakout" / shard_name(1, 1, 50)
    whole = read_prefix(path, SAMPLES, 4, full_check=True)
    assert whole.records[-1] == STRADDLING and len(whole.checkpoint_idx) == len(PLAN)  # every record was read
    cut = tmp_path / shard_name(1, 1, 50)
    cut.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.9)])
    assert read_prefix(cut, SAMPLES, 4).records[-1] == STRADDLING  # the prefix alone is there
    with pytest.raises(DataError, match="truncated file"):
        read_prefix(cut, SAMPLES, 4, full_check=True)


def test_a_refused_dqn_replay_bucket_points_at_rl_unplugged():
    from atari_pb.data.download import DEFAULT_BASE_URL, _refused_hint

    assert "--source rlu" in _refused_hint(f"{DEFAULT_BASE_URL}/Pong/1/replay_logs/x.gz", 403)
    assert _refused_hint("http://127.0.0.1:1/mirror/x.gz", 403) == ""
    assert _refused_hint(f"{DEFAULT_BASE_URL}/Pong/1/replay_logs/x.gz", 500) == ""


def test_record_stream_over_megabytes_of_records(tmp_path):
    """Records of 300 kB, fed in 64 KiB pieces: the stream trims what it has handed out (past 1 MiB) and
    still gives every record whole, CRCs checked, as the independent writer wrote them."""
    from tfrecord.writer import TFRecordWriter

    from atari_pb.data.tfrecord import RecordStream, parse_example

    rng = np.random.default_rng(0)
    blobs = [rng.bytes(300_000) for _ in range(8)]
    raw = tmp_path / "raw"
    writer = TFRecordWriter(str(raw))
    for i, blob in enumerate(blobs):
        writer.write({"blob": ([blob], "byte"), "i": (i, "int")})
    writer.close()
    data = gzip.compress(raw.read_bytes(), compresslevel=6)
    stream = RecordStream("memory")
    got = [r for at in range(0, len(data), 1 << 16) for r in stream.feed(data[at : at + (1 << 16)])]
    assert stream.records == 8 and stream.gzip_ended and stream.at_record_boundary
    for i, record in enumerate(got):
        features = parse_example(record, "memory", i).features.feature
        assert features["blob"].bytes_list.value[0] == blobs[i] and features["i"].int64_list.value[0] == i
