"""Start-up of the light commands: `atari-pb ingest`, `verify`, `eval` and `leaderboard` on tiny inputs, as
whole processes, against the interpreter doing nothing and the interpreter importing torch, in the same run.

The light commands (data and evaluation) must not import torch or the fine-tuning package: this measures what
a user waits for, and checks in each child that neither was imported.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

from bench.harness import OUT, Goal, Opt, Spec, Table, interleave, log, med

WORK = OUT / "startup"
# runs the command in-process, then says whether torch or the fine-tuning package was imported
COMMAND = (
    "import sys\n"
    "from atari_pb.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "heavy = sorted(m for m in sys.modules if m == 'torch' or m.startswith('atari_pb.finetune'))\n"
    "print('HEAVY=' + ','.join(heavy))\n"
    "sys.exit(code)\n"
)


def _inputs() -> dict[str, list[str]]:
    """A collected checkpoint, its shards, and results records written with the records' own writer."""
    from atari_pb.data.collect import collect
    from atari_pb.data.dataset import CollectConfig
    from atari_pb.eval.records import ResultRecord, write_record
    from atari_pb.eval.scoring import Scoring
    from atari_pb.games import get_game

    shutil.rmtree(WORK, ignore_errors=True)
    replay, shards, results = WORK / "replay", WORK / "shards", WORK / "results"
    collect(replay, [get_game("pong")], [1], [0], CollectConfig(transitions_per_ckpt=500))
    scoring = Scoring().to_json()
    for game in ("boxing", "breakout", "freeway"):
        for seed in range(3):
            write_record(
                results, ResultRecord("curl", "offline_bc", "id", game, seed, 1.0 + seed, scoring=scoring)
            )
    selection = ["--games", "pong", "--runs", "1", "--ckpts", "0", "--samples-per-ckpt", "400"]
    return {
        "ingest": ["ingest", str(replay), str(shards), *selection],
        "verify": ["verify", str(shards)],
        "eval": ["eval", "--results", str(results), "--split", "id", "--reps", "100"],
        "leaderboard": ["leaderboard", str(results), "--out", str(WORK / "board"), "--reps", "100"],
    }


def _run(argv: list[str]) -> tuple[float, str]:
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", COMMAND, "--log-level", "WARNING", *argv], capture_output=True, text=True
    )
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {proc.stderr[-500:]}")
    heavy = [line for line in proc.stdout.splitlines() if line.startswith("HEAVY=")][-1][len("HEAVY=") :]
    return seconds, heavy


def _python(code: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - t


def measure(o) -> dict:
    commands = _inputs()
    _run(commands["ingest"])  # the shards verify reads, and a warm page cache for all
    heavy: dict[str, str] = {}

    def command(name: str):
        def go() -> float:
            if name == "ingest":
                shutil.rmtree(WORK / "shards")  # built again each round (verify reads what it left)
            seconds, heavy[name] = _run(commands[name])
            return seconds

        return go

    configs = {name: command(name) for name in commands}
    configs["python"] = lambda: _python("pass")
    configs["python + torch"] = lambda: _python("import torch")
    configs["python + rliable"] = lambda: _python("from rliable import library")  # eval's bootstrap
    log(f"{len(configs)} process kinds, {o.rounds} interleaved rounds")
    runs = interleave(configs, o.rounds)
    v = {"seconds": {k: med(x) for k, x in runs.items()}, "runs": runs, "heavy": heavy}
    v["slowest_light_s"] = max(v["seconds"][k] for k in commands)
    v["slowest_data_s"] = max(v["seconds"][k] for k in ("ingest", "verify"))
    v["slowest_eval_s"] = max(v["seconds"][k] for k in ("eval", "leaderboard"))
    v["none_heavy"] = all(not h for h in heavy.values())
    return v


def _tables(v, o) -> list[Table]:
    s = v["seconds"]
    rows = [[k, s[k], v["heavy"].get(k, "-") or "none"] for k in s]
    return [
        Table("Whole-process wall time (median)", "process | s | torch or atari_pb.finetune imported", rows)
    ]


SPEC = Spec(
    name="startup",
    title="Start-up of the light commands (ingest, verify, eval, leaderboard)",
    measures="wall seconds of each command as a whole process on tiny inputs (500 transitions, 9 records)",
    baseline="`python -c pass` and `python -c 'import torch'`, interleaved in the same run",
    options={"rounds": Opt(7, 2, "interleaved rounds")},
    measure=measure,
    setup=lambda v, o: [f"{o.rounds} interleaved rounds; medians; each command checks its own imports."],
    tables=_tables,
    goals=[
        Goal("slowest data command (ingest, verify), seconds", "slowest_data_s <= 1", unit=" s"),
        Goal("slowest evaluation command (eval, leaderboard), seconds", "slowest_eval_s <= 1", unit=" s"),
    ],
    interpret=lambda v, o, m: [
        f"The light commands took {min(v['seconds'][k] for k in ('ingest', 'verify', 'eval', 'leaderboard')):.2f}"
        f"-{v['slowest_light_s']:.2f} s; the interpreter alone {v['seconds']['python']:.2f} s and importing torch "
        f"{v['seconds']['python + torch']:.2f} s, importing rliable's bootstrap (rliable.library, which imports "
        f"arch and scipy.stats) {v['seconds']['python + rliable']:.2f} s: eval and leaderboard wait on that. "
        + (
            "None of them imported torch or atari_pb.finetune."
            if v["none_heavy"]
            else f"Heavy imports: {json.dumps(v['heavy'])}."
        )
    ],
)

if __name__ == "__main__":
    SPEC.main()
