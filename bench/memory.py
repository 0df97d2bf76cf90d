"""Peak memory: prefix ingest vs whole-file load, and the sampler over shards larger than its memory limit.

Every measurement runs in its own child process (`python -m bench.memory --child JSON`); its peak RSS is the
kernel's ru_maxrss for that child (os.wait4), cross-checked against VmHWM read by the child at its end.
  ingest    ingest() of a 10k and a 100k prefix of the large source file, vs the baseline
            np.load(gzip.GzipFile(...)) of the whole file then [:10000].copy();
  sampler   ShardSet.sample over a small and a large shard set. Where this machine lets us create a cgroup v2
            with memory.max, the sampler runs confined to --limit-mib; otherwise (said plainly in the output)
            the child runs under RLIMIT_DATA = --limit-mib, a cap on its private writable address space
            (anonymous memory; file-backed read-only maps are not counted), and we show that anonymous RSS
            does not grow with the data set while the whole-load approach fails under the same cap.
"""

from __future__ import annotations

import os
import resource
import shutil
import time
from pathlib import Path

from bench.data import BIG_GAME, big_source, describe_source, dir_bytes, memory_shards
from bench.harness import OUT, Opt, Spec, Table, log, proc_status, run_child, warm_page_cache

FRAMES, T_STEP, N_STEP, BATCH = 4, 1, 3, 256
MIB, GIB = 2**20, 2**30


# ------------------------------------------------------------------------------------------ child side
def child(args: dict) -> dict:
    """One measurement, in the child process."""
    import numpy as np

    task, out = args["task"], {"task": args["task"]}
    if task == "idle":  # the interpreter with what ingest imports: the floor under every ingest figure
        import atari_pb.data.ingest  # noqa: F401
    elif task == "ingest":
        from atari_pb.data.ingest import ingest
        from atari_pb.games import get_game

        t0 = time.perf_counter()
        report = ingest(
            Path(args["src"]), Path(args["dst"]), [get_game(BIG_GAME)], [1], [0], args["samples"], workers=1
        )
        out.update(seconds=time.perf_counter() - t0, errors=report.errors)
    elif task == "full_load":
        import gzip

        t0 = time.perf_counter()
        with gzip.GzipFile(args["path"]) as f:
            whole = np.load(f, allow_pickle=False)
        sel = whole[: args["samples"]].copy()
        del whole
        out.update(seconds=time.perf_counter() - t0, shape=list(sel.shape))
    elif task == "sampler":
        from atari_pb.data.sampler import ShardSet

        t0 = time.perf_counter()
        ss = ShardSet(args["root"])
        ss.sample(BATCH, FRAMES, T_STEP, N_STEP, seed=999_999)
        out.update(setup_seconds=time.perf_counter() - t0, after_setup=proc_status())
        flt0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        for i in range(args["batches"]):
            batch = ss.sample(BATCH, FRAMES, T_STEP, N_STEP, seed=i)
        out["seconds"] = time.perf_counter() - t0
        out["minor_faults_per_batch"] = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - flt0) / args[
            "batches"
        ]
        out.update(samples_per_s=args["batches"] * BATCH / out["seconds"], transitions=len(ss))
        del batch
    elif task == "sampler_full_load":  # what "load the observations whole" needs: fails under the same cap
        import h5py

        from atari_pb.data.sampler import ShardSet

        ss = ShardSet(args["root"])
        try:
            obs, at = np.empty((len(ss), 84, 84), np.uint8), 0
            for s in ss.shards:
                with h5py.File(s.path, "r") as f:
                    f["observation"].read_direct(obs, dest_sel=np.s_[at : at + s.length])
                at += s.length
            out.update(loaded_bytes=obs.nbytes, outcome="loaded")
        except MemoryError as err:
            out["outcome"] = f"MemoryError: {err}"
    else:
        raise SystemExit(f"unknown child task {task}")
    out["status"] = proc_status()
    return out


# ----------------------------------------------------------------------------------------- parent side
def confined(payload: dict, rlimit_data: int | None = None, cgroup: Path | None = None) -> dict:
    """run_child under RLIMIT_DATA or inside a cgroup."""

    def pre() -> None:
        if rlimit_data is not None:
            resource.setrlimit(resource.RLIMIT_DATA, (rlimit_data, rlimit_data))
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    return run_child("memory", payload, preexec_fn=pre)


def must(r: dict) -> dict:
    if r.get("failed") or r.get("errors"):
        raise RuntimeError(f"{r['task']} child failed: {r}")
    return r


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
            if "memory" not in (mount / "cgroup.subtree_control").read_text().split():
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


def measure(o) -> dict:
    from atari_pb.data.replay_format import replay_file
    from atari_pb.games import get_game

    src, info = big_source(o.frames)
    obs_path = replay_file(src, get_game(BIG_GAME).replay_name, 1, "observation", 0)
    work, limit = OUT / "tmp_memory", o.limit_mib * MIB
    shutil.rmtree(work, ignore_errors=True)
    v = {"source": info, "limit_bytes": limit, "ingest": {}}

    log("ingest peak RSS: idle interpreter, prefix ingests, whole-file load (each in a child)")
    v["idle"] = must(run_child("memory", {"task": "idle"}))
    for samples in sorted({10_000, min(100_000, o.frames)}):
        dst = work / f"ingest_{samples}"
        payload = {"task": "ingest", "src": str(src), "dst": str(dst), "samples": samples}
        v["ingest"][str(samples)] = must(run_child("memory", payload))
        shutil.rmtree(dst, ignore_errors=True)
    payload = {"task": "full_load", "path": str(obs_path), "samples": 10_000}
    v["baseline_full_load"] = must(run_child("memory", payload))

    small, large = memory_shards(src, o.shard_samples, o.shard_count)
    cg, v["cgroup_reason"] = cgroup_v2_memory()
    v["mode"] = "cgroup" if cg is not None else "rlimit"
    log(f"sampler: confinement by {'cgroup v2 memory.max' if cg else 'RLIMIT_DATA'} ({v['cgroup_reason']})")
    cap = {"cgroup": cg} if cg is not None else {"rlimit_data": limit}
    v["sampler"] = {}
    try:
        if cg is not None:
            (cg / "memory.max").write_text(str(limit))
            if (cg / "memory.swap.max").exists():
                (cg / "memory.swap.max").write_text("0")
        for label, root in (("small", small), ("large", large)):
            warm_page_cache(sorted(Path(root).glob("**/*.h5")))
            runs: dict[bool, list[dict]] = {False: [], True: []}
            for rep in range(o.repeats):  # alternate the order, so that neither setting always runs first
                for capped in (False, True) if rep % 2 == 0 else (True, False):
                    payload = {"task": "sampler", "root": str(root), "batches": o.batches}
                    r = confined(payload, **cap) if capped else run_child("memory", payload)
                    runs[capped].append(must(r))
            for capped, rs in runs.items():
                r = sorted(rs, key=lambda x: x["samples_per_s"])[len(rs) // 2]  # the median run
                r["samples_per_s_all"] = [x["samples_per_s"] for x in rs]
                v["sampler"][f"{label}_{'confined' if capped else 'free'}"] = r
        v["sampler_full_load"] = confined({"task": "sampler_full_load", "root": str(large)}, **cap)
    finally:
        if cg is not None:
            cg.rmdir()
    shutil.rmtree(work, ignore_errors=True)
    v["small_set_bytes"], v["large_set_bytes"] = dir_bytes(small), dir_bytes(large)
    ours10k = v["ingest"]["10000"]["ru_maxrss"]
    v["ratio_baseline_over_ours_peak_rss"] = v["baseline_full_load"]["ru_maxrss"] / ours10k
    idle = v["idle"]["ru_maxrss"]
    v["ratio_above_idle"] = (v["baseline_full_load"]["ru_maxrss"] - idle) / max(ours10k - idle, 1)
    v["ratio_100k_over_10k"] = v["ingest"][max(v["ingest"], key=int)]["ru_maxrss"] / ours10k
    anon = {k: r["status"]["RssAnon"] for k, r in v["sampler"].items()}
    v["anon_large_over_small"] = anon["large_confined"] / anon["small_confined"]
    return v


def setup(v: dict, o) -> list[str]:
    reason = v["cgroup_reason"]
    confinement = (
        f"a cgroup v2 with memory.max = {o.limit_mib} MiB ({reason})"
        if v["mode"] == "cgroup"
        else f"RLIMIT_DATA = {o.limit_mib} MiB. No cgroup v2 with memory.max could be made here: {reason}. "
        "RLIMIT_DATA caps the child's private writable address space (VmData: heap, anonymous maps, library data; "
        "importing torch alone takes ~0.8 GiB of it); the read-only file maps of the observations are not "
        "counted, and the page cache they use is reclaimable, system-wide memory. So this shows that the "
        "sampler's anonymous memory does not grow with the data set and stays within the cap; it does not show "
        "behaviour under page-cache pressure, which only a memory cgroup (or a data set larger than this "
        "machine's RAM) would"
    )
    return [
        f"Source: {describe_source(v['source'])}.",
        f"Sampler shard sets: small = 1 shard, large = {o.shard_count} shards, of {o.shard_samples:,} transitions "
        f"each (prefixes of the source file), in the page cache; {o.batches} batches of {BATCH} (frames={FRAMES}, "
        f"n_step={N_STEP}) per child process, {o.repeats} children per setting (order alternated), median shown.",
        f"Sampler confinement: {confinement}.",
        "Peak RSS = ru_maxrss of the child process alone (os.wait4); it counts file-backed pages mapped by the "
        "process as well as anonymous memory. RssAnon / RssFile are read from /proc/self/status at the end of the run.",
    ]


def tables(v: dict, o) -> list[Table]:
    def peak(label: str, prefix, r: dict) -> list:
        return [label, prefix, r["ru_maxrss"] / MIB, r["status"]["VmHWM"] / MIB, r.get("seconds", "-")]

    ingest = [peak("interpreter + imports (no work)", "-", v["idle"])]
    ingest += [peak(f"ours: ingest() of a {int(n):,} prefix", int(n), r) for n, r in v["ingest"].items()]
    ingest.append(peak("baseline: np.load(GzipFile) whole, [:10000].copy()", 10_000, v["baseline_full_load"]))
    sampler = []
    for key, r in v["sampler"].items():
        label, capped = key.split("_")
        st, st0, limit = (
            r["status"],
            r["after_setup"],
            f"{o.limit_mib} MiB" if capped == "confined" else "none",
        )
        mibs = [r["ru_maxrss"], st0["RssAnon"], st["RssAnon"], st["RssFile"], st["VmData"]]
        head = [f"{label}: {r['transitions']:,} transitions", v[f"{label}_set_bytes"] / GIB, limit]
        sampler.append(head + [r["samples_per_s"], r["minor_faults_per_batch"]] + [x / MIB for x in mibs])
    whole = v["sampler_full_load"]
    outcome = (
        whole.get("outcome")
        or f"child failed (exit {whole.get('returncode')}): {whole.get('stderr', '')[-300:]}"
    )
    lg, sm = v["large_set_bytes"] / GIB, v["small_set_bytes"] / GIB
    ratios = [
        ["baseline peak RSS / ours (10k prefix)", v["ratio_baseline_over_ours_peak_rss"]],
        ["same, above the idle interpreter", v["ratio_above_idle"]],
        ["ours 100k / ours 10k peak RSS", v["ratio_100k_over_10k"]],
        [f"sampler RssAnon large / small ({lg:.1f} vs {sm:.2f} GiB), confined", v["anon_large_over_small"]],
        [f"large set / limit ({lg:.1f} GiB / {o.limit_mib} MiB)", v["large_set_bytes"] / v["limit_bytes"]],
        ["load-whole of the large set's observations under the same limit", outcome],
    ]
    heads = "shard set | GiB on disk | limit | samples/s | page faults/batch | peak RSS MiB | RssAnon after setup MiB"
    return [
        Table(
            f"Ingest peak RSS (source: {o.frames:,} frames)",
            "process | prefix | peak RSS MiB | VmHWM MiB | wall s",
            ingest,
        ),
        Table(
            "Sampler memory vs data set size",
            heads + " | RssAnon end MiB | RssFile end MiB | VmData MiB",
            sampler,
        ),
        Table("Ratios and outcomes", "measure | value", ratios),
    ]


def interpret(v: dict, o, m: dict) -> list[str]:
    r100 = v["ratio_100k_over_10k"]
    lines = [
        f"Ingest: the whole-file baseline peaks at {v['ratio_baseline_over_ours_peak_rss']:.1f}x our 10k-prefix ingest; "
        + (
            f"the {max(map(int, v['ingest'])):,} prefix costs about the same as the 10k one ({r100:.2f}x)."
            if r100 < 1.1
            else f"the {max(map(int, v['ingest'])):,} prefix costs {r100:.2f}x the 10k one."
        )
    ]
    s, limit, whole = (
        v["sampler"],
        v["limit_bytes"],
        v["sampler_full_load"].get("outcome", "the child failed"),
    )
    small, large = s["small_confined"], s["large_confined"]
    grow = large["status"]["RssAnon"] - small["status"]["RssAnon"]
    more = large["transitions"] - small["transitions"]
    cap = (
        "memory.max of a cgroup v2"
        if v["mode"] == "cgroup"
        else "RLIMIT_DATA, a cap on its private writable memory"
    )
    lines.append(
        f"Sampler: it runs over a shard set {v['large_set_bytes'] / limit:.1f}x larger than a {limit / MIB:,.0f} MiB "
        f"{cap}, at {large['samples_per_s']:,.0f} samples/s vs {s['large_free']['samples_per_s']:,.0f} without the cap "
        f"(medians of the child runs); loading the same observations whole under that cap: {whole.split(':')[0]}. "
        f"Its anonymous RSS is {small['status']['RssAnon'] / MIB:,.0f} MiB for the small set and "
        f"{large['status']['RssAnon'] / MIB:,.0f} MiB for the large one: {grow / MIB:.0f} MiB more for {more:,} more "
        f"transitions ({grow / max(more, 1):.0f} bytes each). Throughput over the large set is "
        f"{large['samples_per_s'] / small['samples_per_s']:.2f}x that over the small one."
    )
    if v["mode"] != "cgroup":
        lines.append(
            "**No cgroup v2 memory limit was available here** (see setup): how the sampler behaves when the page cache "
            "itself is squeezed was not measured."
        )
    return lines


SPEC = Spec(
    name="memory",
    title="Peak memory",
    doc=__doc__,
    measures="peak RSS of `ingest()` of a 10k and a 100k prefix, each in its own child process; the sampler's memory "
    "and samples/s over a small and a large shard set, with and without a memory cap.",
    baseline="`np.load(gzip.GzipFile(...))` of the whole observation file then `[:10000].copy()`, in a child; and "
    "loading the large shard set's observations whole under the sampler's cap.",
    measure=measure,
    setup=setup,
    tables=tables,
    interpret=interpret,
    child=child,
    options={
        "frames": Opt(1_000_000, 100_000, "frames of the source file"),
        "limit_mib": Opt(1024, None, "memory limit of the confined sampler (MiB)"),
        "batches": Opt(400, 50, "batches per sampler child"),
        "repeats": Opt(3, 1, "sampler child runs per setting; the median run is shown"),
        "shard_samples": Opt(100_000, 50_000, "transitions per shard of the sampler sets"),
        "shard_count": Opt(6, 4, "shards in the large sampler set"),
    },
    headlines=[
        ("baseline / ours peak RSS, ingest of a 10k prefix", "ratio_baseline_over_ours_peak_rss", "x")
    ],
)

if __name__ == "__main__":
    SPEC.main()
