"""Pre-training throughput: samples/s of the real runner (shards -> prefetch threads -> objective -> AdamW
-> EMA) vs the same steps on one batch already in memory, and the share of step time spent waiting for data.

    .venv/bin/python -m bench.train --presets resnet50 --batch-size 512 trainer.bf16=true trainer.compile=true \
        trainer.channels_last=true          # on a GPU: against the same command without the three overrides

Shards: the sampler benchmark's (real ALE frames, cached in bench/out/). The runner logs samples/s and its
data-wait share (time blocked on the loader / wall time) per window; the last window is reported, after
warm-up. The baseline repeats the runner's step (forward, backward, clip, AdamW, EMA) on one resident batch,
so their ratio is what the data path costs the trainer.
"""

from __future__ import annotations

import json
import shutil
import time

import torch

from bench.data import sampler_shards
from bench.harness import OUT, Goal, Opt, Spec, Table, log

# per preset: (global batch, runner steps); resnet50 on 2 CPU cores manages tens of samples/s
SIZES = {"tiny": (64, 40), "resnet18": (32, 8), "resnet50": (32, 6)}


def resident_batch_rate(
    name: str, preset: str, batch_size: int, steps: int, shards, overrides: list[str]
) -> float:
    """samples/s of the runner's step (same device, precision, compile, memory format) on one batch that
    never leaves the device."""
    from atari_pb.augment import BatchRandom
    from atari_pb.core.device import pick_device
    from atari_pb.models.ema import ema_update
    from atari_pb.models.encoder import Encoder
    from atari_pb.objectives import objective_class
    from atari_pb.pretrain.config import load_pretrain_config
    from atari_pb.pretrain.runner import make_optimizer

    cfg = load_pretrain_config(name, [f"model.preset={preset}", *overrides])
    t = cfg.trainer
    device = pick_device(t.device)
    objective = objective_class(name)(cfg.objective, Encoder(cfg.model), cfg.model.num_actions).to(device)
    if t.channels_last:
        objective.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(objective, cfg.optim)
    model = torch.compile(objective) if t.compile else objective
    s = objective.sample_spec()
    batch = shards.sample(
        batch_size,
        s.frames,
        s.t_step,
        s.n_step,
        s.gamma,
        seed=0,
        random_future=s.random_future,
        extra_offsets=s.extra_offsets,
    )
    batch = {k: v.to(device) for k, v in batch.items()}
    params = [p for p in objective.parameters() if p.requires_grad]

    def step(i: int) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.bf16):
            loss, _ = model(batch, BatchRandom.for_batch(0, i, batch_size, device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema_update(objective.ema_pairs(), 0.99)

    warm = max(2, steps // 4)
    for i in range(warm):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(steps):
        step(warm + i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch_size * steps / (time.perf_counter() - start)


def runner_rate(name: str, preset: str, batch_size: int, steps: int, data, overrides: list[str]) -> dict:
    """The last logging window of `pretrain` (samples/s and data-wait share)."""
    from atari_pb.pretrain.config import load_pretrain_config
    from atari_pb.pretrain.runner import pretrain

    out = OUT / "train_runs" / f"{preset}_{name}"
    shutil.rmtree(out, ignore_errors=True)
    keys = [f"model.preset={preset}", f"trainer.steps={steps}", f"trainer.batch_size={batch_size}"]
    keys += [f"trainer.log_every={max(1, steps // 4)}", f"trainer.save_every={steps}", *overrides]
    pretrain(name, data, out, load_pretrain_config(name, keys))
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    shutil.rmtree(out, ignore_errors=True)
    return {"samples_per_s": last["samples_per_s"], "data_wait": last["data_wait"]}


def measure(o) -> dict:
    from atari_pb.data.sampler import ShardSet

    torch.manual_seed(0)
    data = sampler_shards(5_000)
    shards = ShardSet(data)
    v = {"shards": len(shards.shards), "transitions": len(shards), "rows": {}}
    for preset in o.presets:
        batch_size, steps = SIZES[preset]
        batch_size, steps = o.batch_size or batch_size, o.steps or steps
        if o.quick:
            steps = max(4, steps // 4)
        for name in o.objectives:
            log(f"{name} / {preset}: runner, {steps} steps of {batch_size}")
            run = runner_rate(name, preset, batch_size, steps, data, o.overrides)
            log(f"{name} / {preset}: resident batch")
            base = resident_batch_rate(name, preset, batch_size, max(3, steps // 2), shards, o.overrides)
            v["rows"][f"{preset}/{name}"] = {
                **run,
                "batch": batch_size,
                "resident_samples_per_s": base,
                "ratio": run["samples_per_s"] / base,
            }
    v["worst_data_wait"] = max(r["data_wait"] for r in v["rows"].values())
    return v


def setup(v: dict, o) -> list[str]:
    extra = f"; overrides: {' '.join(o.overrides)}" if o.overrides else "; fp32 on CPU, no compile"
    return [
        f"Shards: {v['shards']} shards, {v['transitions']:,} transitions of real ALE frames (the sampler "
        f"benchmark's); default loader settings (trainer.loader_threads=2){extra}.",
        "Runner rows: the last logging window of `atari-pb pretrain` (after warm-up). Resident rows: the same "
        "step repeated on one batch kept in memory.",
    ]


def tables(v: dict, o) -> list[Table]:
    rows = []
    for key, r in v["rows"].items():
        preset, name = key.split("/")
        rows.append(
            [
                name,
                preset,
                r["batch"],
                r["samples_per_s"],
                r["resident_samples_per_s"],
                r["ratio"],
                r["data_wait"],
            ]
        )
    headers = [
        "objective",
        "preset",
        "batch",
        "runner samples/s",
        "resident-batch samples/s",
        "runner / resident",
        "data-wait share",
    ]
    return [Table("Training throughput (CPU)", headers, rows)]


def interpret(v: dict, o, m: dict) -> list[str]:
    ratios = [r["ratio"] for r in v["rows"].values()]
    lo, hi = min(ratios), max(ratios)
    line = f"The runner reaches {lo:.2f}-{hi:.2f} of the resident-batch rate, waiting for data at most {v['worst_data_wait']:.2%} of its time"
    line += (
        ": with prefetch threads the data path costs the trainer next to nothing here." if lo >= 0.9 else "."
    )
    if hi > 1:
        line += " Ratios above 1 are run-to-run noise: both measurements cover only a few steps."
    lines = [line]
    if not m.get("gpu"):
        lines.append(
            "No GPU on the machine that measured this: bf16 + torch.compile + channels_last vs fp32 eager for resnet50 "
            "at batch 512 is still to be measured on one: `python -m bench.train --presets resnet50 --batch-size 512 "
            "trainer.bf16=true trainer.compile=true trainer.channels_last=true` against the same command without the "
            "three overrides."
        )
    return lines


SPEC = Spec(
    name="train",
    title="Pre-training throughput and data-wait share",
    doc=__doc__,
    measures="samples/s and data-wait share of the real pre-training runner (shards -> prefetch threads -> objective "
    "-> AdamW -> EMA), last logging window, per objective and preset.",
    baseline="the runner's step (forward, backward, clip, AdamW, EMA) repeated on one batch resident in memory.",
    measure=measure,
    setup=setup,
    tables=tables,
    interpret=interpret,
    options={
        "objectives": Opt(["curl", "siammae"], None, "objectives"),
        "presets": Opt(["tiny", "resnet50"], ["tiny"], "model presets"),
        "batch_size": Opt(None, None, "override the per-preset batch (e.g. 512 on a GPU)", type=int),
        "steps": Opt(None, None, "override the per-preset number of runner steps", type=int),
        "overrides": Opt(
            [],
            None,
            "pretrain config overrides for both rows, e.g. trainer.bf16=true trainer.compile=true",
            type=str,
            nargs="*",
            positional=True,
        ),
    },
    goals=[Goal("worst data-wait share", "worst_data_wait < 0.05", unit="%")],
)

if __name__ == "__main__":
    SPEC.main()
