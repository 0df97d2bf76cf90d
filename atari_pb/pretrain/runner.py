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
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from atari_pb.augment import BatchRandom
from atari_pb.core.checkpoint import same_run
from atari_pb.core.device import pick_device
from atari_pb.core.schedules import epoch_steps, warmup_cosine
from atari_pb.core.writer import METRICS, RunWriter
from atari_pb.data import ShardSet, ShardStream, make_loader
from atari_pb.data.manifest import read_manifest
from atari_pb.data.provenance import check_provenance, data_key, data_provenance, describe
from atari_pb.distributed import DistInfo, all_mean, all_sum, finish_distributed, init_distributed
from atari_pb.errors import DataError, UsageError
from atari_pb.models.ema import ema_update
from atari_pb.models.encoder import Encoder, export_encoder
from atari_pb.objectives import objective_class
from atari_pb.objectives.base import Objective
from atari_pb.pretrain.checkpoint import kept_note, load_checkpoint, save_checkpoint
from atari_pb.pretrain.config import OptimConfig, PretrainConfig, check

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
ENCODER = "encoder.safetensors"
__all__ = ["CHECKPOINT", "ENCODER", "METRICS", "export_from_run", "pick_device", "pretrain"]


def make_optimizer(objective: Objective, optim: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in objective.parameters() if p.requires_grad]
    kind = torch.optim.AdamW if optim.optimizer == "adamw" else torch.optim.Adam
    return kind(params, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, weight_decay=optim.weight_decay)


def _same_run(saved: dict, cfg: PretrainConfig, name: str, path: Path) -> None:
    """A checkpoint continues only the run it came from (the budget and intervals may change)."""
    if saved["objective_name"] != name:
        raise UsageError(
            f"{path} is a {saved['objective_name']} checkpoint, not {name}; resume with --objective {saved['objective_name']}"
        )
    now = json.loads(json.dumps(asdict(cfg)))
    keys = ("trainer.batch_size", "trainer.accumulate", "trainer.seed")
    same_run(path, saved["config"], now, ("objective", "model", "optim", "data"), keys)


@dataclass
class _Run:
    """Everything one pre-training process holds; built by `_setup`, advanced by `_train_step`."""

    name: str
    cfg: PretrainConfig
    out: Path
    device: torch.device
    dist: DistInfo
    objective: Objective
    model: torch.nn.Module  # the objective, wrapped by DDP and torch.compile when asked
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    stream: ShardStream
    batches: object  # iterator over the stream's batches
    start: int
    writer: RunWriter
    provenance: dict  # the data it is pre-trained on (provenance.py), saved in every checkpoint
    params: list[torch.nn.Parameter] = field(default_factory=list)  # the trainable ones, for clipping

    def __post_init__(self) -> None:
        self.params = [p for p in self.objective.parameters() if p.requires_grad]

    @property
    def checkpoint(self) -> Path:
        return self.out / CHECKPOINT


@dataclass
class _Window:
    """Metrics summed since the last log line, with the data-wait time and the samples seen."""

    totals: dict[str, torch.Tensor] = field(default_factory=dict)
    start: float = field(default_factory=time.perf_counter)
    wait: float = 0.0
    samples: int = 0


def _setup_device(cfg: PretrainConfig) -> tuple[torch.device, DistInfo]:
    t = cfg.trainer
    device = pick_device(t.device, "trainer.device")
    dist = init_distributed(device)
    if dist.world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    if t.batch_size % (dist.world_size * t.accumulate):
        raise UsageError(
            f"trainer.batch_size={t.batch_size} does not split into {dist.world_size} ranks x {t.accumulate} micro-batches"
        )
    return device, dist


def _setup(name: str, data: Path, out: Path, cfg: PretrainConfig, resume: bool) -> _Run:
    """Check the request, build the objective, optimiser and data stream, restore a checkpoint."""
    t = cfg.trainer
    device, dist = _setup_device(cfg)
    checkpoint_path = out / CHECKPOINT
    if not resume and checkpoint_path.exists():
        raise UsageError(f"{out} already holds a run; continue it with --resume or choose another --out")
    if resume and not checkpoint_path.exists():
        raise UsageError(f"--resume: {checkpoint_path} does not exist")

    # data: fail now, not mid-run, when it cannot give the objective what it needs
    torch.manual_seed(t.seed)
    shards = ShardSet(data, games=cfg.data.games or None)
    provenance = data_provenance(read_manifest(data), cfg.data.games or None)  # the entries ShardSet reads
    objective = objective_class(name)(cfg.objective, Encoder(cfg.model), cfg.model.num_actions)
    spec = objective.sample_spec()
    starts = len(shards.valid_starts(spec.frames, spec.t_step, spec.n_step))
    if t.steps == 0:  # the run's length in epochs over the valid starts; config.yaml records the steps
        t.steps = epoch_steps(t.epochs, starts, t.batch_size)
        log.info(
            "pretrain %s: %g epochs of %d starts at batch %d = %d steps",
            name,
            t.epochs,
            starts,
            t.batch_size,
            t.steps,
        )

    objective.to(device)
    if t.channels_last:
        objective.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(objective, cfg.optim)
    schedule = warmup_cosine(t.steps, cfg.optim.warmup, cfg.optim.min_lr_scale)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    start = _restore(checkpoint_path, cfg, name, objective, optimizer, scheduler, provenance) if resume else 0
    writer = RunWriter(out, dist.is_main, start if resume else None)
    writer.config(cfg, f"atari-pb pretrain --objective {name}")

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
    return _Run(
        name,
        cfg,
        out,
        device,
        dist,
        objective,
        model,
        optimizer,
        scheduler,
        stream,
        batches,
        start,
        writer,
        provenance,
    )


def _restore(
    path: Path, cfg: PretrainConfig, name: str, objective, optimizer, scheduler, provenance: dict
) -> int:
    saved = load_checkpoint(path, "pretrain")
    _same_run(saved, cfg, name, path)
    before = saved.get("pretrain_data")  # absent in checkpoints written before runs recorded their data
    if before is not None and data_key(before) != data_key(provenance):
        # the shards changed under the run (more ingested, another directory): the encoder will say so
        log.warning(
            "%s: the run began on %s, it continues on %s; the encoder will record the latter",
            path,
            describe(before),
            describe(provenance),
        )
    objective.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"])
    log.info("resuming %s at step %d of %d", path.parent, saved["step"], cfg.trainer.steps)
    return saved["step"]


def _train_step(run: _Run, step: int, window: _Window) -> torch.Tensor:
    """One optimiser step over `accumulate` micro-batches, clipped, then the EMA targets; returns the
    gradient norm. A non-finite loss or gradient on any rank stops the run with the step."""
    t = run.cfg.trainer
    step_metrics: dict[str, torch.Tensor] = {}
    for micro in range(t.accumulate):
        wait_start = time.perf_counter()
        batch = {k: v.to(run.device, non_blocking=True) for k, v in next(run.batches).items()}
        window.wait += time.perf_counter() - wait_start
        rand = BatchRandom(t.seed, step, run.stream.rows(micro), t.batch_size, run.device)
        with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=t.bf16):
            loss, metrics = run.model(batch, rand)
        (loss / t.accumulate).backward()
        for key, value in {"loss": loss, **metrics}.items():
            step_metrics[key] = step_metrics.get(key, 0.0) + value.detach().float() / t.accumulate
    clip = run.cfg.optim.grad_clip if run.cfg.optim.grad_clip > 0 else float("inf")  # inf: measure only
    grad_norm = torch.nn.utils.clip_grad_norm_(run.params, clip)
    bad = (~torch.isfinite(step_metrics["loss"])) | (~torch.isfinite(grad_norm))
    if all_sum(bad.float()).item() > 0:
        raise DataError(
            f"objective {run.name}: loss or gradient is not finite at step {step + 1}; "
            + kept_note(run.checkpoint)
        )
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    ema_update(run.objective.ema_pairs(), run.objective.ema_tau((step + 1) / t.steps))
    window.samples += t.batch_size
    for key, value in step_metrics.items():
        window.totals[key] = window.totals.get(key, 0.0) + value
    return grad_norm


def _log(run: _Run, done: int, window: _Window, grad_norm: torch.Tensor, bar: tqdm) -> None:
    """The window's mean metrics (averaged over ranks), learning rate, throughput and data-wait share."""
    t = run.cfg.trainer
    elapsed = time.perf_counter() - window.start
    n = t.log_every if done % t.log_every == 0 else done % t.log_every
    values = {k: all_mean(v / n).item() for k, v in window.totals.items()}
    values.update(
        lr=run.scheduler.get_last_lr()[0],
        grad_norm=grad_norm.item(),
        samples_per_s=window.samples / elapsed,
        data_wait=window.wait / elapsed,
    )
    run.writer.metrics(done, values)
    bar.set_postfix(
        loss=f"{values['loss']:.4f}", sps=f"{values['samples_per_s']:.0f}", wait=f"{values['data_wait']:.0%}"
    )


def _save(run: _Run, step: int) -> None:
    if run.dist.is_main:
        state = {
            "objective_name": run.name,
            "config": json.loads(json.dumps(asdict(run.cfg))),
            "step": step,
            "model": run.objective.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "pretrain_data": run.provenance,  # so export-encoder needs no data (provenance.py)
        }
        save_checkpoint(run.checkpoint, state)


def pretrain(name: str, data: Path, out: Path, cfg: PretrainConfig, resume: bool = False) -> Path:
    """Run (or continue) a pre-training run; returns the exported encoder's path."""
    check(cfg)
    t = cfg.trainer
    run = _setup(name, data, Path(out), cfg, resume)
    bar = tqdm(
        total=t.steps,
        initial=run.start,
        unit="step",
        desc=f"pretrain {name}",
        disable=None if run.dist.is_main else True,
    )
    window = _Window()
    try:
        for step in range(run.start, t.steps):
            grad_norm = _train_step(run, step, window)
            done = step + 1
            if done % t.log_every == 0 or done == t.steps:
                _log(run, done, window, grad_norm, bar)
                window = _Window()
            if done % t.save_every == 0 or done == t.steps:
                _save(run, done)
            bar.update()
    finally:
        bar.close()
        run.writer.close()

    encoder_path = run.out / ENCODER
    if run.dist.is_main:
        meta = {"objective": name, "steps": t.steps, "data": str(data), "pretrain_data": run.provenance}
        export_encoder(run.objective.encoder, encoder_path, meta)
        log.info("pretrain %s: %d steps done; encoder at %s", name, t.steps, encoder_path)
    finish_distributed()
    return encoder_path


def export_from_run(run: Path, out: Path) -> Path:
    """`atari-pb export-encoder RUN --out encoder.safetensors`: the encoder of a run's checkpoint."""
    path = Path(run) / CHECKPOINT
    if not path.is_file():
        raise UsageError(f"{path} does not exist; is {run} a pre-training run?")
    saved = load_checkpoint(path, "pretrain")
    from atari_pb.models.encoder import ModelConfig

    encoder = Encoder(ModelConfig(**saved["config"]["model"]))
    prefix = "encoder."
    encoder.load_state_dict({k[len(prefix) :]: v for k, v in saved["model"].items() if k.startswith(prefix)})
    # None (unknown) for a checkpoint written before runs recorded their data: its config does not name
    # the shard directory, so there is nothing to compute it from
    try:
        provenance = check_provenance(saved.get("pretrain_data"))
    except DataError as err:
        raise DataError(f"{path}: {err}") from None
    meta = {"objective": saved["objective_name"], "steps": saved["step"], "run": str(run)}
    return export_encoder(encoder, out, {**meta, "pretrain_data": provenance})
