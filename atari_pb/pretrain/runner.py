"""`atari-pb pretrain`: train the shared encoder under one objective, read top to bottom.

    shards -> ShardStream (global batch of step s drawn with seed (seed, s), this rank's slice)
           -> objective(batch, BatchRandom(seed, step), this rank's rows) -> loss -> AdamW + cosine, clipped
           -> EMA targets -> metrics.jsonl / TensorBoard -> checkpoint.pt (atomic) -> encoder.safetensors

Everything random derives from (seed, step), so `--resume` after a kill reaches the same weights as an
uninterrupted run (bit for bit on CPU), and torchrun's W ranks see exactly what one process with the same
global batch sees. Only rank 0 writes.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from atari_pb.augment import BatchRandom
from atari_pb.data import ShardSet, ShardStream, make_loader
from atari_pb.distributed import DistInfo, all_mean, all_sum, init_distributed
from atari_pb.errors import DataError, UsageError
from atari_pb.models.encoder import Encoder, export_encoder
from atari_pb.objectives import objective_class
from atari_pb.objectives.base import Objective, ema_update
from atari_pb.pretrain.checkpoint import kept_note, load_checkpoint, save_checkpoint
from atari_pb.pretrain.config import OptimConfig, PretrainConfig, check, to_yaml

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
ENCODER = "encoder.safetensors"
METRICS = "metrics.jsonl"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"trainer.device={name}: no CUDA device here; valid: auto, cpu")
    return device


def warmup_cosine(steps: int, optim: OptimConfig):
    """lr multiplier at step s: linear warm-up, then cosine from 1 down to final_lr_scale."""
    warm = int(optim.warmup * steps)

    def scale(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, steps - warm)
        return optim.final_lr_scale + (1 - optim.final_lr_scale) * 0.5 * (1 + math.cos(math.pi * progress))

    return scale


def make_optimizer(objective: Objective, optim: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in objective.parameters() if p.requires_grad]
    kind = torch.optim.AdamW if optim.optimizer == "adamw" else torch.optim.Adam
    return kind(params, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, weight_decay=optim.weight_decay)


def _same_run(saved: dict, cfg: PretrainConfig, name: str, path: Path) -> None:
    """A checkpoint continues only the run it came from."""
    if saved["objective_name"] != name:
        raise UsageError(
            f"{path} is a {saved['objective_name']} checkpoint, not {name}; resume with --objective {saved['objective_name']}"
        )
    now = json.loads(json.dumps(asdict(cfg)))
    for section in ("objective", "model", "optim", "data"):
        if saved["config"][section] != now[section]:
            raise UsageError(
                f"{path}: the run was made with {section}={saved['config'][section]}, not {now[section]}"
            )
    for key in ("batch_size", "accumulate", "seed"):
        if saved["config"]["trainer"][key] != now["trainer"][key]:
            raise UsageError(f"{path}: the run was made with trainer.{key}={saved['config']['trainer'][key]}")


class RunWriter:
    """Rank 0's outputs: config.yaml, metrics.jsonl, TensorBoard events, checkpoints, the encoder."""

    def __init__(self, out: Path, dist: DistInfo, resume_step: int | None):
        self.out = Path(out)
        self.active = dist.is_main
        self.tb = None
        if not self.active:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        metrics = self.out / METRICS
        if (
            resume_step is not None and metrics.exists()
        ):  # drop what the killed run logged after its checkpoint
            kept = [ln for ln in metrics.read_text().splitlines() if json.loads(ln)["step"] <= resume_step]
            metrics.write_text("".join(ln + "\n" for ln in kept))
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(self.out / "tb"), purge_step=resume_step)

    def config(self, cfg: PretrainConfig, name: str) -> None:
        if self.active:
            (self.out / "config.yaml").write_text(f"# atari-pb pretrain --objective {name}\n" + to_yaml(cfg))

    def metrics(self, step: int, values: dict[str, float]) -> None:
        if not self.active:
            return
        with open(self.out / METRICS, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        for key, value in values.items():
            self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def pretrain(name: str, data: Path, out: Path, cfg: PretrainConfig, resume: bool = False) -> Path:
    """Run (or continue) a pre-training run; returns the exported encoder's path."""
    check(cfg)
    t = cfg.trainer
    out = Path(out)
    device = pick_device(t.device)
    dist = init_distributed(device)
    if dist.world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    if t.batch_size % (dist.world_size * t.accumulate):
        raise UsageError(
            f"trainer.batch_size={t.batch_size} does not split into {dist.world_size} ranks x {t.accumulate} micro-batches"
        )
    checkpoint_path = out / CHECKPOINT
    if not resume and checkpoint_path.exists():
        raise UsageError(f"{out} already holds a run; continue it with --resume or choose another --out")
    if resume and not checkpoint_path.exists():
        raise UsageError(f"--resume: {checkpoint_path} does not exist")

    # data: fail now, not mid-run, when it cannot give the objective what it needs
    torch.manual_seed(t.seed)
    shards = ShardSet(data, games=cfg.data.games or None)
    encoder = Encoder(cfg.model)
    objective = objective_class(name)(cfg.objective, encoder, cfg.model.num_actions)
    spec = objective.sample_spec()
    shards.valid_starts(spec.frames, spec.t_step, spec.n_step)

    objective.to(device)
    if t.channels_last:
        objective.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(objective, cfg.optim)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(t.steps, cfg.optim))

    start = 0
    if resume:
        saved = load_checkpoint(checkpoint_path)
        _same_run(saved, cfg, name, checkpoint_path)
        objective.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng"])
        start = saved["step"]
        log.info("resuming %s at step %d of %d", out, start, t.steps)
    writer = RunWriter(out, dist, start if resume else None)
    writer.config(cfg, name)

    model: torch.nn.Module = objective
    if dist.world_size > 1:
        # every trainable parameter of every objective gets a gradient (tests/test_objectives.py), so DDP
        # needs no search for unused ones
        model = DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None
        )
    if t.compile:
        model = torch.compile(model)

    stream = ShardStream(
        shards,
        t.batch_size,
        spec,
        seed=t.seed,
        rank=dist.rank,
        world_size=dist.world_size,
        accumulate=t.accumulate,
        start_step=start * t.accumulate,
        num_steps=(t.steps - start) * t.accumulate,
    )
    batches = iter(make_loader(stream, num_workers=t.loader_threads, pin_memory=device.type == "cuda"))
    params = [p for p in objective.parameters() if p.requires_grad]
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")  # inf: measure the norm only

    def save(step: int) -> None:
        if dist.is_main:
            save_checkpoint(
                checkpoint_path,
                {
                    "objective_name": name,
                    "config": json.loads(json.dumps(asdict(cfg))),
                    "step": step,
                    "model": objective.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": torch.get_rng_state(),
                },
            )

    bar = tqdm(
        total=t.steps,
        initial=start,
        unit="step",
        desc=f"pretrain {name}",
        disable=None if dist.is_main else True,
    )
    totals: dict[str, float] = {}
    window_start, window_wait, window_samples = time.perf_counter(), 0.0, 0
    try:
        for step in range(start, t.steps):
            step_metrics: dict[str, torch.Tensor] = {}
            for micro in range(t.accumulate):
                wait_start = time.perf_counter()
                batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
                window_wait += time.perf_counter() - wait_start
                rand = BatchRandom(t.seed, step, stream.rows(micro), t.batch_size, device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.bf16):
                    loss, metrics = model(batch, rand)
                (loss / t.accumulate).backward()
                for key, value in {"loss": loss, **metrics}.items():
                    step_metrics[key] = step_metrics.get(key, 0.0) + value.detach().float() / t.accumulate
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
            bad = (~torch.isfinite(step_metrics["loss"])) | (~torch.isfinite(grad_norm))
            if all_sum(bad.float()).item() > 0:
                raise DataError(
                    f"objective {name}: loss or gradient is not finite at step {step + 1}; "
                    + kept_note(checkpoint_path)
                )
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            tau = objective.ema_tau((step + 1) / t.steps)
            for online, target in objective.ema_pairs():
                ema_update(target, online, tau)

            window_samples += t.batch_size
            for key, value in step_metrics.items():
                totals[key] = totals.get(key, 0.0) + value
            done = step + 1
            if done % t.log_every == 0 or done == t.steps:
                elapsed = time.perf_counter() - window_start
                n = t.log_every if done % t.log_every == 0 else done % t.log_every
                values = {k: all_mean(v / n).item() for k, v in totals.items()}
                values.update(
                    lr=scheduler.get_last_lr()[0],
                    grad_norm=grad_norm.item(),
                    samples_per_s=window_samples / elapsed,
                    data_wait=window_wait / elapsed,
                )
                writer.metrics(done, values)
                bar.set_postfix(
                    loss=f"{values['loss']:.4f}",
                    sps=f"{values['samples_per_s']:.0f}",
                    wait=f"{values['data_wait']:.0%}",
                )
                totals, window_start, window_wait, window_samples = {}, time.perf_counter(), 0.0, 0
            if done % t.save_every == 0 or done == t.steps:
                save(done)
            bar.update()
    finally:
        bar.close()
        writer.close()

    encoder_path = out / ENCODER
    if dist.is_main:
        export_encoder(
            objective.encoder, encoder_path, {"objective": name, "steps": t.steps, "data": str(data)}
        )
        log.info("pretrain %s: %d steps done; encoder at %s", name, t.steps, encoder_path)
    return encoder_path


def export_from_run(run: Path, out: Path) -> Path:
    """`atari-pb export-encoder RUN --out encoder.safetensors`: the encoder of a run's checkpoint."""
    path = Path(run) / CHECKPOINT
    if not path.is_file():
        raise UsageError(f"{path} does not exist; is {run} a pre-training run?")
    saved = load_checkpoint(path)
    from atari_pb.models.encoder import ModelConfig

    encoder = Encoder(ModelConfig(**saved["config"]["model"]))
    prefix = "encoder."
    encoder.load_state_dict({k[len(prefix) :]: v for k, v in saved["model"].items() if k.startswith(prefix)})
    return export_encoder(
        encoder, out, {"objective": saved["objective_name"], "steps": saved["step"], "run": str(run)}
    )
