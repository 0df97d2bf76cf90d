"""`atari-pb finetune --backend ray`: every job a Ray task, on a cluster of any number of machines.

    written, errors = finetune_on_ray(jobs, RayOptions(address="10.0.0.1:6379", gpus_per_job=0.5))

Each (encoder, protocol, split, game, seed) job (or, with --fleet, each fleet) runs in a task that declares its resources
(`cpus_per_job`, `gpus_per_job`, fractional for several jobs per GPU). The driver writes what the tasks
return (records, saved agents), so the results need no shared file system; the data, the encoder files and
the checkpoint directory must be at the same path on every node (a shared mount for the checkpoints, so
that a retried job resumes where it stopped on whichever node it lands). A task whose worker or node dies
is retried by Ray (`max_retries`) and continues from its checkpoint; finished records are skipped as with
the local pool. A job that fails with an atari-pb error is not retried: its one line is in the summary.

Ray is an optional extra (`pip install 'atari-pb[ray]'`); nothing else imports this module.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from atari_pb.errors import AtariPBError, UsageError
from atari_pb.finetune.run import (
    Job,
    JobOutput,
    compute_unit,
    describe,
    is_fleet,
    unfinished,
    work_units,
    write_unit,
)
from atari_pb.finetune.sizing import host_bytes

log = logging.getLogger(__name__)


@dataclass
class RayOptions:
    address: str | None = None  # None: start a Ray instance on this machine
    cpus_per_job: float = 1.0
    gpus_per_job: float = 0.0
    max_retries: int = 3  # re-runs of a task whose worker or node died
    log_level: str = "INFO"  # the workers' logging (their lines reach the driver's stderr)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError("--backend ray needs Ray: pip install 'atari-pb[ray]'") from None
    return ray


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """ray.init waits for an unreachable cluster for minutes, retrying: try its GCS port first."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(
            f"--address {address}: expected HOST:PORT (the head node's GCS address, e.g. 10.0.0.1:6379)"
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise UsageError(
            f"--address {address}: cannot connect to a Ray cluster ({err.strerror or err})"
        ) from None


def connect(options: RayOptions):
    """ray.init on `address` (or a local instance); an unreachable address is one line."""
    ray = _import_ray()
    if options.address is not None:
        check_reachable(options.address)
    env = {k: v for k, v in os.environ.items() if k == "ATARI_PB_CONFIG_ROOT"}
    try:
        ray.init(
            address=options.address,
            runtime_env={"env_vars": env} if env else None,
            log_to_driver=True,
            logging_level=logging.WARNING,
            include_dashboard=False,
        )
    except (ConnectionError, RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"--address {options.address}: cannot connect to a Ray cluster ({first})") from None
    return ray


def check_resources(ray, options: RayOptions, memory: int = 0) -> None:
    """A job (or a fleet, with `memory` bytes for its agents) must fit on at least one node, or it would
    wait forever."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    fits = [
        n
        for n in nodes
        if n["Resources"].get("CPU", 0) >= options.cpus_per_job
        and n["Resources"].get("GPU", 0) >= options.gpus_per_job
        and n["Resources"].get("memory", 0) >= memory
    ]
    if not fits:
        have = ", ".join(
            f"{n['NodeManagerAddress']}: {n['Resources'].get('CPU', 0):g} CPU, {n['Resources'].get('GPU', 0):g} GPU, "
            f"{n['Resources'].get('memory', 0) / 2**30:.1f} GiB"
            for n in nodes
        )
        fleet = f" and a fleet's {memory / 2**30:.1f} GiB (--fleet-size)" if memory else ""
        raise UsageError(
            f"--cpus-per-job {options.cpus_per_job:g} --gpus-per-job {options.gpus_per_job:g}{fleet}: no node of "
            f"the Ray cluster has that much ({have or 'no live nodes'})"
        )


def run_remote(unit: tuple[Job, ...], log_level: str, threads: int) -> list[JobOutput]:
    """The task's body, on a Ray worker: one job or one fleet, its logging and torch threads set as the
    pool's are."""
    import torch

    logging.basicConfig(
        level=log_level, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", force=True
    )
    torch.set_num_threads(threads)
    return compute_unit(unit)


def finetune_on_ray(
    jobs: Sequence[Job], options: RayOptions, fleet_size: int = 0
) -> tuple[list[Path], list[str]]:
    """Like finetune.run.finetune: (records written, one error line per failed job or fleet). A fleet is one
    task with the resources given per job (give it a whole device: --gpus-per-job 1)."""
    units = work_units(unfinished(jobs), fleet_size)
    if not units:
        return [], []
    ray = connect(options)
    try:
        on_gpu = options.gpus_per_job > 0
        memory = [sum(host_bytes(j, on_gpu) for j in unit) if is_fleet(unit) else 0 for unit in units]
        check_resources(ray, options, max(memory))
        task = ray.remote(
            num_cpus=options.cpus_per_job,
            num_gpus=options.gpus_per_job,
            max_retries=options.max_retries,
            retry_exceptions=False,  # an atari-pb error is the job's answer, not a failure to retry
        )(run_remote)
        threads = max(1, int(options.cpus_per_job))
        # a fleet declares its agents' host memory as Ray's `memory` resource, so a node takes no more than
        # fit (its device memory is checked where it runs: sizing.check_fleet_fits)
        pending = {
            task.options(**({"memory": need} if need else {})).remote(unit, options.log_level, threads): unit
            for unit, need in zip(units, memory, strict=True)
        }
        return _collect(ray, pending)
    finally:
        ray.shutdown()


def _collect(ray, pending: dict) -> tuple[list[Path], list[str]]:
    written, errors = [], []
    start = time.monotonic()
    with tqdm(total=len(pending), unit="task", desc="finetune (ray)", disable=None) as bar:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                unit = pending.pop(ref)
                name = f"{unit[0].method} {unit[0].protocol} {describe(unit)}"
                try:
                    written += write_unit(unit, ray.get(ref))
                except ray.exceptions.RayTaskError as err:  # the job raised: its own one line
                    cause = err.cause if isinstance(err.cause, AtariPBError) else err
                    errors.append(f"{name}: {_first_line(cause)}")
                except (
                    ray.exceptions.RayError
                ) as err:  # its worker or node was lost more than max_retries times
                    errors.append(f"{name}: {_first_line(err)}")
                except AtariPBError as err:  # writing it
                    errors.append(f"{name}: {err}")
                bar.update()
    log.info(
        "finetune on Ray: %d tasks in %.0f s, %d failed",
        len(written) + len(errors),
        time.monotonic() - start,
        len(errors),
    )
    return written, errors


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
