"""The Ray scenario of tests/test_ray.py, run inside a network namespace with only loopback up (Ray binds the
machine's own address otherwise): a real two-node `ray.cluster_utils.Cluster` on 127.0.0.1, the real
`atari-pb finetune --backend ray` driver against it, and a node removed while a job runs on it.

    unshare -n sh -c 'ip link set lo up && exec python -m tests.ray_scenario OUT.json -- SWEEP... --killed
        RAINBOW SWEEP... --states STATE...'

Writes OUT.json: {"sweep": {rc, stderr}, "killed": {rc, stderr, removed_at_step}, "no_gpu": {...}}.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from ray.cluster_utils import Cluster


def driver(args: list[str], address: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "atari_pb", "--log-level", "INFO", "finetune", *args, "--backend", "ray"]
    return subprocess.Popen(
        [*cmd, "--address", address], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(proc: subprocess.Popen, timeout: float = 600) -> dict:
    out, err = proc.communicate(timeout=timeout)
    return {"rc": proc.returncode, "stdout": out, "stderr": err}


def remove_a_node_mid_job(cluster: Cluster, nodes: list, args: list[str], states: list[Path]) -> dict:
    """Run the sweep; once every job has a checkpoint (`states`), remove a worker node: every node runs one
    job (one CPU each), so one job is lost mid-run and must be retried, and it has a checkpoint to resume."""
    proc = driver(args, cluster.address)
    deadline = time.monotonic() + 300
    step = None
    while time.monotonic() < deadline and proc.poll() is None:
        if all(state.exists() for state in states):
            try:
                step = min(int(torch.load(state, weights_only=True)["step"]) for state in states)
            except Exception:  # noqa: BLE001  (being replaced right now: read them again)
                continue
            cluster.remove_node(nodes[0])
            break
        time.sleep(0.1)
    return {**finish(proc), "removed_at_step": step}


def main() -> None:
    out = Path(sys.argv[1])
    sweep, killed = sys.argv[3 : sys.argv.index("--killed")], sys.argv[sys.argv.index("--killed") + 1 :]
    states = [Path(p) for p in killed[killed.index("--states") + 1 :]]
    killed = killed[: killed.index("--states")]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # jobs run on the workers only
    try:
        nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        report = {"sweep": finish(driver(sweep, cluster.address))}
        no_gpu = [
            *sweep,
            "--gpus-per-job",
            "1",
            "--results",
            str(out.parent / "no_gpu"),
        ]  # the last --results wins
        report["no_gpu"] = finish(driver(no_gpu, cluster.address))
        report["killed"] = remove_a_node_mid_job(cluster, nodes, killed, states)
    finally:
        cluster.shutdown()
    out.write_text(json.dumps(report))


if __name__ == "__main__":
    main()
