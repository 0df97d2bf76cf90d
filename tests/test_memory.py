"""Fleet sizing: the device-memory estimates (models/memory.py) against the peak memory of real passes, and
the fleet size they give (finetune/sizing.py) against the free memory it is told."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from atari_pb.errors import UsageError
from atari_pb.finetune.sizing import AgentBytes, fitting_fleet_size
from atari_pb.models import memory
from atari_pb.models.encoder import ModelConfig

# A real no-grad backbone pass of ROWS rows in a fresh process: the growth of its peak resident memory over
# the level before the pass (input already made), per row. glibc returns large freed blocks to the system,
# so the peak is what was alive at once (plus allocator slack). The peak is the memory map's own (VmHWM):
# getrusage's ru_maxrss survives exec, so a child of a large pytest process would start at its parent's peak.
PEAK_SCRIPT = """
import json, sys, torch
from atari_pb.models.backbone import Backbone


def peak():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


torch.set_num_threads(1)
preset, rows = sys.argv[1], int(sys.argv[2])
net = Backbone(preset).eval()
with torch.no_grad():
    net(torch.zeros(2, 4, 84, 84, dtype=torch.uint8))  # kernels and their workspaces, once
obs = torch.randint(0, 256, (rows, 4, 84, 84), dtype=torch.uint8)
before = peak()
with torch.no_grad():
    net(obs)
after = peak()
print(json.dumps({"per_row": (after - before) * 1024 / rows}))
"""


def measured_row_bytes(preset: str, rows: int) -> float:
    proc = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, preset, str(rows)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)["per_row"]


@pytest.mark.parametrize("preset, rows", [("tiny", 512), ("resnet18", 64), ("resnet50", 32), ("nature", 512)])
def test_backbone_row_estimate_bounds_a_real_pass(preset, rows):
    """The estimate is an upper bound of the measured peak per row, and not a loose one (within 2.5x)."""
    estimate = memory.backbone_row_bytes(ModelConfig(preset=preset))
    measured = measured_row_bytes(preset, rows)
    if measured > estimate:  # the allocator's high-water mark varies between processes (resnet18: 2.2-3.1 MB
        measured = min(measured, measured_row_bytes(preset, rows))  # a row seen): the lower of two passes
    assert measured <= estimate <= 2.5 * measured, (preset, estimate, measured)


def test_estimates_follow_the_model():
    """resnet50's widest layer is 256 x 42 x 42 floats a row (its first stage: the max-pool is removed), so
    six of them and the input bound its pass; heads grow with their outputs; the backbone's weights are
    the released 23.5M parameters."""
    r50 = ModelConfig(preset="resnet50")
    assert memory.backbone_row_bytes(r50) == 4 * 84 * 84 * 5 + 6 * 256 * 42 * 42 * 4
    assert memory.backbone_param_bytes(r50) == 23_458_048 * 4
    assert memory.head_param_bytes(r50, 18 * 51) > memory.head_param_bytes(r50, 18)
    assert memory.head_row_bytes(r50, 18) > 2048 * 6 * 6 * 4 * 2  # the features, scaled, and their gradients


GIB = 2**30


def test_fleet_size_follows_the_tighter_memory():
    bc_on_gpu = AgentBytes(host=0, device=3 * GIB, rows=512, device_name="cuda:0")
    assert fitting_fleet_size("offline_bc", bc_on_gpu, None, 100 * GIB, 60 * GIB) == 16  # the default fits
    assert fitting_fleet_size("offline_bc", bc_on_gpu, 64, 100 * GIB, 240 * GIB) == 64
    assert fitting_fleet_size("offline_bc", bc_on_gpu, None, 100 * GIB, 30 * GIB) == 8  # 0.8 x 30 / 3
    with pytest.raises(UsageError, match=r"--fleet-size 64: .* 3.00 GiB of cuda:0 memory .* at most 8 fit"):
        fitting_fleet_size("offline_bc", bc_on_gpu, 64, 100 * GIB, 30 * GIB)
    rainbow_on_gpu = AgentBytes(host=GIB, device=GIB // 10, rows=64, device_name="cuda:0")
    assert fitting_fleet_size("rainbow", rainbow_on_gpu, None, 5 * GIB, 100 * GIB) == 4  # its replays
    rainbow_on_cpu = AgentBytes(host=GIB, device=GIB, rows=64, device_name="cpu")
    assert fitting_fleet_size("rainbow", rainbow_on_cpu, None, 10 * GIB, None) == 4  # both in host memory
    with pytest.raises(UsageError, match=r"its replay and its 64-row backbone batch, neck and head"):
        fitting_fleet_size("rainbow", rainbow_on_cpu, 5, 10 * GIB, None)
    assert fitting_fleet_size("rainbow", rainbow_on_cpu, 1, 1, None) == 1  # one always runs
