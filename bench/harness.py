"""The benchmark harness. A benchmark is a `Spec` (bench/<name>.py): what it measures, its baseline in the
same run, its options with their --quick values, a `measure` function that returns plain values, its
setup lines and tables (built from those values), its goals and the sentences that interpret its numbers.
The harness does the rest: command line, timing helpers, the machine description, the JSON record in
bench/out/<name>.json, the console report, and BENCHMARKS.md (see `render_doc`, bench/run_all.py and
bench/README.md).

Nothing here imports torch or atari_pb at import time: each benchmark decides what its process loads first
(OMP_WAIT_POLICY is read once, when torch loads OpenMP).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import operator
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
OUT = BENCH / "out"  # every run's record and cached data (git-ignored)
RESULTS = BENCH / "results"  # the published records BENCHMARKS.md is generated from (committed)
NOTES = BENCH / "notes"  # hand-written notes, one file per benchmark, included verbatim
DOC = REPO / "BENCHMARKS.md"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- machine
def _proc_line(path: str, key: str) -> str | None:
    try:
        return next(
            (ln.split(":", 1)[1].strip() for ln in Path(path).read_text().splitlines() if ln.startswith(key)),
            None,
        )
    except OSError:
        return None


def machine() -> dict:
    """CPU, cores, memory, GPU, library versions and torch's threads of this process, now."""
    import h5py
    import numpy as np
    import torch

    mem = _proc_line("/proc/meminfo", "MemTotal:")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": _proc_line("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": round(int(mem.split()[0]) / 2**20, 1) if mem else None,
        "gpu": gpu,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "zlib": zlib.ZLIB_RUNTIME_VERSION,
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """Memory lines of /proc/<pid>/status in bytes: VmHWM, VmRSS, RssAnon, RssFile, RssShmem, VmData..."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key.startswith(("Vm", "Rss")) and rest.strip().endswith("kB"):
            out[key] = int(rest.split()[0]) * 1024
    return out


# ----------------------------------------------------------------------------------------------- timing
def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def repeat(
    fn: Callable[[], Any], n: int, warmup: int = 0, before: Callable[[], Any] | None = None
) -> list[float]:
    """Seconds of `n` calls of fn, after `warmup` untimed ones; `before` runs untimed ahead of each call."""
    times = []
    for k in range(warmup + n):
        if before is not None:
            before()
        dt, _ = timed(fn)
        if k >= warmup:
            times.append(dt)
    return times


def med(xs: Iterable[float]) -> float:
    return float(statistics.median(xs))


def spread(xs: Sequence[float]) -> float:
    """(max - min) / median: how far apart the repeats of one measurement fell."""
    return (max(xs) - min(xs)) / med(xs) if xs and med(xs) else 0.0


def stats(xs: Sequence[float]) -> dict:
    return {"median": med(xs), "min": min(xs), "max": max(xs), "spread": spread(xs), "n": len(xs)}


ROUNDS = 5  # per_call and time_iter split the timed calls into this many consecutive rounds


def median_round(stamps: Sequence[float], rounds: int = ROUNDS) -> float:
    """Seconds per call: the median over `rounds` consecutive groups of the calls between the time stamps."""
    n = len(stamps) - 1
    k = max(1, min(rounds, n))
    edges = [round(i * n / k) for i in range(k + 1)]
    return med((stamps[b] - stamps[a]) / (b - a) for a, b in zip(edges, edges[1:]))


def per_call(fn: Callable[[int], Any], calls: int, rounds: int = ROUNDS) -> float:
    """Seconds per call of fn(i), i = 0..calls-1: the median round (see median_round)."""
    stamps = [time.perf_counter()]
    for i in range(calls):
        fn(i)
        stamps.append(time.perf_counter())
    return median_round(stamps, rounds)


def time_iter(make: Callable[[], Iterator], items: int, warmup: int) -> dict:
    """Seconds from making an iterator to its first item, then steady seconds per item after `warmup`
    items (median round)."""
    t0 = time.perf_counter()
    it = make()
    next(it)
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        next(it)
    stamps = [time.perf_counter()]
    for _ in range(items):
        next(it)
        stamps.append(time.perf_counter())
    del it
    return {"first_s": first, "per_item_s": median_round(stamps)}


def interleave(configs: dict, rounds: int, describe: Callable[[Any, Any], str] | None = None) -> dict:
    """Run every config once a round, rounds after rounds, so that all see the same states of the
    machine; returns {key: [result of round 1, round 2, ...]}."""
    out: dict = {k: [] for k in configs}
    for r in range(rounds):
        for key, fn in configs.items():
            out[key].append(fn())
            if describe:
                log(f"round {r + 1}/{rounds} {describe(key, out[key][-1])}")
    return out


def warm_page_cache(paths: Iterable[Path]) -> None:
    """Read files once so that every timed pass sees them in the page cache (all timings here are warm)."""
    buf = bytearray(1 << 24)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def run_child(
    name: str, payload: dict, env: dict | None = None, preexec_fn=None, python: str | None = None
) -> dict:
    """`python -m bench.<name> --child JSON` (the spec's `child`) in a fresh process, by default with this
    interpreter: its JSON answer plus ru_maxrss (bytes) of that child alone (os.wait4), or {"failed": True, ...}."""
    cmd = [python or sys.executable, "-m", f"bench.{name}", "--child", json.dumps(payload)]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=err, preexec_fn=preexec_fn, cwd=REPO, env=env
        )
        stdout = proc.stdout.read()
        proc.stdout.close()
        _pid, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not the sum of all children
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read().decode()
    if proc.returncode != 0:
        return {"failed": True, "returncode": proc.returncode, "stderr": stderr[-2000:], **payload}
    res = json.loads(stdout.decode().strip().splitlines()[-1])
    res["ru_maxrss"] = usage.ru_maxrss * 1024
    return res


# ------------------------------------------------------------------------------------- tables and goals
def fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, str):
        return x
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.{max(digits - 1, 0)}f}"
    return f"{x:.{digits}g}"


@dataclass
class Table:
    """A result table: headers as a list or as one "a | b | c" string; cells formatted by `fmt`."""

    title: str
    headers: str | Sequence[str]
    rows: Sequence[Sequence[Any]]

    def record(self) -> dict:
        heads = self.headers.split(" | ") if isinstance(self.headers, str) else list(self.headers)
        return {"title": self.title, "headers": heads, "rows": [[fmt(c) for c in r] for r in self.rows]}


def render_text(tbl: dict) -> str:
    cells = [tbl["headers"], *tbl["rows"]]
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(tbl["headers"]))]
    lines = [tbl["title"]]
    for k, r in enumerate(cells):
        lines.append(
            "  "
            + "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
        )
        if k == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_markdown(tbl: dict) -> str:
    lines = [f"**{tbl['title']}**", "", "| " + " | ".join(tbl["headers"]) + " |"]
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(tbl["headers"]) - 1)) + "|")
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in tbl["rows"]]
    return "\n".join(lines)


OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


def shown(value: float, unit: str) -> str:
    return f"{value:.2%}" if unit == "%" else f"{fmt(value)}{unit}"


@dataclass(frozen=True)
class Goal:
    """A goal on one measured value, declared as "KEY OP TARGET", e.g. Goal("baseline/ours ingest wall time",
    "ratio_baseline_over_ours >= 20"): the harness reports met / not met from the number. unit "x" shows a
    ratio, "%" a share (a target of 0.05 is 5%). `what` may name options: "{workers} threads"."""

    what: str
    rule: str
    unit: str = "x"

    def check(self, values: dict, options: dict | None = None) -> dict:
        key, op, target = self.rule.split()
        v, t = values[key], float(target)
        goal = f"{op} {t:.0%}" if self.unit == "%" else f"{op} {t:g}{self.unit}"
        what = self.what.format(**(options or {}))
        return {
            "what": what,
            "key": key,
            "goal": goal,
            "value": v,
            "shown": shown(v, self.unit),
            "met": bool(OPS[op](v, t)),
        }


def goal_sentence(g: dict) -> str:
    return f"Goal: {g['what']} {g['goal']}. Measured **{g['shown']}**: " + (
        "met." if g["met"] else "**not met**."
    )


# ------------------------------------------------------------------------------------------------ specs
@dataclass(frozen=True)
class Opt:
    """A command-line option: its full-run value and its --quick value (None: the same)."""

    full: Any
    quick: Any = None
    help: str = ""
    type: Callable | None = None
    nargs: str | None = None
    positional: bool = False

    def value(self, quick: bool) -> Any:
        return self.quick if quick and self.quick is not None else self.full


@dataclass
class Spec:
    """One benchmark. `measure(o)` gets the options (o.quick and one attribute per option) and returns
    JSON-able values; `setup(v, o)` -> lines and `tables(v, o)` -> Tables describe them; `interpret(v, o,
    machine)` -> sentences computed from them; `goals` are checked against `values`; `headlines` are
    (label, key, unit) rows of the summary; `child(payload)` answers `--child JSON` (run_child)."""

    name: str
    title: str
    measures: str
    baseline: str
    measure: Callable[[SimpleNamespace], dict]
    setup: Callable[[dict, SimpleNamespace], list[str]]
    tables: Callable[[dict, SimpleNamespace], list[Table]]
    interpret: Callable[[dict, SimpleNamespace, dict], list[str]] = lambda v, o, m: []
    options: dict[str, Opt] = field(default_factory=dict)
    goals: Sequence[Goal] = ()
    headlines: Sequence[tuple[str, str, str]] = ()
    child: Callable[[dict], dict] | None = None
    doc: str = ""

    def parser(self) -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(
            prog=f"python -m bench.{self.name}",
            description=self.doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument(
            "--quick", action="store_true", help="a fast smoke run (its numbers are not the published ones)"
        )
        p.add_argument("--child", metavar="JSON", help=argparse.SUPPRESS)
        for key, opt in self.options.items():
            kind = opt.type or type(opt.full[0] if isinstance(opt.full, list) else opt.full)
            nargs = opt.nargs or ("+" if isinstance(opt.full, list) else None)
            when = "" if opt.quick is None else f"; --quick {opt.quick}"
            if opt.positional:
                p.add_argument(key, nargs=nargs, type=kind, default=opt.full, help=opt.help)
            else:
                p.add_argument(
                    "--" + key.replace("_", "-"),
                    type=kind,
                    nargs=nargs,
                    help=f"{opt.help} (default {opt.full}{when})",
                )
        return p

    def main(self, argv: Sequence[str] | None = None) -> dict | None:
        """Parse the command line, measure, print the report, write bench/out/<name>.json."""
        args = self.parser().parse_args(argv)
        if args.child:
            print(json.dumps(self.child(json.loads(args.child))))
            return None
        o = SimpleNamespace(
            quick=args.quick,
            **{
                k: getattr(args, k) if getattr(args, k) is not None else opt.value(args.quick)
                for k, opt in self.options.items()
            },
        )
        t0 = time.perf_counter()
        values = self.measure(o)
        rec = self.record(o, values, time.perf_counter() - t0)
        OUT.mkdir(parents=True, exist_ok=True)
        path = OUT / f"{self.name}.json"
        path.write_text(json.dumps(rec, indent=1) + "\n")
        print(render_text_record(self, rec))
        print(f"\nwrote {path} ({rec['seconds']:.0f} s)")
        return rec

    def record(self, o: SimpleNamespace, values: dict, seconds: float) -> dict:
        return {
            "name": self.name,
            "quick": o.quick,
            "options": {k: v for k, v in vars(o).items() if k != "quick"},
            "machine": machine(),
            "seconds": seconds,
            "setup": self.setup(values, o),
            "tables": [t.record() for t in self.tables(values, o)],
            "goals": [g.check(values, vars(o)) for g in self.goals],
            "values": values,
        }

    def goal_results(self, rec: dict) -> list[dict]:
        """The goals checked against the record's values (the record's own where a value is missing)."""
        v = rec["values"]
        if not all(g.rule.split()[0] in v for g in self.goals):
            return rec.get("goals", [])
        return [g.check(v, rec.get("options")) for g in self.goals]

    def sentences(self, rec: dict) -> list[str]:
        """Goal sentences and the spec's computed interpretation, from the record's numbers."""
        o = SimpleNamespace(quick=rec.get("quick", False), **rec.get("options", {}))
        return [goal_sentence(g) for g in self.goal_results(rec)] + self.interpret(
            rec["values"], o, rec["machine"]
        )


def render_text_record(spec: Spec, rec: dict) -> str:
    lines = [""] + [f"# {s}" for s in rec["setup"]]
    for tbl in rec["tables"]:
        lines += ["", render_text(tbl)]
    return "\n".join(lines + [""] + [f"- {s}" for s in spec.sentences(rec)])


# -------------------------------------------------------------------------------------- BENCHMARKS.md
def machine_line(m: dict) -> str:
    return (
        f"CPU: {m['cpu']}, {m['cores']} cores; RAM {m['ram_gib']} GiB; GPU: {m.get('gpu') or 'none'}; {m['os']}; "
        f"Python {m['python']}, numpy {m['numpy']}, h5py {m['h5py']} (HDF5 {m['hdf5']}), torch {m['torch']}, zlib {m['zlib']}"
    )


def notes_file(name: str) -> list[str]:
    path = NOTES / f"{name}.md"
    return path.read_text().rstrip().splitlines() if path.is_file() else []


def render_doc(specs: dict[str, Spec], records: dict[str, dict], source: str) -> str:
    """BENCHMARKS.md from the records: setup and tables as recorded, goals and the computed sentences from
    the recorded values; bench/notes/intro.md and bench/notes/<name>.md (hand-written) verbatim."""
    lines = ["# Benchmarks", ""]
    lines += [
        f"Generated by `python -m bench.run_all` from `{source}/*.json` and `bench/notes/*.md`; do not edit by hand.",
        "",
    ]
    quick = [n for n, r in records.items() if r.get("quick")]
    if quick:
        lines += [
            f"> **`--quick` smoke-run numbers** ({', '.join(quick)}): small inputs, few repeats; not the published ones.",
            "",
        ]
    lines += notes_file("intro") + ["", "## Machine", ""]
    by_machine: dict[str, list[str]] = {}
    for name, rec in records.items():
        by_machine.setdefault(machine_line(rec["machine"]), []).append(f"{name} ({rec['machine']['date']})")
    lines += [f"- {m}. Measured there: {', '.join(names)}." for m, names in by_machine.items()]
    lines += [
        "",
        "## Summary",
        "",
        "| benchmark | ratio quoted | value | goal | met |",
        "|---|---|---:|---:|---|",
    ]
    for name, rec in records.items():
        for g in specs[name].goal_results(rec):
            lines.append(
                f"| {name} | {g['what']} | {g['shown']} | {g['goal']} | {'yes' if g['met'] else 'no'} |"
            )
    for name, rec in records.items():
        for label, key, unit in specs[name].headlines:
            if key in rec["values"]:
                lines.append(f"| {name} | {label} | {shown(rec['values'][key], unit)} | - | - |")
    for name, rec in records.items():
        spec, quick = specs[name], " --quick" if rec.get("quick") else ""
        lines += [
            "",
            f"## {spec.title}",
            "",
            f"`.venv/bin/python -m bench.{name}{quick}` — took {rec['seconds']:.0f} s in this run.",
            "",
        ]
        lines += [f"- Measures: {spec.measures}", f"- Baseline, same run: {spec.baseline}"] + [
            f"- {s}" for s in rec["setup"]
        ]
        for tbl in rec["tables"]:
            lines += ["", render_markdown(tbl)]
        lines += ["", "**Notes**", ""] + [f"- {s}" for s in spec.sentences(rec)] + notes_file(name)
    return "\n".join(lines)
