"""How many agents a fleet may hold: host memory (Rainbow's replays) and the training device's memory (the
shared backbone pass over every agent's batch, each agent's neck, head and optimiser state).

    size = fleet_size_for(jobs, requested=None, workers=1)   # the default, lowered to what fits here
    fleet_size_for(jobs, requested=64, workers=1)            # refused with one line if 64 do not fit

Each fit is MEMORY_SHARE of what is free when the sweep starts, split between the workers (each trains one
fleet at a time). On a CPU the device is host memory, so both needs come out of it. The device figures are
estimates from the model's shapes (models/memory.py), not measurements of a run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from atari_pb.core.device import available_memory, pick_device
from atari_pb.errors import UsageError
from atari_pb.finetune.base import FleetFootprint, load_protocol_config, protocol_class
from atari_pb.models import memory
from atari_pb.models.encoder import ENCODER_FORMAT, ModelConfig, read_config

log = logging.getLogger(__name__)

DEFAULT_FLEET_SIZE = 16  # agents a fleet, unless --fleet-size says otherwise
MEMORY_SHARE = 0.8  # of the memory free when the sweep starts, what one worker's fleet may use
PARAM_COPIES = 5  # of a neck and head: online, target (Rainbow), gradient, Adam's two moments


@dataclass(frozen=True)
class AgentBytes:
    """What one agent of a fleet needs beyond what the fleet shares."""

    host: int  # host memory: its replay and logs (Rainbow)
    device: int  # the training device: its rows of the backbone pass, its neck and head, their state
    rows: int  # its rows in one shared backbone pass
    device_name: str  # where it trains (the protocol's train.device, resolved)


def job_model(job) -> ModelConfig:
    """The model an encoder job fine-tunes: a baseline's preset, or the one an encoder file's JSON names
    (read without its weights)."""
    from atari_pb.finetune.run import baselines

    if job.encoder in baselines(job.protocol):
        return ModelConfig(preset=job.preset)
    return ModelConfig(**read_config(job.encoder, ENCODER_FORMAT, "an encoder")["model"])


def agent_bytes(job) -> AgentBytes:
    footprint: FleetFootprint = protocol_class(job.protocol).fleet_footprint(
        load_protocol_config(job.protocol, job.overrides)
    )
    model = job_model(job)
    per_row = memory.backbone_row_bytes(model) + memory.head_row_bytes(model, footprint.outputs)
    device = footprint.rows * per_row + PARAM_COPIES * memory.head_param_bytes(model, footprint.outputs)
    name = str(pick_device(footprint.device, "train.device"))
    return AgentBytes(footprint.host_bytes, device, footprint.rows, name)


def largest_need(jobs: Sequence) -> AgentBytes:
    """The most any of the jobs' agents needs, each figure on its own."""
    needs = [agent_bytes(job) for job in jobs]
    return AgentBytes(
        max(n.host for n in needs),
        max(n.device for n in needs),
        max(n.rows for n in needs),
        needs[0].device_name,
    )


def host_bytes(job, on_gpu: bool) -> int:
    """Host memory one agent of a fleet holds (a Ray task's `memory`): its replay, and when it trains on a
    CPU its share of the backbone pass, neck and head too."""
    need = agent_bytes(job)
    return need.host + (0 if on_gpu else need.device)


def fitting_fleet_size(
    protocol: str, need: AgentBytes, requested: int | None, host_free: int | None, device_free: int | None
) -> int:
    """Agents a fleet: `requested` (None: DEFAULT_FLEET_SIZE), unless that many would need more than
    MEMORY_SHARE of `host_free` (with the device's needs too on a CPU) or of `device_free` (None: not a
    separate device, or not known). Then a requested size is refused with one line saying how many fit,
    and the default is lowered to what fits."""
    size = requested or DEFAULT_FLEET_SIZE
    on_cpu = need.device_name == "cpu"
    batch = f"its {need.rows}-row backbone batch, neck and head"
    limits = []  # (agents that fit, what one needs, of what, how much is free)
    host_need = need.host + (need.device if on_cpu else 0)
    if host_free is not None and host_need > 0:
        held = " and ".join((["its replay"] if need.host else []) + ([batch] if on_cpu else []))
        limits.append((int(MEMORY_SHARE * host_free // host_need), host_need, f"memory ({held})", host_free))
    if device_free is not None and not on_cpu and need.device > 0:
        what = f"{need.device_name} memory ({batch})"
        limits.append((int(MEMORY_SHARE * device_free // need.device), need.device, what, device_free))
    if not limits:
        return size
    fits, per_agent, what, free = min(limits)
    fits = max(1, fits)
    if size <= fits:
        return size
    if requested is not None:
        raise UsageError(
            f"--fleet-size {requested}: a {protocol} agent needs up to {per_agent / 2**30:.2f} GiB of {what} and "
            f"{free / 2**30:.1f} GiB is free to each worker, so at most {fits} fit; use --fleet-size {fits}"
        )
    log.info("finetune: fleets of %d agents (%.2f GiB of %s each; %d would not fit)", fits, per_agent / 2**30,
             what, size)  # fmt: skip
    return fits


def device_free_memory(name: str) -> int | None:
    """Bytes a new fleet can have on a CUDA device: what the device has free, plus what this process's
    caching allocator holds without using (an earlier fleet's); None for the CPU (host memory, counted as
    such)."""
    device = torch.device(name)
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def fleet_size_for(jobs: Sequence, requested: int | None, workers: int = 1) -> int:
    """The fleet size for a sweep on this machine (the CLI's local backend): every job's needs against the
    memory free now, shared by `workers`."""
    if not jobs:
        return requested or DEFAULT_FLEET_SIZE
    need = largest_need(jobs)
    host = available_memory()
    device = device_free_memory(need.device_name)
    share = lambda free: free // workers if free is not None else None  # noqa: E731
    return fitting_fleet_size(jobs[0].protocol, need, requested, share(host), share(device))


def check_fleet_fits(jobs: Sequence) -> None:
    """Where a fleet is about to train (a pool worker, a Ray task): refuse one its device cannot hold, with
    one line saying how many would fit (the sweep sized it to another machine, or the device filled up)."""
    need = largest_need(jobs)
    fitting_fleet_size(jobs[0].protocol, need, len(jobs), None, device_free_memory(need.device_name))
