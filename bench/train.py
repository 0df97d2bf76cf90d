"""Pre-training throughput: samples/s of the real runner (shards -> prefetch threads -> objective -> AdamW
-> EMA) vs the same steps on one batch already in memory, and the share of step time spent waiting for data.

    .venv/bin/python -m bench.train [--quick] [--objectives curl siammae] [--presets tiny resnet50]
    .venv/bin/python -m bench.train --presets resnet50 --batch-size 512 trainer.bf16=true trainer.compile=true \
        trainer.channels_last=true          # on a GPU: against the same command without the three overrides

Shards: the sampler benchmark's (real ALE frames, cached in bench/out/). The runner logs samples/s and its
data-wait share (time blocked on the loader / wall time) per window; the last window is reported, after
warm-up. The baseline repeats the runner's step (forward, backward, clip, AdamW, EMA) on one resident batch,
so their ratio is what the data path costs the trainer. Results: bench/out/train.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time

import torch

from bench.common import OUT, finish, log, machine_info, sampler_shards, table

# per preset: (global batch, runner steps); resnet50 on 2 CPU cores manages tens of samples/s
SIZES = {"tiny": (64, 40), "resnet18": (32, 8), "resnet50": (32, 6)}


def resident_batch_rate(
    name: str, preset: str, batch_size: int, steps: int, shards, overrides: list[str]
) -> float:
    """samples/s of the runner's step (same device, precision, compile, memory format) on one batch that
    never leaves the device."""
    from atari_pb.augment import BatchRandom
    from atari_pb.models.encoder import Encoder
    from atari_pb.objectives import objective_class
    from atari_pb.objectives.base import ema_update
    from atari_pb.pretrain.config import load_pretrain_config
    from atari_pb.pretrain.runner import make_optimizer, pick_device

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
        for online, target in objective.ema_pairs():
            ema_update(target, online, 0.99)

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
    from atari_pb.pretrain.config import load_pretrain_config
    from atari_pb.pretrain.runner import pretrain

    out = OUT / "train_runs" / f"{preset}_{name}"
    shutil.rmtree(out, ignore_errors=True)
    window = max(1, steps // 4)
    cfg = load_pretrain_config(
        name,
        [
            f"model.preset={preset}",
            f"trainer.steps={steps}",
            f"trainer.batch_size={batch_size}",
            f"trainer.log_every={window}",
            f"trainer.save_every={steps}",
        ],
    )
    pretrain(name, data, out, cfg)
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    shutil.rmtree(out, ignore_errors=True)
    return {"samples_per_s": last["samples_per_s"], "data_wait": last["data_wait"]}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny preset only, fewer steps")
    p.add_argument("--objectives", nargs="+", default=["curl", "siammae"])
    p.add_argument("--presets", nargs="+", default=None, help="default: tiny resnet50 (--quick: tiny)")
    p.add_argument("--batch-size", type=int, help="override the per-preset batch (e.g. 512 on a GPU)")
    p.add_argument("--steps", type=int, help="override the per-preset number of runner steps")
    p.add_argument(
        "overrides",
        nargs="*",
        help="pretrain config overrides for both rows, e.g. trainer.bf16=true trainer.compile=true trainer.channels_last=true",
    )
    args = p.parse_args(argv)
    presets = args.presets or (["tiny"] if args.quick else ["tiny", "resnet50"])
    t_start = time.perf_counter()
    torch.manual_seed(0)

    from atari_pb.data.sampler import ShardSet

    data = sampler_shards(5_000)
    shards = ShardSet(data)
    rows, values = [], {}
    for preset in presets:
        batch_size, steps = SIZES[preset]
        batch_size, steps = args.batch_size or batch_size, args.steps or steps
        if args.quick:
            steps = max(4, steps // 4)
        for name in args.objectives:
            log(f"{name} / {preset}: runner, {steps} steps of {batch_size}")
            run = runner_rate(name, preset, batch_size, steps, data, args.overrides)
            log(f"{name} / {preset}: resident batch")
            base = resident_batch_rate(name, preset, batch_size, max(3, steps // 2), shards, args.overrides)
            ratio = run["samples_per_s"] / base
            rows.append([name, preset, batch_size, run["samples_per_s"], base, ratio, run["data_wait"]])
            values[f"{preset}/{name}"] = {**run, "resident_samples_per_s": base, "ratio": ratio}
    worst_wait = max(v["data_wait"] for v in values.values())
    result = {
        "name": "train",
        "quick": args.quick,
        "machine": machine_info(),
        "setup": [
            f"Shards: {len(shards.shards)} shards, {len(shards):,} transitions of real ALE frames (the sampler "
            "benchmark's); default loader settings (trainer.loader_threads=2); fp32 on CPU, no compile.",
            "Runner rows: the last logging window of `atari-pb pretrain` (after warm-up). Resident rows: the same "
            "step repeated on one batch kept in memory.",
        ],
        "tables": [
            table(
                "Training throughput (CPU)",
                [
                    "objective",
                    "preset",
                    "batch",
                    "runner samples/s",
                    "resident-batch samples/s",
                    "runner / resident",
                    "data-wait share",
                ],
                rows,
            )
        ],
        "goals": [
            {"what": "worst data-wait share", "goal": "< 5%", "value": worst_wait, "met": worst_wait < 0.05}
        ],
        "values": values,
        "seconds": time.perf_counter() - t_start,
    }
    return finish("train", result)


if __name__ == "__main__":
    main()
