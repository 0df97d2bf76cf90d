"""Sampler throughput: ShardSet / ShardStream vs Atari-PB's per-item h5py Dataset, and the memcpy bound.

Shards: the first 5,000 transitions of 16 real checkpoints (4 games x 2 runs x 2 checkpoints, collected
with ale-py), in the page cache. Every batch is 256 samples of frames=4, t_step=1, n_step=3.
  ours       ShardSet.sample(256, frames=4, t_step=1, n_step=3, seed=i) in this process, and
             make_loader(ShardStream(...), num_workers=0 / 2 threads / 2 processes);
  baseline   Atari-PB's pattern: a torch Dataset whose __getitem__ maps idx to (shard, index), keeps the
             h5py files open per worker and does one h5py read per field per item (obs stack, next-obs
             stack, action, reward, terminal slices), batched by DataLoader(batch_size=256, shuffle=True);
             Atari-PB's own field set adds rtg and game_id, each an HDF5 read per item too (7 reads);
  bound      np.copyto of the bytes one batch delivers, between preallocated arrays; and the batch's
             512 random 4-frame window copies done from in-RAM arrays (what the access pattern costs).
"""

from __future__ import annotations

import os
import time

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from bench.data import dir_bytes, sampler_shards
from bench.harness import (
    OUT,
    ROUNDS,
    Goal,
    Opt,
    Spec,
    Table,
    fmt,
    log,
    per_call,
    time_iter,
    warm_page_cache,
)

FRAMES, T_STEP, N_STEP, BATCH = 4, 1, 3, 256


class H5PerItemDataset(Dataset):
    """Atari-PB's loading pattern over the same shards: per item, one h5py read per field."""

    def __init__(
        self, paths: list[str], base: np.ndarray, valid: np.ndarray, extra_paths: list[str] | None = None
    ):
        self.paths, self.base, self.valid = paths, base, valid  # valid: the global starts ShardSet draws from
        self.extra_paths = extra_paths  # Atari-PB also reads rtg and game_id per item, from HDF5 files
        self._pid = self._fields = None

    def __len__(self) -> int:
        return len(self.valid)

    def _open(self) -> list[dict]:
        if self._pid != os.getpid():  # files are opened lazily, once in each worker process
            files = [h5py.File(p, "r") for p in self.paths]
            self._fields = [{k: f[k] for k in ("observation", "action", "reward", "terminal")} for f in files]
            for fields, p in zip(self._fields, self.extra_paths or []):
                extra = h5py.File(p, "r")
                fields.update(rtg=extra["rtg"], game_id=extra["game_id"])
            self._pid = os.getpid()
        return self._fields

    @staticmethod
    def _stack(obs, end: int) -> np.ndarray:
        lo = end - FRAMES
        if lo >= 0:
            return obs[lo:end]
        out = np.zeros((FRAMES, 84, 84), np.uint8)
        out[-lo:] = obs[0:end]
        return out

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        g = int(self.valid[idx])
        k = int(np.searchsorted(self.base, g, side="right")) - 1
        i, f, n = g - int(self.base[k]), self._open()[k], N_STEP
        item = {
            "obs": self._stack(f["observation"], i + 1),
            "next_obs": self._stack(f["observation"], i + n + 1),
            "action": f["action"][i : i + n],
            "reward": f["reward"][i : i + n],
            "terminal": f["terminal"][i : i + n],
        }
        if self.extra_paths:
            item["rtg"] = f["rtg"][i : i + 1]
            item["game_id"] = f["game_id"][i : i + 1]
        return {key: torch.tensor(v) for key, v in item.items()}  # as Atari-PB's access_file does


def batch_bytes(batch: dict[str, torch.Tensor]) -> int:
    return sum(v.numel() * v.element_size() for v in batch.values())


def loader_rate(loader, batches: int, warmup: int) -> dict:
    """Seconds to the first batch and steady seconds per batch of a loader, after `warmup` batches."""
    r = time_iter(lambda: iter(loader), batches, warmup)
    return {"first_s": r["first_s"], "s_per_batch": r["per_item_s"]}


def measure(o) -> dict:
    from atari_pb.data.sampler import ShardSet
    from atari_pb.data.stream import SampleSpec, ShardStream, make_loader

    root = sampler_shards(o.samples)
    ss = ShardSet(root)
    warm_page_cache([s.path for s in ss.shards])
    v = {"shards": len(ss.shards), "transitions": len(ss), "data_bytes": dir_bytes(root), "games": ss.games}

    log(f"ours: ShardSet.sample x {o.batches}")
    for i in range(3):
        ss.sample(BATCH, FRAMES, T_STEP, N_STEP, seed=10_000 + i)
    v["ours_s_per_batch"] = per_call(lambda i: ss.sample(BATCH, FRAMES, T_STEP, N_STEP, seed=i), o.batches)
    batch = ss.sample(BATCH, FRAMES, T_STEP, N_STEP, seed=0)
    v["ours_batch_bytes"] = batch_bytes(batch)
    v["ours_obs_bytes"] = batch["obs"].nbytes + batch["next_obs"].nbytes

    # what a DataLoader worker adds per batch before the trainer sees it: moving every tensor into shared memory
    share = []
    for i in range(10 if o.quick else 30):
        b = ss.sample(BATCH, FRAMES, T_STEP, N_STEP, seed=20_000 + i)
        t0 = time.perf_counter()
        for x in b.values():
            x.share_memory_()
        share.append(time.perf_counter() - t0)
    v["share_ms"] = 1e3 * sorted(share)[len(share) // 2]
    del b

    spec, v["loader"] = SampleSpec(frames=FRAMES, t_step=T_STEP, n_step=N_STEP), {}
    for w, kind in ((0, "inline"), (o.workers, "threads"), (o.workers, "processes")):
        log(f"ours: make_loader(ShardStream, num_workers={w}, {kind}) x {o.batches}")
        warm = 2 + 2 * w
        stream = ShardStream(ss, BATCH, spec, seed=0, num_steps=o.batches + warm)
        v["loader"][f"{w} {kind}"] = loader_rate(
            make_loader(stream, num_workers=w, processes=kind == "processes"), o.batches, warm
        )
        del stream

    valid = ss.valid_starts(FRAMES, T_STEP, N_STEP)
    extra_paths = []  # Atari-PB keeps rtg and game_id in HDF5 files of their own and reads them per item too
    for k in range(len(ss.shards)):
        path, (a, b) = OUT / f"atari_pb_fields_{root.name}_{k}.h5", (ss.base[k], ss.base[k + 1])
        with h5py.File(path, "w") as f:
            f["rtg"], f["game_id"] = ss.rtg[a:b], np.full(b - a, ss.shard_game_id[k])
        extra_paths.append(str(path))
    paths = [str(s.path) for s in ss.shards]
    ds, ds_full = (
        H5PerItemDataset(paths, ss.base, valid),
        H5PerItemDataset(paths, ss.base, valid, extra_paths),
    )
    v["baseline"] = {}
    for w in (0, o.workers):
        log(f"baseline: per-item h5py Dataset, DataLoader(num_workers={w}) x {o.baseline_batches}")
        loader = DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=w, drop_last=True)
        v["baseline"][str(w)] = loader_rate(loader, o.baseline_batches, 1 + 2 * w)
    log(f"baseline with Atari-PB's seven fields: DataLoader(num_workers=0) x {o.baseline_batches}")
    v["baseline_7_reads"] = loader_rate(
        DataLoader(ds_full, batch_size=BATCH, shuffle=True, drop_last=True), o.baseline_batches, 1
    )
    base_batch = next(iter(DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=0)))
    v["baseline_batch_bytes"] = batch_bytes(base_batch)
    v["baseline_obs_bytes"] = base_batch["obs"].nbytes + base_batch["next_obs"].nbytes

    # same content: the baseline's stacks for the starts ours drew, where ours zero-fills nothing
    d = ss.draw(64, frames=FRAMES, t_step=T_STEP, n_step=N_STEP, seed=123)
    ours_b, pos = ss.gather(d, frames=FRAMES, t_step=T_STEP), {int(g): j for j, g in enumerate(valid)}
    inside = [j for j, g in enumerate(d.start) if ss.episode_start[g] <= g - FRAMES + 1]
    v["same_stacks_checked"] = len(inside)
    v["same_stacks_agree"] = sum(
        bool(torch.equal(ds[pos[int(d.start[j])]]["obs"], ours_b["obs"][j, 0])) for j in inside
    )

    # memcpy bound: the bytes of one of our batches copied between preallocated arrays. Source and destination
    # (2 x ~14 MiB) fit in this CPU's L3: a cache-speed bound; the DRAM variant copies successive batch-sized
    # pieces of a 1 GiB source instead.
    reps, n = (50 if o.quick else 200), v["ours_batch_bytes"]
    src, dst = np.full(n, 7, dtype=np.uint8), np.empty(n, dtype=np.uint8)
    np.copyto(dst, src)
    v["memcpy_s_per_batch"] = per_call(lambda i: np.copyto(dst, src), reps)
    big = np.full(((1 << 30) // n, n), 7, dtype=np.uint8)
    v["memcpy_dram_s_per_batch"] = per_call(lambda i: np.copyto(dst, big[i % len(big)]), reps)

    # the copies a batch really makes: 2 x 256 random 4-frame windows, from anonymous in-RAM copies of the
    # shards (no page cache, no memory map) into one preallocated batch
    in_ram = [np.array(m) for m in ss.maps]
    dst_obs = np.empty((2, BATCH, FRAMES, 84, 84), np.uint8)

    def copy_windows(i: int) -> None:
        d = ss.draw(BATCH, frames=FRAMES, t_step=T_STEP, n_step=N_STEP, seed=i)
        shard = (np.searchsorted(ss.base, d.start, side="right") - 1).tolist()
        for b, (k, j) in enumerate(zip(shard, (d.start - ss.base[shard]).tolist())):
            dst_obs[0, b] = in_ram[k][j - FRAMES + 1 : j + 1] if j >= FRAMES - 1 else 0
            dst_obs[1, b] = in_ram[k][j + N_STEP - FRAMES + 1 : j + N_STEP + 1]

    v["stack_copies_s_per_batch"] = per_call(copy_windows, reps)
    in_ram.clear()

    sps = {k: BATCH / x["s_per_batch"] for k, x in v["loader"].items()}
    base0, basew = (BATCH / v["baseline"][w]["s_per_batch"] for w in ("0", str(o.workers)))
    ours = BATCH / v["ours_s_per_batch"]
    v.update(
        ours_samples_per_s=ours, loader_samples_per_s=sps, baseline_samples_per_s={"0": base0, "w": basew}
    )
    v.update(
        ours_over_base_0=ours / base0,
        loader_over_base_0=sps["0 inline"] / base0,
        threads_over_base_w=sps[f"{o.workers} threads"] / basew,
        procs_over_base_w=sps[f"{o.workers} processes"] / basew,
        ours_over_base_7_reads=ours * v["baseline_7_reads"]["s_per_batch"] / BATCH,
        of_stack_copies_bound=ours * v["stack_copies_s_per_batch"] / BATCH,
        of_memcpy_bound=ours * v["memcpy_s_per_batch"] / BATCH,
        of_memcpy_dram_bound=ours * v["memcpy_dram_s_per_batch"] / BATCH,
    )
    return v


def setup(v: dict, o) -> list[str]:
    mib = lambda k: v[k] / 2**20  # noqa: E731
    return [
        f"Shards: {v['shards']} shards x {o.samples:,} transitions = {v['transitions']:,} transitions, "
        f"{mib('data_bytes'):,.0f} MiB, ingested from real ALE frames ({', '.join(v['games'])}); in the page cache.",
        f"Batch: {BATCH} samples, frames={FRAMES}, t_step={T_STEP}, n_step={N_STEP}: {mib('ours_batch_bytes'):.1f} MiB "
        f"delivered per batch by ours ({mib('ours_obs_bytes'):.1f} MiB of it obs + next_obs).",
        f"Timed: {o.batches} batches for ours, {o.baseline_batches} for the baseline, after warm-up batches, split into "
        f"{ROUNDS} consecutive rounds; the median round is reported. Loader rows exclude start-up (shown separately).",
    ]


def tables(v: dict, o) -> list[Table]:
    def row(label: str, workers, x) -> list:
        s, first = (x["s_per_batch"], x["first_s"]) if isinstance(x, dict) else (x, "-")
        return [label, workers, BATCH / s, s * 1e3, first]

    w, g = o.workers, ">= 10x"
    rows = [row("ours: ShardSet.sample (this process)", "-", v["ours_s_per_batch"])]
    for key, x in v["loader"].items():
        n, kind = key.split()
        rows.append(row(f"ours: make_loader(ShardStream), num_workers={n} ({kind})", int(n), x))
    rows += [
        row(f"baseline: per-item h5py, DataLoader num_workers={n}", int(n), x)
        for n, x in v["baseline"].items()
    ]
    rows += [
        row(
            "baseline: Atari-PB's 7 reads per item (+ rtg, game_id), num_workers=0", 0, v["baseline_7_reads"]
        ),
        row("bound: np.copyto of one batch's bytes (L3-resident)", "-", v["memcpy_s_per_batch"]),
        row(
            "bound: the batch's 512 random 28 KB stack copies, from in-RAM arrays",
            "-",
            v["stack_copies_s_per_batch"],
        ),
        row("bound: the same, source streamed from a 1 GiB array (DRAM)", "-", v["memcpy_dram_s_per_batch"]),
    ]
    ratios = [
        ["ours in-process / baseline num_workers=0", v["ours_over_base_0"], g],
        ["ours make_loader num_workers=0 / baseline num_workers=0", v["loader_over_base_0"], g],
        [f"ours make_loader {w} threads / baseline {w} worker processes", v["threads_over_base_w"], g],
        [
            f"ours make_loader {w} worker processes / baseline {w} worker processes",
            v["procs_over_base_w"],
            "",
        ],
        ["ours in-process / baseline with Atari-PB's 7 reads, num_workers=0", v["ours_over_base_7_reads"], g],
        [
            "ours in-process / bound of the batch's random stack copies (in RAM)",
            v["of_stack_copies_bound"],
            "",
        ],
        ["ours in-process / memcpy bound (L3-resident)", v["of_memcpy_bound"], ""],
        ["ours in-process / memcpy bound (DRAM source)", v["of_memcpy_dram_bound"], ""],
    ]
    return [
        Table("Throughput", "loader | workers | samples/s | ms/batch | s to 1st batch", rows),
        Table("Ratios", "ratio | value | goal", ratios),
    ]


def interpret(v: dict, o, m: dict) -> list[str]:
    w, lw, bw = o.workers, v["loader_samples_per_s"], v["baseline_samples_per_s"]
    ours_ms, copies_ms = v["ours_s_per_batch"] * 1e3, v["stack_copies_s_per_batch"] * 1e3
    inline, threads, procs = lw["0 inline"], lw[f"{w} threads"], lw[f"{w} processes"]
    extra = (
        (v["ours_batch_bytes"] - v["ours_obs_bytes"]) / 1024,
        (v["baseline_batch_bytes"] - v["baseline_obs_bytes"]) / 1024,
    )
    lines = [
        f"In-process, ours takes {ours_ms:.2f} ms a batch; the batch's {2 * BATCH} random 4-frame window copies alone, "
        f"from in-RAM arrays, take {copies_ms:.2f} ms ({copies_ms / ours_ms:.0%} of it), at "
        f"{v['memcpy_s_per_batch'] / v['stack_copies_s_per_batch']:.2f}x the speed of a cache-resident memcpy.",
        f"With an idle consumer, {w} prefetch threads deliver {fmt(threads)} samples/s, {threads / inline:.2f}x building "
        f"batches inline ({fmt(inline)})"
        + ("; their GIL contention shows when nothing else runs." if threads < inline else "."),
        f"{w} worker processes deliver {fmt(procs)} samples/s: every {v['ours_batch_bytes'] / 2**20:.0f} MiB batch is "
        f"copied into shared memory ({v['share_ms']:.1f} ms per batch for `share_memory_()` alone, vs {ours_ms:.1f} ms "
        "to sample it)"
        + (
            ", which is why `make_loader` uses threads unless asked for processes."
            if procs < threads
            else "."
        ),
        f"With {w} workers the baseline makes {bw['w'] / bw['0']:.2f}x its 0-worker rate on {m['cores']} cores "
        f"({fmt(bw['0'])} samples/s with 0 workers, {fmt(bw['w'])} with {w}): its collate also writes each batch into "
        "shared memory.",
        f"Besides the two observation stacks, ours returns {extra[0]:.1f} KiB per batch (n-step return, done, "
        f"return-to-go, game id, offset, index) vs the baseline's {extra[1]:.1f} KiB of raw action/reward/terminal "
        "slices, and zero-fills frames from an earlier episode; the baseline does only the reads.",
        f"Both read the same transitions: for {v['same_stacks_checked']} drawn starts whose stack lies in one episode, "
        f"the baseline's obs equal ours in {v['same_stacks_agree']}.",
    ]
    if w >= m["cores"]:
        lines.append(
            f"The machine has {m['cores']} cores: with {w} workers the trainer process shares them with the workers."
        )
    return lines


SPEC = Spec(
    name="sampler",
    title="Sampler throughput",
    doc=__doc__,
    measures=f"samples/s of `ShardSet.sample` ({BATCH} samples of 4-frame stacks, n_step 3) in-process and through "
    "`make_loader` (inline, threads, processes), against memcpy bounds of the same bytes.",
    baseline="Atari-PB's per-item h5py `Dataset` (one HDF5 read per field per item; 5 and 7 fields) through "
    "`DataLoader(batch_size=256, shuffle=True)`, 0 and 2 workers.",
    measure=measure,
    setup=setup,
    tables=tables,
    interpret=interpret,
    options={
        "batches": Opt(1000, 50, "timed batches for ours"),
        "baseline_batches": Opt(100, 10, "timed batches for the baseline"),
        "workers": Opt(2, None, "DataLoader workers of the multi-worker rows"),
        "samples": Opt(5_000, None, "transitions per shard"),
    },
    goals=[
        Goal("ours/baseline samples/s, 0 workers (5 reads per item)", "ours_over_base_0 >= 10"),
        Goal(
            "ours/baseline samples/s, 0 workers (Atari-PB's 7 reads per item)", "ours_over_base_7_reads >= 10"
        ),
        Goal("ours ({workers} threads)/baseline ({workers} workers) samples/s", "threads_over_base_w >= 10"),
    ],
    headlines=[("ours in-process / memcpy bound (L3-resident)", "of_memcpy_bound", "")],
)

if __name__ == "__main__":
    SPEC.main()
