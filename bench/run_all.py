"""Run the benchmarks and generate BENCHMARKS.md from their records.

    .venv/bin/python -m bench.run_all                 # every benchmark, full: publishes to bench/results/, writes BENCHMARKS.md
    .venv/bin/python -m bench.run_all --only ingest   # only these (the others' published records are kept)
    .venv/bin/python -m bench.run_all --quick         # smoke run: records in bench/out/, doc in bench/out/BENCHMARKS.quick.md
    .venv/bin/python -m bench.run_all --render        # no runs: BENCHMARKS.md from bench/results/*.json
    .venv/bin/python -m bench.run_all --render --results bench/out --to /tmp/b.md   # any records, anywhere

Each benchmark runs in its own process (`python -m bench.<name>`, with this command's environment as it
was at start) and leaves bench/out/<name>.json. A full run's record is then copied to bench/results/,
the published records BENCHMARKS.md is generated from; a --quick run never touches either.
"""

from __future__ import annotations

import os

ENV = dict(os.environ)  # before any benchmark module (some set OMP_WAIT_POLICY) is imported here

import argparse  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from bench.harness import DOC, OUT, REPO, RESULTS, log, render_doc  # noqa: E402

BENCHES = (
    "ingest",
    "sampler",
    "memory",
    "train",
    "env",
    "prend",
    "rainbow",
    "probe",
    "resume",
    "fleet",
    "rlu",
    "startup",
)


def run(names: list[str], quick: bool) -> None:
    for name in names:
        cmd = [sys.executable, "-m", f"bench.{name}"] + (["--quick"] if quick else [])
        log(f"running {' '.join(cmd[1:])}")
        subprocess.run(cmd, cwd=REPO, env=ENV, check=True)
        if not quick:
            RESULTS.mkdir(exist_ok=True)
            shutil.copyfile(OUT / f"{name}.json", RESULTS / f"{name}.json")


def render(results: Path, to: Path) -> None:
    records = {
        n: json.loads((results / f"{n}.json").read_text())
        for n in BENCHES
        if (results / f"{n}.json").is_file()
    }
    if not records:
        raise SystemExit(f"no records in {results}; run the benchmarks first")
    specs = {n: importlib.import_module(f"bench.{n}").SPEC for n in BENCHES}
    source = results.relative_to(REPO) if results.is_relative_to(REPO) else results
    to.write_text(render_doc(specs, records, str(source)) + "\n")
    log(f"wrote {to} from {len(records)} records in {results}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="pass --quick to every benchmark; never publishes")
    p.add_argument("--only", nargs="+", choices=BENCHES, help="run only these")
    p.add_argument("--render", action="store_true", help="run nothing, only generate the document")
    p.add_argument(
        "--results", type=Path, help="records to generate from (default bench/results; --quick: bench/out)"
    )
    p.add_argument(
        "--to",
        type=Path,
        help="document to write (default BENCHMARKS.md; --quick: bench/out/BENCHMARKS.quick.md)",
    )
    a = p.parse_args(argv)
    if not a.render:
        run(list(a.only or BENCHES), a.quick)
    results = (a.results or (OUT if a.quick else RESULTS)).resolve()
    render(results, (a.to or (OUT / "BENCHMARKS.quick.md" if a.quick else DOC)).resolve())


if __name__ == "__main__":
    main()
