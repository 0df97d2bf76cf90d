"""Peak memory: prefix ingest vs whole-file load, and the sampler over shards larger than its memory limit.

    .venv/bin/python -m bench.memory [--quick] [--limit-mib N] [--batches N] ...

Every measurement runs in its own child process (`python -m bench.memory --child ...`); its peak RSS is the
kernel's ru_maxrss for that child (os.wait4), cross-checked against VmHWM read by the child at its end.
  ingest    ingest() of a 10k and a 100k prefix of the large source file, vs the baseline
            np.load(gzip.GzipFile(...)) of the whole file then [:10000].copy();
  sampler   ShardSet.sample over a small and a large shard set. Where this machine lets us create a cgroup v2
            with memory.max, the sampler runs confined to --limit-mib; otherwise (said plainly in the output)
            the child runs under RLIMIT_DATA = --limit-mib, a cap on its private writable address space
            (anonymous memory; file-backed read-only maps are not counted), and we show that anonymous RSS
            does not grow with the data set while the whole-load approach fails under the same cap.
Results: bench/out/memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (
    BIG_GAME,
    OUT,
    big_source,
    describe_source,
    dir_bytes,
    finish,
    link_checkpoints,
    log,
    machine_info,
    proc_status,
    table,
    warm_page_cache,
)

FRAMES, T_STEP, N_STEP, BATCH = 4, 1, 3, 256
GIB = 2**30
MIB = 2**20


# ------------------------------------------------------------------------------------------ child side
def child(task: str, args: dict) -> dict:
    """Runs in the child process; prints one JSON line."""
    import numpy as np

    out: dict = {"task": task}
    if task == "idle":  # the interpreter with what ingest imports: the floor under every ingest figure
        import atari_pb.data.ingest  # noqa: F401
    elif task == "ingest":
        from atari_pb.data.ingest import ingest
        from atari_pb.games import get_game

        t0 = time.perf_counter()
        report = ingest(
            Path(args["src"]), Path(args["dst"]), [get_game(BIG_GAME)], [1], [0], args["samples"], workers=1
        )
        out["seconds"] = time.perf_counter() - t0
        out["errors"] = report.errors
    elif task == "full_load":
        import gzip

        t0 = time.perf_counter()
        with gzip.GzipFile(args["path"]) as f:
            whole = np.load(f, allow_pickle=False)
        sel = whole[: args["samples"]].copy()
        del whole
        out["seconds"] = time.perf_counter() - t0
        out["shape"] = list(sel.shape)
    elif task == "sampler":
        from atari_pb.data.sampler import ShardSet

        t0 = time.perf_counter()
        ss = ShardSet(args["root"])
        ss.sample(BATCH, FRAMES, T_STEP, N_STEP, seed=999_999)
        out["setup_seconds"] = time.perf_counter() - t0
        out["after_setup"] = proc_status()
        flt0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        for i in range(args["batches"]):
            batch = ss.sample(BATCH, FRAMES, T_STEP, N_STEP, seed=i)
        out["seconds"] = time.perf_counter() - t0
        out["minor_faults_per_batch"] = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - flt0) / args[
            "batches"
        ]
        out["samples_per_s"] = args["batches"] * BATCH / out["seconds"]
        out["transitions"] = len(ss)
        del batch
    elif task == "sampler_full_load":  # what "load the observations whole" needs: fails under the same cap
        import h5py

        from atari_pb.data.sampler import ShardSet

        ss = ShardSet(args["root"])
        total = len(ss)
        try:
            obs = np.empty((total, 84, 84), np.uint8)
            at = 0
            for s in ss.shards:
                with h5py.File(s.path, "r") as f:
                    f["observation"].read_direct(obs, dest_sel=np.s_[at : at + s.length])
                at += s.length
            out["loaded_bytes"] = obs.nbytes
            out["outcome"] = "loaded"
        except MemoryError as err:
            out["outcome"] = f"MemoryError: {err}"
    else:
        raise SystemExit(f"unknown child task {task}")
    out["status"] = proc_status()
    return out


# ----------------------------------------------------------------------------------------- parent side
def run_child(task: str, args: dict, rlimit_data: int | None = None, cgroup: Path | None = None) -> dict:
    """Run one child; returns its JSON plus ru_maxrss (bytes) of that child alone, from os.wait4."""

    def pre() -> None:
        if rlimit_data is not None:
            resource.setrlimit(resource.RLIMIT_DATA, (rlimit_data, rlimit_data))
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    cmd = [sys.executable, "-m", "bench.memory", "--child", task, json.dumps(args)]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=err, preexec_fn=pre, cwd=Path(__file__).parent.parent
        )
        stdout = proc.stdout.read()
        proc.stdout.close()
        _pid, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not the sum of all children
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read()
    if proc.returncode != 0:
        return {
            "task": task,
            "failed": True,
            "returncode": proc.returncode,
            "stderr": stderr.decode()[-2000:],
        }
    res = json.loads(stdout.decode().strip().splitlines()[-1])
    res["ru_maxrss"] = usage.ru_maxrss * 1024
    return res


def cgroup_v2_memory() -> tuple[Path | None, str]:
    """A fresh cgroup v2 with a memory controller, or (None, why not)."""
    mounts = []
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            if right.split()[0] == "cgroup2":
                mounts.append(Path(left.split()[4]))
    except (OSError, IndexError):
        pass
    if not mounts:
        return None, "no cgroup2 file system is mounted"
    reasons = []
    for mount in mounts:
        try:
            controllers = (mount / "cgroup.controllers").read_text().split()
        except OSError as err:
            reasons.append(f"{mount}: {err}")
            continue
        if "memory" not in controllers:
            reasons.append(
                f"the cgroup2 hierarchy at {mount} offers controllers {controllers or 'none'}: the memory "
                "controller is bound to the cgroup v1 hierarchy, so no cgroup v2 can have memory.max"
            )
            continue
        cg = mount / f"atari_pb_bench_{os.getpid()}"
        try:
            subtree = (mount / "cgroup.subtree_control").read_text().split()
            if "memory" not in subtree:
                (mount / "cgroup.subtree_control").write_text("+memory")
            cg.mkdir()
            if not (cg / "memory.max").exists():
                raise OSError("memory.max did not appear")
            return cg, f"created {cg}"
        except OSError as err:
            reasons.append(f"{mount}: cannot create a cgroup with memory.max ({err})")
            if cg.exists():
                cg.rmdir()
    return None, "; ".join(reasons)


def mem_shards(src: Path, samples: int, count: int) -> tuple[Path, Path]:
    """`count` shards of `samples` transitions (checkpoints 0..count-1 of the large source, symlinked), and
    a second root holding only the first of them (hard link), for the small/large comparison."""
    from atari_pb.data.ingest import ingest
    from atari_pb.data.manifest import read_manifest, write_manifest
    from atari_pb.games import get_game

    large = OUT / f"shards_mem_{samples}x{count}"
    small = OUT / f"shards_mem_{samples}x1"
    ckpts = link_checkpoints(src, count)
    if len(read_manifest(large)) != count:
        log(f"ingesting {count} shards of {samples:,} transitions into {large} (once; cached)")
        report = ingest(src, large, [get_game(BIG_GAME)], [1], ckpts, samples, workers=2)
        if report.errors:
            raise RuntimeError("; ".join(report.errors))
    if len(read_manifest(small)) != 1:
        shutil.rmtree(small, ignore_errors=True)
        entries = read_manifest(large)
        first = entries[min(entries)]
        (small / first.path).parent.mkdir(parents=True, exist_ok=True)
        os.link(large / first.path, small / first.path)
        write_manifest(small, {first.key: first})
    return small, large


def gib(x: float) -> float:
    return x / GIB


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="100k-frame source, smaller shard sets")
    p.add_argument("--child", nargs=2, metavar=("TASK", "JSON"), help=argparse.SUPPRESS)
    p.add_argument(
        "--frames", type=int, help="frames of the source file (default 1,000,000; --quick 100,000)"
    )
    p.add_argument("--limit-mib", type=int, default=1024, help="memory limit of the confined sampler (MiB)")
    p.add_argument("--batches", type=int, help="batches per sampler child (default 400; --quick 50)")
    p.add_argument(
        "--repeats",
        type=int,
        help="sampler child runs per setting; the median run is shown (default 3; --quick 1)",
    )
    p.add_argument(
        "--shard-samples",
        type=int,
        help="transitions per shard of the sampler sets (default 100,000; --quick 50,000)",
    )
    p.add_argument("--shard-count", type=int, help="shards in the large sampler set (default 6; --quick 4)")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], json.loads(args.child[1]))))
        return {}
    q = args.quick
    frames = args.frames or (100_000 if q else 1_000_000)
    batches = args.batches or (50 if q else 400)
    shard_samples = args.shard_samples or (50_000 if q else 100_000)
    shard_count = args.shard_count or (4 if q else 6)
    limit = args.limit_mib * MIB
    reps = args.repeats or (1 if q else 3)
    t_start = time.perf_counter()

    from atari_pb.data.replay_format import replay_file
    from atari_pb.games import get_game

    src, info = big_source(frames)
    obs_path = replay_file(src, get_game(BIG_GAME).replay_name, 1, "observation", 0)
    work = OUT / "tmp_memory"
    shutil.rmtree(work, ignore_errors=True)

    # ---- ingest peak RSS
    log("ingest peak RSS: idle interpreter, prefix ingests, whole-file load (each in a child)")
    idle = run_child("idle", {})
    ingest_rows = [
        ["interpreter + imports (no work)", "-", idle["ru_maxrss"] / MIB, idle["status"]["VmHWM"] / MIB, "-"]
    ]
    ingest_res = {}
    for samples in sorted({10_000, min(100_000, frames)}):
        r = run_child("ingest", {"src": str(src), "dst": str(work / f"ingest_{samples}"), "samples": samples})
        if r.get("failed") or r.get("errors"):
            raise RuntimeError(f"ingest child failed: {r}")
        ingest_res[samples] = r
        ingest_rows.append(
            [
                f"ours: ingest() of a {samples:,} prefix",
                samples,
                r["ru_maxrss"] / MIB,
                r["status"]["VmHWM"] / MIB,
                r["seconds"],
            ]
        )
        shutil.rmtree(work / f"ingest_{samples}", ignore_errors=True)
    base = run_child("full_load", {"path": str(obs_path), "samples": 10_000})
    if base.get("failed"):
        raise RuntimeError(f"baseline child failed: {base}")
    ingest_rows.append(
        [
            "baseline: np.load(GzipFile) whole, [:10000].copy()",
            10_000,
            base["ru_maxrss"] / MIB,
            base["status"]["VmHWM"] / MIB,
            base["seconds"],
        ]
    )
    ingest_ratio = base["ru_maxrss"] / ingest_res[10_000]["ru_maxrss"]
    ingest_ratio_net = (base["ru_maxrss"] - idle["ru_maxrss"]) / max(
        ingest_res[10_000]["ru_maxrss"] - idle["ru_maxrss"], 1
    )

    # ---- sampler over shard sets small and large
    small, large = mem_shards(src, shard_samples, shard_count)
    cg, cg_reason = cgroup_v2_memory()
    mode = "cgroup" if cg is not None else "rlimit"
    log(f"sampler: confinement by {'cgroup v2 memory.max' if cg else 'RLIMIT_DATA'} ({cg_reason})")
    samp_rows = []
    samp_res = {}
    try:
        if cg is not None:
            (cg / "memory.max").write_text(str(limit))
            if (cg / "memory.swap.max").exists():
                (cg / "memory.swap.max").write_text("0")
        for label, root in (("small", small), ("large", large)):
            size = dir_bytes(root)
            warm_page_cache(sorted(Path(root).glob("**/*.h5")))
            runs: dict[bool, list[dict]] = {False: [], True: []}
            for rep in range(reps):  # alternate the order, so that neither setting always runs first
                for confined in (False, True) if rep % 2 == 0 else (True, False):
                    kw = {}
                    if confined:
                        kw = {"cgroup": cg} if cg is not None else {"rlimit_data": limit}
                    r = run_child("sampler", {"root": str(root), "batches": batches}, **kw)
                    if r.get("failed"):
                        raise RuntimeError(f"sampler child failed: {r}")
                    runs[confined].append(r)
            for confined in (False, True):
                r = sorted(runs[confined], key=lambda x: x["samples_per_s"])[
                    len(runs[confined]) // 2
                ]  # median run
                r["samples_per_s_all"] = [x["samples_per_s"] for x in runs[confined]]
                samp_res[(label, confined)] = r
                st, st0 = r["status"], r["after_setup"]
                samp_rows.append(
                    [
                        f"{label}: {r['transitions']:,} transitions",
                        gib(size),
                        f"{args.limit_mib} MiB" if confined else "none",
                        r["samples_per_s"],
                        r["minor_faults_per_batch"],
                        r["ru_maxrss"] / MIB,
                        st0["RssAnon"] / MIB,
                        st["RssAnon"] / MIB,
                        st["RssFile"] / MIB,
                        st["VmData"] / MIB,
                    ]
                )
        kw = {"cgroup": cg} if cg is not None else {"rlimit_data": limit}
        whole = run_child("sampler_full_load", {"root": str(large)}, **kw)
    finally:
        if cg is not None:
            cg.rmdir()
    shutil.rmtree(work, ignore_errors=True)

    large_size = dir_bytes(large)
    anon_small = samp_res[("small", True)]["status"]["RssAnon"]
    anon_large = samp_res[("large", True)]["status"]["RssAnon"]
    whole_outcome = (
        whole.get("outcome")
        or f"child failed (exit {whole.get('returncode')}): {whole.get('stderr', '')[-300:]}"
    )
    confinement = (
        f"a cgroup v2 with memory.max = {args.limit_mib} MiB ({cg_reason})"
        if cg is not None
        else (
            f"RLIMIT_DATA = {args.limit_mib} MiB. No cgroup v2 with memory.max could be made here: {cg_reason}. "
            "RLIMIT_DATA caps the child's private writable address space (VmData: heap, anonymous maps, library data; "
            "importing torch alone takes ~0.8 GiB of it); the read-only file maps of the observations are not "
            "counted, and the page cache they use is reclaimable, system-wide memory. So this shows that the "
            "sampler's anonymous memory does not grow with the data set and stays within the cap; it does not show "
            "behaviour under page-cache pressure, which only a memory cgroup (or a data set larger than this "
            "machine's RAM) would"
        )
    )
    result = {
        "name": "memory",
        "quick": q,
        "machine": machine_info(),
        "setup": [
            "Source: " + describe_source(info) + ".",
            f"Sampler shard sets: small = 1 shard, large = {shard_count} shards, of {shard_samples:,} transitions "
            f"each (prefixes of the source file), in the page cache; {batches} batches of {BATCH} (frames={FRAMES}, "
            f"n_step={N_STEP}) per child process, {reps} children per setting (order alternated), median shown.",
            "Sampler confinement: " + confinement + ".",
            "Peak RSS = ru_maxrss of the child process alone (os.wait4); it counts file-backed pages mapped by the "
            "process as well as anonymous memory. RssAnon / RssFile are read from /proc/self/status at the end of the run.",
        ],
        "tables": [
            table(
                f"Ingest peak RSS (source: {frames:,} frames)",
                ["process", "prefix", "peak RSS MiB", "VmHWM MiB", "wall s"],
                ingest_rows,
            ),
            table(
                "Sampler memory vs data set size",
                [
                    "shard set",
                    "GiB on disk",
                    "limit",
                    "samples/s",
                    "page faults/batch",
                    "peak RSS MiB",
                    "RssAnon after setup MiB",
                    "RssAnon end MiB",
                    "RssFile end MiB",
                    "VmData MiB",
                ],
                samp_rows,
            ),
            table(
                "Ratios and outcomes",
                ["measure", "value"],
                [
                    ["baseline peak RSS / ours (10k prefix)", ingest_ratio],
                    ["same, above the idle interpreter", ingest_ratio_net],
                    [
                        "ours 100k / ours 10k peak RSS",
                        ingest_res[max(ingest_res)]["ru_maxrss"] / ingest_res[10_000]["ru_maxrss"],
                    ],
                    [
                        f"sampler RssAnon large / small ({gib(large_size):.1f} vs {gib(dir_bytes(small)):.2f} GiB), confined",
                        anon_large / anon_small,
                    ],
                    [
                        f"large set / limit ({gib(large_size):.1f} GiB / {args.limit_mib} MiB)",
                        large_size / limit,
                    ],
                    ["load-whole of the large set's observations under the same limit", whole_outcome],
                ],
            ),
        ],
        "values": {
            "mode": mode,
            "cgroup_reason": cg_reason,
            "limit_bytes": limit,
            "idle": idle,
            "ingest": {str(k): v for k, v in ingest_res.items()},
            "baseline_full_load": base,
            "sampler": {f"{k[0]}_{'confined' if k[1] else 'free'}": v for k, v in samp_res.items()},
            "sampler_full_load": whole,
            "large_set_bytes": large_size,
            "ratio_baseline_over_ours_peak_rss": ingest_ratio,
        },
        "notes": [],
        "seconds": time.perf_counter() - t_start,
    }
    return finish("memory", result)


if __name__ == "__main__":
    main()
