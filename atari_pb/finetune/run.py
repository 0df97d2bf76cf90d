"""`atari-pb finetune`: fine-tune an encoder on every (game, seed) of a split, evaluate, write records.

    encoder (an exported file, or a baseline: `random` = frozen random backbone, `e2e` = backbone trained,
             or one a protocol declares in `Protocol.baselines`)
      -> the protocol's `train` (a registered module: offline_bc, rainbow, ...; finetune/base.py)
      -> evaluation rollouts (eval/<split>.yaml: episodes, parallel envs, epsilon 0.001), or the protocol's
         own score for protocols with `rollouts = False`
      -> RESULTS/<method>/<protocol>/<game>/seed<k>.json

A finished record is never recomputed, so a sweep that was stopped continues where it was, and a whole
split is one command; `workers` runs that many (game, seed) jobs at once in separate processes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from atari_pb.data.provenance import check_provenance
from atari_pb.errors import AtariPBError, DataError, UsageError
from atari_pb.eval.protocol import load_eval_config
from atari_pb.eval.records import ResultRecord, record_path, write_record
from atari_pb.finetune.base import (
    FinetuneResult,
    FinetuneTask,
    Protocol,
    load_protocol_config,
    protocol_class,
    protocol_names,
    protocol_scoring,
)
from atari_pb.finetune.resume import JobCheckpoint, remove_checkpoint
from atari_pb.finetune.sizing import check_fleet_fits
from atari_pb.games import get_game
from atari_pb.models.encoder import (
    ENCODER_FORMAT,
    Encoder,
    ModelConfig,
    config_path,
    load_encoder,
    read_config,
)

log = logging.getLogger(__name__)

BASELINES = ("random", "e2e")  # every protocol's; a protocol adds its own in `Protocol.baselines`


@dataclass(frozen=True)
class Job:
    protocol: str
    encoder: str  # a path, or a baseline name
    method: str
    preset: str  # for baselines: the backbone to initialise
    split: str
    game: str
    seed: int
    results: str
    data: str | None  # the protocol's data directory (`needs_data`: shards, probe data)
    overrides: tuple[str, ...]
    eval_overrides: tuple[str, ...]
    save_agent: bool = False  # keep the trained agent (for `collect --policy eps-greedy:`)
    checkpoints: str | None = None  # resumable protocols: <checkpoints>/<method>/<protocol>/<game>/seed<k>/
    checkpoint_every: int = 0  # gradient updates between checkpoints; 0: none
    keep_checkpoint: bool = False  # keep the last checkpoint once the record is written
    fleet: bool = False  # --fleet: trained with the jobs that share its backbone (compute_fleet)


def baselines(protocol: str) -> tuple[str, ...]:
    """The baselines `--encoder` may name with `protocol`: random, e2e and the protocol's own."""
    return (*BASELINES, *protocol_class(protocol).baselines)


def check_baseline(protocol: str, encoder: str) -> None:
    """A baseline that another protocol declares is refused with the protocols that take it."""
    if encoder in baselines(protocol):
        return
    owners = [name for name in protocol_names() if encoder in protocol_class(name).baselines]
    if owners:
        raise UsageError(
            f"--encoder {encoder}: a baseline of the {', '.join(owners)} protocol only, not of {protocol} "
            f"(its baselines: {', '.join(baselines(protocol))})"
        )


def method_name(encoder: str, names: Sequence[str] = BASELINES) -> str:
    """A baseline's own name (`names`: the baselines of the protocol); for an exported encoder, the
    objective it was pre-trained with."""
    if encoder in names:
        return encoder
    path = Path(encoder)
    try:
        objective = json.loads(config_path(path).read_text())["metadata"].get("objective")
    except (OSError, ValueError, KeyError):
        objective = None
    return objective or path.parent.name or path.stem


def agent_path(results: Path, method: str, protocol: str, game: str, seed: int) -> Path:
    """Where `--save-agent` keeps an agent: beside its record, out of the records' glob."""
    return Path(results) / method / protocol / game / "agents" / f"seed{seed}.safetensors"


def build_encoder(job: Job) -> tuple[Encoder, str, bool]:
    """(encoder, SHA-256 of its file or "", train the backbone?). A baseline gets a freshly initialised
    encoder of `job.preset` (a protocol's own baseline decides in `train` what it uses of it)."""
    check_baseline(job.protocol, job.encoder)
    if job.encoder in baselines(job.protocol):
        torch.manual_seed(job.seed)
        return Encoder(ModelConfig(preset=job.preset)), "", job.encoder == "e2e"
    digest = hashlib.sha256(Path(job.encoder).read_bytes()).hexdigest()
    return load_encoder(job.encoder), digest, False


def encoder_pretrain_data(encoder: str | Path) -> dict | None:
    """The data an exported encoder was pre-trained on (its JSON's metadata.pretrain_data, provenance.py);
    None for an encoder exported before encoders recorded it: unknown."""
    metadata = read_config(encoder, ENCODER_FORMAT, "an encoder").get("metadata")
    try:
        return check_provenance(metadata.get("pretrain_data") if isinstance(metadata, dict) else None)
    except DataError as err:
        raise DataError(f"{config_path(encoder)}: metadata.{err}") from None


def rollout_score(result: FinetuneResult, job: Job, ev) -> tuple[float, list[float]]:
    """(mean return, every episode's return) of the trained agent in the split's evaluation env."""
    from atari_pb.eval.rollout import evaluate

    scores = evaluate(
        result.agent.act,
        get_game(job.game),
        episodes=ev.episodes,
        num_envs=ev.num_envs,
        epsilon=ev.epsilon,
        seed=10_000 + job.seed,
        env=ev.env,
        device=next(result.agent.parameters()).device,
    )
    return float(scores.mean), [float(s) for s in scores.scores]


def score_result(protocol: type[Protocol], result: FinetuneResult, job: Job, ev) -> tuple[float, list[float]]:
    """(score, episode scores): rollouts, or the protocol's own score (no episodes)."""
    if protocol.rollouts:
        return rollout_score(result, job, ev)
    if result.score is None or not math.isfinite(result.score):
        raise AtariPBError(f"the {protocol.name} protocol scores itself but gave score {result.score!r}")
    return float(result.score), []


def run_job(job: Job) -> Path:
    """Fine-tune, evaluate and write one record; returns its path."""
    return write_job(job, compute_job(job))


@dataclass
class JobOutput:
    """What a job computed, for the process that writes it (a Ray driver has no file system in common
    with its workers): the record, and with --save-agent the agent's files (name -> bytes)."""

    record: ResultRecord
    agent_files: dict[str, bytes] = field(default_factory=dict)


@dataclass
class PreparedJob:
    """A job with everything its training needs loaded and checked: `task` goes to the protocol."""

    job: Job
    protocol: type[Protocol]
    cfg: Any
    ev: Any
    digest: str
    train_backbone: bool
    task: FinetuneTask
    pretrain_data: dict | None = None  # the encoder's (encoder_pretrain_data); None: a baseline, or unknown


def prepare_job(job: Job, encoders: dict | None = None) -> PreparedJob:
    """Load and check what `job` trains from; `encoders` caches built encoders between the jobs of a fleet
    (one encoder, one backbone in memory)."""
    game = get_game(job.game)
    protocol = protocol_class(job.protocol)
    cfg = load_protocol_config(job.protocol, job.overrides)
    ev = load_eval_config(job.split, job.eval_overrides)
    if encoders is None:
        encoder, digest, train_backbone = build_encoder(job)
    else:
        key = backbone_key(job)
        if key not in encoders:
            encoders[key] = build_encoder(job)
        encoder, digest, train_backbone = encoders[key]
    baseline = job.encoder if job.encoder in baselines(job.protocol) else ""
    data = Path(job.data) if job.data else None
    checkpoint = job_checkpoint(job, protocol, cfg, digest, train_backbone)
    task = FinetuneTask(
        game, encoder, job.seed, train_backbone, data, baseline=baseline, checkpoint=checkpoint
    )
    pretrain_data = None if baseline else encoder_pretrain_data(job.encoder)
    return PreparedJob(job, protocol, cfg, ev, digest, train_backbone, task, pretrain_data)


def compute_job(job: Job) -> JobOutput:
    """Fine-tune and evaluate one job; nothing is written but its checkpoints."""
    prepared = prepare_job(job)
    return finish_job(prepared, prepared.protocol.train(prepared.cfg, prepared.task))


def finish_job(prepared: PreparedJob, result: FinetuneResult, extra: dict | None = None) -> JobOutput:
    """Score a trained job and build its record (`extra`: more config keys, e.g. the fleet it ran in)."""
    job, protocol, cfg, ev = prepared.job, prepared.protocol, prepared.cfg, prepared.ev
    game = prepared.task.game
    agent_files = saved_agent_files(protocol, result, game) if job.save_agent else {}
    score, episode_scores = score_result(protocol, result, job, ev)
    config = {
        "protocol": asdict(cfg),
        **({"eval": asdict(ev)} if protocol.rollouts else {}),
        "encoder": job.encoder,
        "preset": job.preset,
        "train_backbone": prepared.train_backbone,
        # what the encoder was pre-trained on; None for a baseline (no encoder file, no encoder_sha256) and
        # for an encoder that does not say (unknown)
        "pretrain_data": prepared.pretrain_data,
        "train_seconds": result.seconds,
        **result.summary,
        **(extra or {}),
    }
    record = ResultRecord(
        method=job.method,
        protocol=job.protocol,
        split=job.split,
        game=game.name,
        seed=job.seed,
        score=score,
        episodes=len(episode_scores),
        gradient_steps=int(result.gradient_steps),
        env_steps=int(result.env_steps),
        encoder_sha256=prepared.digest,
        config=json.loads(json.dumps(config, default=str)),
        episode_scores=episode_scores,
        scoring=protocol_scoring(protocol).to_json(),
    )
    return JobOutput(record, agent_files)


def backbone_key(job: Job) -> tuple:
    """Jobs with the same key fine-tune the same frozen backbone: an encoder file's, or a baseline's
    (whose random initialisation is seeded by the job's seed: one backbone per seed)."""
    baseline = job.encoder in baselines(job.protocol)
    return (job.protocol, job.encoder, job.preset, job.seed if baseline else None, job.overrides)


def fleets(jobs: Sequence[Job], size: int) -> list[tuple[Job, ...]]:
    """Group jobs that share a frozen backbone and a configuration into fleets of at most `size` agents."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault(backbone_key(job), []).append(job)
    return [tuple(g[i : i + size]) for g in groups.values() for i in range(0, len(g), size)]


def check_fleet_request(jobs: Sequence[Job]) -> None:
    """--fleet: the protocol must train fleets and the backbone must be frozen (one line, exit 2)."""
    for job in jobs:
        check_fleetable(job.protocol, [job.encoder])


def check_fleetable(protocol: str, encoders: Sequence[str]) -> None:
    if not protocol_class(protocol).fleet:
        able = ", ".join(n for n in protocol_names() if protocol_class(n).fleet)
        raise UsageError(f"--fleet: the {protocol} protocol does not train fleets (those that do: {able})")
    if "e2e" in encoders:
        raise UsageError(
            "--fleet with e2e: a fleet shares one frozen backbone, e2e trains its own; run e2e without --fleet"
        )


def compute_fleet(jobs: Sequence[Job], progress: bool = True) -> list[JobOutput]:
    """Train the jobs' agents as one fleet (Protocol.train_fleet), then score each and build its record,
    the record a standalone run writes plus `config.fleet` (its size and members)."""
    keys = {backbone_key(j) for j in jobs}
    if len(keys) != 1:
        raise UsageError(
            f"a fleet must share one encoder, protocol and configuration; got {len(keys)} kinds of job"
        )
    check_fleet_request(jobs)
    check_fleet_fits(jobs)  # this device, now: the sweep may have sized the fleet on another machine
    encoders: dict = {}
    prepared = [prepare_job(dataclasses.replace(j, checkpoints=None), encoders) for j in jobs]
    first = prepared[0]
    checkpoint = fleet_checkpoint(jobs, first)
    results = first.protocol.train_fleet(first.cfg, [p.task for p in prepared], progress, checkpoint)
    members = [f"{j.game} seed {j.seed}" for j in jobs]
    return [
        finish_job(p, r, {"fleet": {"size": len(jobs), "members": members}})
        for p, r in zip(prepared, results, strict=True)
    ]


def fleet_checkpoint(jobs: Sequence[Job], first: PreparedJob) -> JobCheckpoint | None:
    job = jobs[0]
    if not (job.checkpoints and job.checkpoint_every > 0):
        return None
    what = {"method": job.method, "encoder_sha256": first.digest, "preset": job.preset, "members": fleet_members(jobs),
            "data": job.data}  # fmt: skip
    identity = {"job": what, "protocol": asdict(first.cfg)}
    return JobCheckpoint(
        fleet_checkpoint_dir(jobs), f"finetune-{job.protocol}-fleet", identity, job.checkpoint_every
    )


def fleet_members(jobs: Sequence[Job]) -> list[str]:
    return [f"{j.split}/{j.game}/seed{j.seed}" for j in jobs]


def fleet_checkpoint_dir(jobs: Sequence[Job]) -> Path:
    """<checkpoints>/<method>/<protocol>/fleet-<hash of its members>/"""
    name = "fleet-" + hashlib.sha256("\n".join(fleet_members(jobs)).encode()).hexdigest()[:12]
    return Path(jobs[0].checkpoints) / jobs[0].method / jobs[0].protocol / name


def run_fleet(jobs: tuple[Job, ...]) -> list[Path]:
    """Train, score and write a fleet's records."""
    return write_unit(jobs, compute_fleet(jobs))


def compute_unit(unit: tuple[Job, ...], progress: bool = True) -> list[JobOutput]:
    return compute_fleet(unit, progress) if is_fleet(unit) else [compute_job(unit[0])]


def write_unit(unit: tuple[Job, ...], outputs: Sequence[JobOutput]) -> list[Path]:
    """Write a unit's records (a job's, or a fleet's), then drop its checkpoint unless asked to keep it."""
    if not is_fleet(unit):
        return [write_job(unit[0], outputs[0])]
    paths = [
        write_job(dataclasses.replace(j, checkpoints=None), o) for j, o in zip(unit, outputs, strict=True)
    ]
    if unit[0].checkpoints and not unit[0].keep_checkpoint:
        remove_checkpoint(fleet_checkpoint_dir(unit))
    return paths


def saved_agent_files(protocol: type[Protocol], result: FinetuneResult, game) -> dict[str, bytes]:
    """The agent's files as `protocol.save_agent` writes them (weights and the JSON beside them)."""
    with tempfile.TemporaryDirectory() as tmp:
        protocol.save_agent(result, game, Path(tmp) / "agent.safetensors")
        return {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir())}


def write_job(job: Job, output: JobOutput) -> Path:
    """Write a job's agent files and record (the record last: it marks the job finished), then drop its
    checkpoint unless asked to keep it."""
    record = output.record
    if output.agent_files:
        path = agent_path(Path(job.results), job.method, job.protocol, job.game, job.seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        for name, data in output.agent_files.items():
            (path.parent / name.replace("agent", path.stem, 1)).write_bytes(data)
        log.info("saved the trained agent to %s", path)
    path = write_record(Path(job.results), record)
    if job.checkpoints and not job.keep_checkpoint:
        remove_checkpoint(checkpoint_dir(job))  # the record is written: nothing left to resume
    log.info(
        "%s %s %s seed %d: score %.3f over %d episodes -> %s",
        job.method,
        job.protocol,
        job.game,
        job.seed,
        record.score,
        record.episodes,
        path,
    )
    return path


def checkpoint_dir(job: Job) -> Path:
    return Path(job.checkpoints) / job.method / job.protocol / job.game / f"seed{job.seed}"


def job_checkpoint(
    job: Job, protocol: type[Protocol], cfg, digest: str, train_backbone: bool
) -> JobCheckpoint | None:
    """The job's checkpoint, for resumable protocols when checkpoints are asked for. Its identity is what
    the job computes from: another encoder, game, seed or protocol setting is another job."""
    if not (protocol.resumable and job.checkpoints and job.checkpoint_every > 0):
        return None
    directory = checkpoint_dir(job)
    what = {"method": job.method, "encoder_sha256": digest, "preset": job.preset, "game": job.game,
            "seed": job.seed, "train_backbone": train_backbone, "data": job.data}  # fmt: skip
    return JobCheckpoint(
        directory, f"finetune-{job.protocol}", {"job": what, "protocol": asdict(cfg)}, job.checkpoint_every
    )


def check_frames(encoder: str, protocol: type[Protocol], cfg, ev, data_frames: int | None) -> None:
    """The encoder must take the frame stacks of everything it will see: the protocol's env, the evaluation
    env (rollout protocols) and the protocol's data (when it says)."""
    frames = load_encoder(encoder).cfg.frames  # a missing, corrupt or misshapen file fails here
    wanted = {
        "the protocol stacks {} (env.frames)": protocol.env_frames(cfg),
        "the evaluation env stacks {} (eval.env.frames)": ev.env.frames if protocol.rollouts else None,
        f"the {protocol.name} data holds {{}}-frame stacks": data_frames,
    }
    for source, n in wanted.items():
        if n is not None and n != frames:
            raise UsageError(f"encoder {encoder} takes {frames}-frame stacks; {source.format(n)}")


def plan(
    protocol: str,
    encoder: str,
    split: str,
    games: Sequence[str],
    seeds: Sequence[int],
    results: Path,
    data: Path | None = None,
    method: str | None = None,
    preset: str = "resnet50",
    overrides: Sequence[str] = (),
    eval_overrides: Sequence[str] = (),
    save_agent: bool = False,
) -> list[Job]:
    """Every (game, seed) job, checked before anything runs."""
    spec = protocol_class(protocol)  # an unknown name fails with the valid ones
    check_baseline(protocol, encoder)
    if spec.needs_data:
        if data is None:
            raise UsageError(f"{protocol} needs --data: the directory of the games' {protocol} data")
        if not Path(data).is_dir():
            raise UsageError(f"data directory {data} does not exist")
    if save_agent and not spec.can_save_agent:
        raise UsageError(f"--save-agent: the {protocol} protocol cannot save its agents")
    if results.exists() and not results.is_dir():
        raise UsageError(f"results {results} is a file; it must be a directory")
    ev = load_eval_config(split, [*eval_overrides, *([f"games=[{','.join(games)}]"] if games else [])])
    cfg = load_protocol_config(protocol, overrides)  # unknown keys and bad values fail now
    chosen = spec.select_games(cfg, split, ev.games, bool(games))
    data_frames = spec.check_data(cfg, Path(data), chosen) if spec.needs_data else None
    if encoder not in baselines(protocol):
        check_frames(encoder, spec, cfg, ev, data_frames)
        encoder_pretrain_data(encoder)  # a malformed one fails now, not after the training
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise UsageError(f"seeds {list(seeds)}: must be distinct integers >= 0")
    name = method or method_name(encoder, baselines(protocol))
    return [
        Job(
            protocol,
            str(encoder),
            name,
            preset,
            split,
            game,
            seed,
            str(results),
            str(data) if data else None,
            tuple(overrides),
            tuple(eval_overrides),
            save_agent,
        )
        for game in chosen
        for seed in seeds
    ]


def games_by_split(splits: Sequence[str], games: Sequence[str]) -> dict[str, list[str]]:
    """The requested games of each split ([] = all of the split's); with several splits, a game goes to
    its own split, and a game of none of them is an error naming the game's split."""
    from atari_pb.games import SPLITS

    for split in splits:
        if split not in SPLITS:
            raise UsageError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if len(set(splits)) != len(splits):
        raise UsageError(f"splits {list(splits)}: each at most once")
    if len(splits) == 1 or not games:
        return {split: list(games) for split in splits}  # one split: plan() names misplaced games
    chosen: dict[str, list[str]] = {split: [] for split in splits}
    for name in games:
        game = get_game(name)
        if game.split not in chosen:
            raise UsageError(f"game {game.name!r} is in split {game.split}, not {' or '.join(splits)}")
        chosen[game.split].append(game.name)
    return {split: names for split, names in chosen.items() if names}


def finetune(jobs: Sequence[Job], workers: int = 1, fleet_size: int = 0) -> tuple[list[Path], list[str]]:
    """Run the jobs whose record does not exist yet; returns (records written, one error line per failed
    job or fleet). A failing one does not stop the others. `fleet_size` > 0 trains the jobs that share a
    frozen backbone as fleets of at most that many agents (compute_fleet), one fleet per worker."""
    todo = unfinished(jobs)
    units = work_units(todo, fleet_size)
    written, errors = [], []
    if workers <= 1:
        for unit in units:
            try:
                written += run_unit(unit)
            except AtariPBError as err:
                errors.append(f"{describe(unit)}: {err}")
        return written, errors
    ctx = multiprocessing.get_context("spawn")
    # the workers share the cores: torch threads beyond a worker's share only contend with the others'
    # and with the emulators' threads
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=torch.set_num_threads, initargs=(threads,)
    ) as pool:
        pending = {pool.submit(run_unit, unit): unit for unit in units}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                unit = pending.pop(fut)
                try:
                    written += fut.result()
                except AtariPBError as err:
                    errors.append(f"{describe(unit)}: {err}")
    return written, errors


def unfinished(jobs: Sequence[Job]) -> list[Job]:
    """The jobs whose record does not exist yet (a finished record is never recomputed)."""
    todo = [
        j for j in jobs if not record_path(Path(j.results), j.method, j.protocol, j.game, j.seed).exists()
    ]
    log.info("finetune: %d jobs, %d already finished", len(jobs), len(jobs) - len(todo))
    return todo


def work_units(jobs: Sequence[Job], fleet_size: int) -> list[tuple[Job, ...]]:
    """What a worker runs at a time: one job, or with fleets one fleet of jobs."""
    if fleet_size > 0:
        check_fleet_request(jobs)
        return fleets(jobs, fleet_size)
    return [(job,) for job in jobs]


def is_fleet(unit: tuple[Job, ...]) -> bool:
    return len(unit) > 1 or unit[0].fleet


def run_unit(unit: tuple[Job, ...]) -> list[Path]:
    return run_fleet(unit) if is_fleet(unit) else [run_job(unit[0])]


def describe(unit: tuple[Job, ...]) -> str:
    if not is_fleet(unit):
        return f"{unit[0].game} seed {unit[0].seed}"
    return f"fleet of {len(unit)} ({', '.join(f'{j.game} seed {j.seed}' for j in unit)})"
