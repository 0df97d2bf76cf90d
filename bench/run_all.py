"""Run every benchmark and rewrite BENCHMARKS.md from their results.

    .venv/bin/python -m bench.run_all            # the full suite (what BENCHMARKS.md quotes)
    .venv/bin/python -m bench.run_all --quick    # a fast smoke run (writes BENCHMARKS.md too, marked quick)
    .venv/bin/python -m bench.run_all --render   # rewrite BENCHMARKS.md from bench/out/*.json, run nothing

Each benchmark runs in its own process (`python -m bench.<name>`) and leaves bench/out/<name>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import OUT, fmt, log, machine_info, render_markdown

BENCHES = ("ingest", "sampler", "memory", "train", "env", "prend", "rainbow")
REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "BENCHMARKS.md"

TITLES = {
    "ingest": "Ingest: a checkpoint prefix vs decompressing the whole file",
    "sampler": "Sampler throughput",
    "memory": "Peak memory",
    "train": "Pre-training throughput and data-wait share",
    "env": "Environment: evaluation rollouts vs gymnasium and raw ALE",
    "prend": "PPO exploration with RND and PreND intrinsic rewards",
    "rainbow": "Rainbow fine-tuning throughput (tiny preset, CPU)",
}


def run(names: list[str], quick: bool) -> dict[str, float]:
    seconds = {}
    for name in names:
        cmd = [sys.executable, "-m", f"bench.{name}"] + (["--quick"] if quick else [])
        log(f"running {' '.join(cmd[1:])}")
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, check=True)
        seconds[name] = time.perf_counter() - t0
    return seconds


def _shown(goal: dict) -> str:
    return goal.get("display") or f"{fmt(goal['value'])}x"


def _goal_lines(res: dict) -> list[str]:
    return [
        f"- Goal: {g['what']} {g['goal']}. Measured **{_shown(g)}**: "
        + ("met." if g["met"] else "**not met**.")
        for g in res.get("goals", [])
    ]


def ingest_notes(res: dict) -> list[str]:
    v = res["values"]
    lines = _goal_lines(res)
    lines.append(
        f"- Why it is faster: ours decompresses {v['prefix']:,} of {v['frames']:,} frames "
        f"({v['prefix'] / v['frames']:.1%} of the stream) and never holds more than a 2,048-frame block of them (plus the small scalar files, read whole); the baseline "
        "decompresses and materialises the whole array first. The ratio therefore scales with file length / prefix; "
        "with the 100k-frame file of `--quick` it is about 10x smaller than with the 1M-frame file."
    )
    lines.append(
        f"- Per-core efficiency of our prefix read is {v['efficiency_vs_prefix_zlib']:.2f} of raw zlib on the same "
        f"bytes ({v['efficiency_vs_whole_file_zlib']:.2f} of the whole-file zlib rate): decompression dominates and the "
        "remaining gap is Python-level buffer handling (zlib output is produced as new bytes objects and copied into "
        "the numpy block)."
    )
    sp = v["ingest_speedup"]
    w = [k for k in v["ingest_wall_s_by_workers"] if k != "1"]
    cores = res["machine"]["cores"]
    lines.append(
        f"- Parallel ingest with {w[0] if w else 2} workers gave {sp:.2f}x the throughput of 1 worker on {cores} cores"
        + (
            ": short of linear because starting the spawned worker processes is a fixed cost that is a large share "
            "of a run this short, and the parent process (manifest writes) and the disk (fsync) are shared."
            if sp < 0.9 * min(cores, int(w[0]) if w else 2)
            else "."
        )
    )
    ratio = v["compressed_bytes"] and (v["frames"] * 84 * 84) / v["compressed_bytes"]
    lines.append(
        f"- The source compresses {ratio:.0f}:1 (random-policy frames). zlib's output rate depends on that ratio, so "
        "absolute MB/s on published DQN-Replay files will differ; the prefix-vs-whole ratio depends mainly on "
        "file length / prefix length."
    )
    return lines


def sampler_notes(res: dict) -> list[str]:
    v = res["values"]
    lines = _goal_lines(res)
    lw, bw = v["loader_samples_per_s"], v["baseline_samples_per_s"]
    threads = next((k for k in lw if k.endswith("threads")), None)
    procs = next((k for k in lw if k.endswith("processes")), None)
    lines.append(
        f"- In-process, ours takes {v['ours_ms_per_batch']:.2f} ms a batch. Most of it is the copies themselves: the "
        "same 512 random 4-frame windows copied from in-RAM arrays (no memory map) are the 'random stack copies' "
        "bound above, and copying frames scattered over hundreds of MB runs far below a cache-resident memcpy. "
        "The rest is the per-sample Python loop, the draw and the n-step returns."
    )
    if threads and procs:
        lines.append(
            f"- With an idle consumer, prefetch threads ({fmt(float(lw[threads]))} samples/s) add GIL contention over "
            f"building batches inline; their use is overlapping the trainer's compute, which releases the GIL "
            "(the training benchmark measures the data-wait share). Worker processes are slower still "
            f"({fmt(float(lw[procs]))} samples/s): every {v['ours_batch_bytes'] / 2**20:.0f} MiB batch is copied into "
            f"shared memory ({v['share_ms']:.1f} ms per batch for `share_memory_()` alone), which is why "
            "`make_loader` uses threads unless asked for processes."
        )
    w = max((k for k in bw if k != "0"), key=int, default=None)
    if w is not None:
        lines.append(
            f"- Workers do not rescue the baseline on {os.cpu_count()} cores ({fmt(float(bw['0']))} samples/s with 0 "
            f"workers, {fmt(float(bw[w]))} with {w}): its collate also writes each batch into shared memory."
        )
    lines.append(
        "- The baseline with Atari-PB's seven per-item reads is the pattern the goal names; the five-read variant "
        "(no rtg, no game id, which ours still delivers) is shown as the stricter comparison. Timings on this "
        "machine vary by 10-30% from run to run."
    )
    return lines


def memory_notes(res: dict) -> list[str]:
    v = res["values"]
    lines = [
        f"- Ingest: the whole-file baseline peaks at {fmt(v['ratio_baseline_over_ours_peak_rss'])}x our 10k-prefix "
        "ingest; ours is bounded by its 2,048-frame block plus the scalar arrays, independent of the file's length, and "
        "the 100k prefix costs about the same as the 10k one."
    ]
    s = v["sampler"]
    if v["mode"] == "cgroup":
        lines.append("- Sampler: ran inside a cgroup v2 with memory.max (see setup) over a larger shard set.")
    else:
        small, large = s["small_confined"], s["large_confined"]
        grow = large["status"]["RssAnon"] - small["status"]["RssAnon"]
        more = large["transitions"] - small["transitions"]
        lines.append(
            "- Sampler: **no cgroup v2 memory limit was available here** (see setup), so what is measured is (1) that "
            f"the sampler runs over a shard set {v['large_set_bytes'] / v['limit_bytes']:.1f}x larger than a "
            f"{v['limit_bytes'] / 2**20:,.0f} MiB cap on its private writable memory (RLIMIT_DATA), at "
            f"{fmt(large['samples_per_s'])} samples/s vs {fmt(s['large_free']['samples_per_s'])} without the cap "
            "(medians of the child runs; this machine's timings vary by tens of percent from run to run), while "
            "loading the same observations whole fails under that cap; and (2) that its anonymous RSS is "
            f"{small['status']['RssAnon'] / 2**20:,.0f} MiB for the small set and {large['status']['RssAnon'] / 2**20:,.0f} MiB "
            f"for the large one: {grow / 2**20:.0f} MiB more for {more:,} more transitions "
            f"({grow / max(more, 1):.0f} bytes each: the per-transition arrays ShardSet keeps in memory and the "
            "temporaries that build them), "
            "while file-backed RSS grows with the observation pages touched. Throughput over the large set is "
            f"{large['samples_per_s'] / small['samples_per_s']:.2f}x that over the small one. How the sampler behaves when "
            "the page cache itself is squeezed was not measured."
        )
    return lines


def train_notes(res: dict) -> list[str]:
    v = res["values"]
    lines = _goal_lines(res)
    ratios = [x["ratio"] for x in v.values()]
    lines.append(
        f"- The runner reaches {min(ratios):.2f}-{max(ratios):.2f} of the resident-batch rate: with prefetch threads "
        "the data path costs the trainer next to nothing on CPU, where the model's compute dominates (the ratios "
        "above 1 are run-to-run noise: on resnet50 both measurements cover only a few steps)."
    )
    lines.append(
        "- No GPU was lent to the session that measured this: bf16 + torch.compile + channels_last vs fp32 eager "
        "for resnet50 at batch 512 is still to be measured on one: `python -m bench.train --presets resnet50 "
        "--batch-size 512 trainer.bf16=true trainer.compile=true trainer.channels_last=true` against the same "
        "command without the three overrides."
    )
    return lines


def env_notes(res: dict) -> list[str]:
    v, sps = res["values"], res["values"]["agent_steps_per_s"]
    n, nv = v["main_envs"], v["vector_envs"]
    return _goal_lines(res) + [
        f"- With a constant policy (env cost alone) ours steps {v['ours_over_gym_single_constant']:.2f}x gymnasium's "
        f"wrapper stack on one env and {v['ours_over_gym_vector_constant']:.2f}x its SyncVectorEnv of {nv}.",
        f"- With the tiny encoder as the policy, the policy calls take {v['policy_share_of_rollout_tiny']:.0%} of our "
        f"rollout time, so the gain is {v['ours_over_gym_single_tiny']:.2f}x (vs one env) and "
        f"{v['ours_over_gym_vector_tiny']:.2f}x (vs SyncVectorEnv): on a CPU the encoder bounds evaluation.",
        f"- Per core, ours runs at {v['ours_1_thread_constant_over_raw_ale']:.2f} of raw ALE, which grabs no screen and "
        f"does no max-pool/resize/stacking; {v['ale_threads']} ALE threads gave "
        f"{sps[f'ours|constant|{n}'] / sps[f'ours, 1 ALE thread|constant|{n}']:.2f}x one thread on this shared "
        f"{res['machine']['cores']}-core machine.",
        "- Making and seeding the envs ('setup s') is excluded from steps/s: a seeded reset costs ale_py ~0.1-0.2 s "
        "per env, once per evaluation.",
    ]


def prend_notes(res: dict) -> list[str]:
    v, split = res["values"], res["values"]["split"]
    rnd, prend = split["PPO + RND"], split["PPO + PreND (tiny)"]
    return [
        f"- RND costs {1 - v['rnd_over_ppo']:.0%} of PPO's throughput and PreND (tiny) {1 - v['prend_over_ppo']:.0%}. "
        f"RND's extra time is its predictor's share of the update ({rnd['update_s'] - split['PPO']['update_s']:+.2f} s an "
        f"update) plus two small CNNs over the rollout ({rnd['intrinsic_s']:.2f} s); PreND's is the frozen backbone "
        f"over the rollout's frames ({prend['intrinsic_s']:.2f} s), run once: its features feed the reward and every "
        "predictor update, which only trains the neck and head.",
        f"- PPO itself runs at {v['ppo_over_env_only']:.2f} of bare env stepping: on a CPU the policy's 4 epochs of "
        "forward and backward passes, not the emulator, bound the learner.",
    ]


def rainbow_notes(res: dict) -> list[str]:
    v = res["values"]
    fr, act = v["loops"]["frozen"], v["loops"]["acting"]
    inside = v["inside_update_ms"]
    update_ms = inside.get("update", 1e3 / v["isolated_updates_per_s"]["frozen"])
    fwd = inside["backbone_forward_2x32"]
    fwd_share = (
        f"is {fwd / update_ms:.0%}"
        if fwd < 0.97 * update_ms
        else f"takes about all of it ({fwd:.0f} ms alone; timed on a busy machine)"
    )
    lines = [
        f"- The loop adds little to its parts: with the reference replay ratio it makes "
        f"{v['loop_over_isolated_updates_frozen']:.2f} of the updates/s of `agent.update` alone (frozen backbone; "
        f"{v['loop_over_isolated_updates_e2e']:.2f} e2e), and `agent.update` takes "
        f"{v['update_share_of_loop_frozen']:.0%} of the frozen loop's time. Env, action, replay and the loop's own "
        f"Python come to {1e3 / fr['steps_per_s'] - fr['ms_per_step']['agent.update']:.1f} ms of its "
        f"{1e3 / fr['steps_per_s']:.0f} ms per agent step.",
        f"- Inside a frozen update ({update_ms:.0f} ms alone), the backbone's forward over the augmented obs and "
        f"next_obs (2 x 32 stacks) {fwd_share} and the augmentation {inside['augment_2x32'] / update_ms:.0%}; "
        "neck, C51 head, projection, Adam and EMA share the rest. Augmenting before the backbone means its "
        "features cannot be cached per frame: at 2 updates per agent step the backbone sees 128 stacks per agent "
        "step, against 1 to act.",
        f"- e2e makes {v['e2e_over_frozen_loop_updates']:.2f}x the frozen loop's updates/s "
        f"({v['e2e_over_frozen_isolated_updates']:.2f}x alone): its online pass adds a backward through the backbone "
        f"(forward + backward on 32 stacks: {inside['backbone_forward_backward_32']:.0f} ms) and next_obs goes "
        "through both the online and the EMA target backbones.",
        f"- Acting alone (no updates) runs at {v['acting_over_raw_env']:.2f} of bare env stepping: `agent.act` on "
        f"one stack takes {act['ms_per_call']['agent.act']:.1f} ms against {act['ms_per_call']['env.step']:.2f} ms "
        "for `env.step`.",
        "- Absolute rates of the frozen update moved by up to 30% between runs on this virtual machine even with "
        "no other process busy, and by up to 2x with one; the e2e update, which gains less from the second "
        "thread, moved less, so e2e / frozen moves with the frozen rate. Where the two bracketing runs of "
        "`agent.update` alone (throughput table) differ much, the machine changed during the loop and its "
        "loop / alone ratio is off by as much.",
    ]
    threads = v["isolated_updates_per_s_by_threads"]
    if {"1", "2"} <= threads.keys():
        one, two = threads["1"], threads["2"]
        line = (
            f"- Torch threads: 2 give {two['frozen'] / one['frozen']:.2f}x the updates/s of 1 (frozen; "
            f"{two['e2e'] / one['e2e']:.2f}x e2e), and `agent.act` on one stack takes {two['act_ms']:.1f} ms on 2 "
            f"against {one['act_ms']:.1f} ms on 1"
        )
        if two["act_ms"] > one["act_ms"]:
            line += (
                ": with OMP_WAIT_POLICY=PASSIVE (atari_pb's default) each parallel op of a one-stack forward "
                "wakes a sleeping thread, which can cost more than the op"
            )
        if "act_ms_active" in two and "act_ms_active" in one:
            spin = f"{two['act_ms_active']:.1f} ms on 2 threads and {one['act_ms_active']:.1f} ms on 1"
            line += (
                f". With spinning threads (OMP_WAIT_POLICY=ACTIVE, in a child process) it takes {spin}."
                if two["act_ms_active"] < two["act_ms"]
                else f". Spinning threads (OMP_WAIT_POLICY=ACTIVE, in a child process) did not help in this run "
                f"({spin}): next to other busy processes a spinning thread keeps a core from them and they from "
                "it, the reason atari_pb waits passively."
            )
        else:
            line += "."
        lines.append(line)
    return lines


NOTES = {
    "ingest": ingest_notes,
    "sampler": sampler_notes,
    "memory": memory_notes,
    "train": train_notes,
    "env": env_notes,
    "prend": prend_notes,
    "rainbow": rainbow_notes,
}


def render(seconds: dict[str, float] | None = None) -> str:
    results = {}
    for name in BENCHES:
        path = OUT / f"{name}.json"
        if path.is_file():
            results[name] = json.loads(path.read_text())
    if not results:
        raise SystemExit("no results in bench/out/; run the benchmarks first")
    m = next(iter(results.values()))["machine"] if results else machine_info()
    quick = any(r.get("quick") for r in results.values())
    lines = [
        "# Benchmarks",
        "",
        "Generated by `bench/run_all.py` from `bench/out/*.json`; do not edit by hand. Ratios against a baseline "
        "measured in the same run are what we quote; absolute times are context for this machine only.",
        "",
    ]
    if quick:
        lines += [
            "> **These are `--quick` smoke-run numbers** (100k-frame source, few repeats), not the full suite.",
            "",
        ]
    lines += [
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores; RAM {m['ram_gib']} GiB; {m['os']}",
        f"- Python {m['python']}, numpy {m['numpy']}, h5py {m['h5py']} (HDF5 {m['hdf5']}), torch {m['torch']}, zlib {m['zlib']}",
        f"- Date: {m['date']}",
        "",
        "## Reproduce",
        "",
        "```",
        "make bench                       # = .venv/bin/python -m bench.run_all",
        ".venv/bin/python -m bench.run_all [--quick]",
        ".venv/bin/python -m bench.ingest | bench.sampler | bench.memory | bench.train | bench.env | bench.prend | bench.rainbow  [--quick] [--help for options]",
        "```",
        "",
        "The first run collects 100,000 real frames with ale-py (about 40 s) and writes the 1M-frame source file "
        "(a few minutes); both are cached in `bench/out/` (git-ignored) and reused. Every timing is taken with its "
        "input in the page cache.",
        "",
        "## Summary",
        "",
        "| benchmark | ratio quoted | value | goal | met |",
        "|---|---|---:|---:|---|",
    ]
    for name, res in results.items():
        for g in res.get("goals", []):
            lines.append(
                f"| {name} | {g['what']} | {_shown(g)} | {g['goal']} | {'yes' if g['met'] else 'no'} |"
            )
    if "ingest" in results:
        v = results["ingest"]["values"]
        lines.append(
            f"| ingest | per-core efficiency: our prefix read / raw zlib on the same bytes | {fmt(v['efficiency_vs_prefix_zlib'])} | - | - |"
        )
    if "sampler" in results:
        v = results["sampler"]["values"]
        lines.append(
            f"| sampler | ours in-process / memcpy bound (L3-resident) | {fmt(v['fraction_of_memcpy_bound'])} | - | - |"
        )
    if "memory" in results:
        v = results["memory"]["values"]
        lines.append(
            f"| memory | baseline / ours peak RSS, ingest of a 10k prefix | {fmt(v['ratio_baseline_over_ours_peak_rss'])}x | - | - |"
        )
    lines.append("")
    for name, res in results.items():
        took = (seconds or {}).get(name, res.get("seconds"))
        lines += [
            f"## {TITLES[name]}",
            "",
            f"`.venv/bin/python -m bench.{name}` — took {took:.0f} s in this run.",
            "",
        ]
        lines += [f"- {s}" for s in res.get("setup", [])]
        lines.append("")
        for tbl in res["tables"]:
            lines += [render_markdown(tbl), ""]
        lines += ["**Notes**", ""] + NOTES[name](res) + [f"- {n}" for n in res.get("notes", [])] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    p.add_argument(
        "--only", nargs="+", choices=BENCHES, help="run only these (the others' last results are kept)"
    )
    p.add_argument("--render", action="store_true", help="only rewrite BENCHMARKS.md from bench/out/*.json")
    args = p.parse_args(argv)
    seconds = None
    if not args.render:
        seconds = run(list(args.only or BENCHES), args.quick)
    DOC.write_text(render(seconds))
    log(f"wrote {DOC}" + (f" (benchmarks took {sum(seconds.values()):.0f} s)" if seconds else ""))


if __name__ == "__main__":
    main()
