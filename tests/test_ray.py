"""`atari-pb finetune --backend ray` on a real two-node Ray cluster on 127.0.0.1 (tests/ray_scenario.py, in a
network namespace of its own): a sweep's records equal the local backend's; a node removed while a job runs
on it leads to a retry that resumes from the job's checkpoint, a complete set of records, and the same
agents as the local backend; a resource request no node can satisfy and an unreachable address are one
line each."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import one_error_line, run_cli

REPO = Path(__file__).resolve().parent.parent
BC = (
    "--protocol offline_bc --encoder random --preset tiny --split id near_ood --games breakout pong --seeds 0 1 "
    "--episodes 1 --eval-envs 1 eval.env.horizon=100 train.max_steps=40 train.batch_size=16 train.loader_threads=0"
).split()
RAINBOW = (
    "--protocol rainbow --encoder random --preset tiny --split id --games breakout --seeds 0 1 --episodes 1 "
    "--eval-envs 1 eval.env.horizon=100 --save-agent train.env_steps=300 train.learning_starts=100 "
    "train.updates_per_step=1 train.batch_size=8 train.eps_decay_steps=200 replay.capacity=600 agent.n_step=3 "
    "--checkpoint-every 100"
).split()


def netns_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    return (
        subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True).returncode
        == 0
    )


pytestmark = pytest.mark.skipif(not netns_works(), reason="needs `unshare -n` (root) for Ray's own network")


def without_timing(path: Path) -> dict:
    record = json.loads(path.read_text())
    record["config"].pop("train_seconds")
    return record


def records(results: Path) -> dict[str, dict]:
    return {str(p.relative_to(results)): without_timing(p) for p in sorted(results.glob("*/*/*/seed*.json"))}


@pytest.fixture(scope="module")
def scenario(shard_dir, tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("ray")
    sweep = ["finetune", *BC, "--data", str(shard_dir), "--results", str(tmp / "local")]
    local = run_cli(*sweep, cwd=tmp)
    assert local.returncode == 0, local.stderr[-2000:]
    rainbow_local = run_cli(
        "finetune", *RAINBOW, "--results", tmp / "rainbow_local", "--workers", "2", cwd=tmp
    )
    assert rainbow_local.returncode == 0, rainbow_local.stderr[-2000:]

    states = [tmp / f"rainbow_ray/.checkpoints/random/rainbow/breakout/seed{k}/state.pt" for k in (0, 1)]
    args = [*sweep[1:-1], str(tmp / "ray"), "--killed", *RAINBOW, "--results", str(tmp / "rainbow_ray")]
    args += ["--states", *map(str, states)]
    inner = f"ip link set lo up && exec {sys.executable} -m tests.ray_scenario {tmp / 'report.json'} -- "
    proc = subprocess.run(
        ["unshare", "-n", "sh", "-c", inner + " ".join(f"'{a}'" for a in args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1500,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return tmp, json.loads((tmp / "report.json").read_text())


@pytest.mark.slow
def test_a_sweep_on_two_nodes_writes_the_local_backends_records(scenario):
    tmp, report = scenario
    assert report["sweep"]["rc"] == 0, report["sweep"]["stderr"][-3000:]
    ray_records, local_records = records(tmp / "ray"), records(tmp / "local")
    assert len(local_records) == 4 and ray_records == local_records


@pytest.mark.slow
def test_a_node_removed_mid_job_is_retried_and_resumes(scenario):
    tmp, report = scenario
    killed = report["killed"]
    assert killed["rc"] == 0 and killed["removed_at_step"] is not None, killed["stderr"][-3000:]
    resumed = [int(s) for s in re.findall(r"resuming from \S+state\.pt at step (\d+)", killed["stderr"])]
    assert resumed and max(resumed) >= 100, killed["stderr"][-3000:]
    assert records(tmp / "rainbow_ray") == records(tmp / "rainbow_local")  # complete, and the same
    for seed in (0, 1):
        agent = f"random/rainbow/breakout/agents/seed{seed}.safetensors"
        assert (tmp / "rainbow_ray" / agent).read_bytes() == (tmp / "rainbow_local" / agent).read_bytes()


@pytest.mark.slow
def test_a_request_no_node_can_satisfy_is_one_line(scenario):
    _, report = scenario
    no_gpu = report["no_gpu"]
    lines = no_gpu["stderr"].strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("atari-pb: error:")]
    assert no_gpu["rc"] == 2 and len(errors) == 1, no_gpu["stderr"][-2000:]
    assert "--gpus-per-job 1: no node of the Ray cluster has that much" in errors[0]


def test_an_unreachable_address_is_one_line(shard_dir, tmp_path):
    proc = run_cli("--log-level", "WARNING", "finetune", *BC, "--data", shard_dir, "--results", tmp_path,
                   "--backend", "ray", "--address", "127.0.0.1:9", cwd=tmp_path, timeout=300)  # fmt: skip
    line = one_error_line(proc, 2)
    assert "--address 127.0.0.1:9: cannot connect to a Ray cluster" in line
    assert not list(tmp_path.rglob("seed*.json"))
