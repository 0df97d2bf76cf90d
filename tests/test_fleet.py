"""Fleet fine-tuning (`finetune --fleet`, atari_pb/finetune/offline_bc_fleet.py and rainbow_fleet.py): agents that share one frozen
backbone trained in lockstep with one backbone pass per step. A fleet of one is the standalone job bit for
bit; in a fleet of several each agent matches its standalone run to floating-point tolerance; a killed
fleet resumes; its records are standalone records plus `config.fleet`, and `eval` reads them alike."""

from __future__ import annotations

import copy
import glob
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from atari_pb.data.ingest import ingest
from atari_pb.envs.atari import num_actions
from atari_pb.finetune.base import FinetuneTask
from atari_pb.finetune.offline_bc import load_offline_bc_config, setup_bc_run, train_offline_bc
from atari_pb.finetune.offline_bc_fleet import train_offline_bc_fleet
from atari_pb.finetune.rainbow import RainbowAgent, load_rainbow_config, train_rainbow
from atari_pb.finetune.rainbow_fleet import train_rainbow_fleet
from atari_pb.finetune.resume import JobCheckpoint
from atari_pb.games import get_game, resolve_games
from atari_pb.models.encoder import Encoder, ModelConfig, export_encoder
from tests.conftest import CKPTS, RUNS, SAMPLES, one_error_line, run_cli
from tests.test_resume import kill_after_checkpoint, record_without_timing

STEPS = 200  # updates of the in-process comparisons ("a few hundred")
OVERRIDES = [f"train.max_steps={STEPS}", "train.batch_size=16", "train.loader_threads=0"]
CLI_STEPS = 60  # the command-line sweeps


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    torch.manual_seed(3)
    return Encoder(ModelConfig(preset="tiny"))


def standalone(encoder: Encoder, shard_dir: Path, game: str, seed: int):
    cfg = load_offline_bc_config(OVERRIDES).train
    return train_offline_bc(get_game(game), encoder, shard_dir, num_actions(get_game(game)), cfg, seed,
                            progress=False)  # fmt: skip


def fleet(encoder: Encoder, shard_dir: Path, members):
    cfg = load_offline_bc_config(OVERRIDES).train
    tasks = [FinetuneTask(get_game(g), encoder, s, data=shard_dir, progress=False) for g, s in members]
    return train_offline_bc_fleet(cfg, tasks, progress=False)


def trained(net) -> dict[str, torch.Tensor]:
    return {k: v for k, v in net.state_dict().items() if not k.startswith("backbone.")}


def test_a_fleet_of_one_is_the_standalone_job_bit_for_bit(encoder, shard_dir):
    alone = standalone(encoder, shard_dir, "breakout", 1)
    (one,) = fleet(encoder, shard_dir, [("breakout", 1)])
    a, b = trained(alone.agent), trained(one.agent)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (
        one.summary["train_accuracy"] == alone.train_accuracy and one.gradient_steps == alone.steps == STEPS
    )


@pytest.fixture(scope="module")
def breakout_run_1(replay_tree, tmp_path_factory) -> Path:
    """Shards of breakout's first run only: half the data of `shard_dir`'s breakout, so a member trained on
    it has half the steps and its own learning-rate schedule (a game with less data)."""
    dst = tmp_path_factory.mktemp("half_shards")
    report = ingest(replay_tree, dst, resolve_games(["breakout"]), RUNS[:1], CKPTS, SAMPLES)
    assert not report.errors
    return dst


def test_each_agent_of_a_fleet_matches_its_standalone_run(encoder, shard_dir, breakout_run_1):
    """Three agents trained for 0.8 epochs of their data, one on half as much (so 100 steps against 200, a
    schedule of its own, and it leaves the stacked heads half way). The fleet runs its backbone on 3x the
    batch and the necks and heads stacked (one vmapped call, batched matmuls, stacking.adamw_step_ with
    per-agent learning rates). Tolerance 1e-3 on every trained weight (of order 1): where a summation
    order depends on the shapes (oneDNN's, cuDNN's, BLAS's choices), results differ in the last bits, and
    AdamW turns differences of near-zero gradients into up to lr-sized steps (1e-3 here). It stays 100x
    below what training moved the weights (checked below). Measured on this CPU: at most 3e-7 (199, 100
    and 199 steps)."""
    members = [("breakout", 0, shard_dir), ("breakout", 1, breakout_run_1), ("pong", 1, shard_dir)]
    cfg = load_offline_bc_config([*OVERRIDES, "train.max_steps=0", "train.epochs=0.8"]).train
    tasks = [FinetuneTask(get_game(g), encoder, s, data=d, progress=False) for g, s, d in members]
    results = train_offline_bc_fleet(cfg, tasks, progress=False)
    steps = [r.gradient_steps for r in results]
    assert steps[1] < steps[0] * 0.6 and steps[0] >= 150, steps  # unequal lengths and schedules
    for (game, seed, data), result in zip(members, results, strict=True):
        game_ = get_game(game)
        alone = train_offline_bc(game_, encoder, data, num_actions(game_), cfg, seed, progress=False)
        a, b = trained(alone.agent), trained(result.agent)
        worst = max((a[k] - b[k]).abs().max().item() for k in a)
        assert worst < 1e-3, f"{game} seed {seed}: max |difference| {worst:g}"
        init = setup_bc_run(game_, encoder, data, num_actions(game_), cfg, seed).agent
        moved = max((a[k] - trained(init)[k]).abs().max().item() for k in a)
        assert moved > 100 * worst  # the agents trained: the tolerance is far below what training changed
        assert result.gradient_steps == alone.steps


def test_stacked_adamw_and_clipping_are_each_agents_own():
    """stacking.clip_per_agent_ + adamw_step_ on three stacked agents at three learning rates that change
    every step, against torch's clip_grad_norm_ and AdamW on each agent's own module: equal to float
    rounding after 25 steps, moments included once scattered back."""
    from atari_pb.finetune.stacking import (
        adamw_step_,
        clip_per_agent_,
        gather_adam_states,
        scatter_,
        stack_parts,
    )

    torch.manual_seed(0)
    own = [
        torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3)) for _ in range(3)
    ]
    twins = [copy.deepcopy(m) for m in own]
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.1) for m in twins]
    params, _ = stack_parts(own)
    states = gather_adam_states(params, own, [torch.optim.AdamW(m.parameters()) for m in own])
    assert states == {}  # fresh agents: no moments yet
    for step in range(25):
        lrs = [1e-3 * (1 + k) * (1 + 0.1 * step) for k in range(3)]
        x = torch.randn(3, 8, 6)
        targets = torch.randn(3, 8, 3)
        for p in params.values():
            p.grad = None
        outputs = torch.func.vmap(lambda p, rows: torch.func.functional_call(own[0], p, (rows,)))(params, x)
        ((outputs - targets) ** 2).mean((1, 2)).sum().backward()
        norms = clip_per_agent_([p.grad for p in params.values()], 0.5)
        adamw_step_(list(params.values()), states, lrs, (0.9, 0.999), 1e-8, 0.1)
        for k, (twin, opt) in enumerate(zip(twins, opts, strict=True)):
            opt.param_groups[0]["lr"] = lrs[k]
            opt.zero_grad()
            ((twin(x[k]) - targets[k]) ** 2).mean().backward()
            norm = torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.5)
            assert norms[k].item() == pytest.approx(norm.item(), rel=1e-5)
            opt.step()
    owners = [torch.optim.AdamW(m.parameters()) for m in own]
    scatter_(params, own, states, owners)
    for mine, twin, owner, opt in zip(own, twins, owners, opts, strict=True):
        for a, b in zip(mine.parameters(), twin.parameters(), strict=True):
            assert torch.allclose(a, b, atol=1e-6)
            assert torch.allclose(owner.state[a]["exp_avg_sq"], opt.state[b]["exp_avg_sq"], atol=1e-9)
            assert owner.state[a]["step"] == opt.state[b]["step"] == 25


# ------------------------------------------------------------------------------------ the command line
CLI = ["finetune", "--protocol", "offline_bc", "--split", "id", "near_ood", "--games", "breakout", "pong"]
CLI += ["--seeds", "0", "1", "--episodes", "1", "--eval-envs", "1", "eval.env.horizon=100", *OVERRIDES]
CLI += [f"train.max_steps={CLI_STEPS}"]  # the last value of a key wins


@pytest.fixture(scope="module")
def encoder_file(encoder, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fleet_encoder") / "encoder.safetensors"
    return export_encoder(encoder, path, {"objective": "curl"})


@pytest.fixture(scope="module")
def swept(encoder_file, shard_dir, tmp_path_factory) -> Path:
    """The same sweep, standalone and as one fleet of four."""
    tmp = tmp_path_factory.mktemp("fleet_sweep")
    for name, extra in (("alone", []), ("fleet", ["--fleet"])):
        proc = run_cli(
            *CLI, "--encoder", encoder_file, "--data", shard_dir, "--results", tmp / name, *extra, cwd=tmp
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    return tmp


def test_fleet_records_are_standalone_records_that_say_they_ran_in_a_fleet(swept):
    alone = sorted((swept / "alone").glob("*/*/*/seed*.json"))
    assert len(alone) == 4
    for path in alone:
        mine = record_without_timing(swept / "fleet" / path.relative_to(swept / "alone"))
        fleet_info = mine["config"].pop("fleet")
        theirs = record_without_timing(path)
        assert mine.keys() == theirs.keys() and mine["config"].keys() == theirs["config"].keys()
        assert fleet_info["size"] == 4 and len(fleet_info["members"]) == 4
        assert mine["gradient_steps"] == theirs["gradient_steps"] == CLI_STEPS


def test_eval_reads_fleet_records_like_standalone_ones(swept):
    tables = {}
    for name in ("alone", "fleet"):
        proc = run_cli("eval", "--results", swept / name, "--split", "id", cwd=swept)
        assert proc.returncode == 0, proc.stderr[-2000:]
        tables[name] = [ln for ln in proc.stdout.splitlines() if ln.startswith("| curl |")]
    assert tables["fleet"] and len(tables["fleet"]) == len(tables["alone"])


def test_a_killed_fleet_resumes_and_writes_the_uninterrupted_records(encoder_file, shard_dir, tmp_path):
    args = [
        "finetune",
        "--protocol",
        "offline_bc",
        "--split",
        "id",
        "--games",
        "breakout",
        "--seeds",
        "0",
        "1",
    ]
    args += ["--episodes", "1", "--eval-envs", "1", "eval.env.horizon=100", *OVERRIDES, "train.max_steps=160"]
    args += ["--encoder", encoder_file, "--data", shard_dir, "--fleet"]
    killed = [*args, "--results", tmp_path / "killed", "--checkpoint-every", "40"]
    state = FoundLater(str(tmp_path / "killed/.checkpoints/curl/offline_bc/fleet-*/state.pt"))
    held = kill_after_checkpoint(killed, state, min_step=80)
    again = run_cli("--log-level", "INFO", *killed, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"at step {held}" in again.stderr or "resuming from" in again.stderr
    whole = run_cli(*args, "--results", tmp_path / "whole", "--checkpoint-every", "0", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-2000:]
    records = sorted((tmp_path / "killed").glob("curl/*/*/seed*.json"))
    assert len(records) == 2
    for path in records:
        assert record_without_timing(path) == record_without_timing(
            tmp_path / "whole" / path.relative_to(tmp_path / "killed")
        )
    assert not list((tmp_path / "killed/.checkpoints").rglob("state.pt"))  # the records are written: gone


class FoundLater(os.PathLike):
    """A path known by its pattern until it exists (a fleet's checkpoint directory is named by its members)."""

    def __init__(self, pattern: str):
        self.pattern = pattern

    def exists(self) -> bool:
        return bool(glob.glob(self.pattern))

    def __fspath__(self) -> str:
        return glob.glob(self.pattern)[0]


BAD = ["finetune", "--split", "id", "--games", "breakout", "boxing", "--seeds", "0"]


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--protocol", "offline_bc", "--encoder", "e2e", "--fleet"], "--fleet with e2e"),
        (
            ["--protocol", "probe", "--encoder", "random", "--fleet"],
            "does not train fleets (those that do: offline_bc, rainbow)",
        ),
        (  # 1e8 frames of replay are ~660 GiB an agent (with its backbone rows, 661): not two of them
            [
                "--protocol",
                "rainbow",
                "--encoder",
                "random",
                "--fleet",
                "--fleet-size",
                "2",
                "replay.capacity=100000000",
            ],
            "--fleet-size 2: a rainbow agent needs up to 66",
        ),
        (  # a resnet50 agent's pass over a 20,000-row batch: ~130 GiB of (CPU) device memory
            [
                "--protocol",
                "offline_bc",
                "--encoder",
                "random",
                "--preset",
                "resnet50",
                "--fleet",
                "--fleet-size",
                "2",
                "train.batch_size=20000",
            ],
            "of memory (its 20000-row backbone batch, neck and head)",
        ),
        (
            ["--protocol", "offline_bc", "--encoder", "random", "--fleet", "--fleet-size", "0"],
            "--fleet-size 0: must be >= 1",
        ),
    ],
)
def test_bad_fleet_requests(shard_dir, tmp_path, extra, words):
    proc = run_cli(
        "--log-level", "WARNING", *BAD, "--data", shard_dir, "--results", tmp_path, *extra, cwd=tmp_path
    )
    assert words in one_error_line(proc, 2)
    assert not list(tmp_path.rglob("*.json"))


# ------------------------------------------------------------------------------------------ Rainbow fleets
RAINBOW_STEPS = ["train.env_steps=300", "train.learning_starts=60", "train.updates_per_step=1",
                 "train.batch_size=16", "train.eps_decay_steps=150", "replay.capacity=600", "agent.n_step=3"]  # fmt: skip
RAINBOW_UPDATES = 241  # one a step from step 60
RAINBOW_MEMBERS = [("breakout", 1), ("pong", 0), ("breakout", 2)]  # breakout's two heads are stacked


def rainbow_alone(encoder: Encoder, game: str, seed: int):
    return train_rainbow(get_game(game), encoder, load_rainbow_config(RAINBOW_STEPS), seed, progress=False)


def rainbow_fleet(encoder: Encoder, members, checkpoint=None, env_workers: int = 0):
    cfg = load_rainbow_config([*RAINBOW_STEPS, f"train.fleet_env_workers={env_workers}"])
    tasks = [FinetuneTask(get_game(g), encoder, s, progress=False) for g, s in members]
    return train_rainbow_fleet(cfg, tasks, progress=False, checkpoint=checkpoint)


@pytest.fixture(scope="module")
def rainbow_standalone(encoder):
    return {member: rainbow_alone(encoder, *member) for member in RAINBOW_MEMBERS}


@pytest.fixture(scope="module")
def rainbow_fleet_of_three(encoder):
    return rainbow_fleet(encoder, RAINBOW_MEMBERS)


def test_a_rainbow_fleet_of_one_is_the_standalone_job_bit_for_bit(encoder, rainbow_standalone):
    alone = rainbow_standalone[RAINBOW_MEMBERS[0]]
    (one,) = rainbow_fleet(encoder, RAINBOW_MEMBERS[:1])
    a, b = trained(alone.agent), trained(one.agent)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert one.metrics == alone.metrics and one.updates == alone.updates == RAINBOW_UPDATES
    assert np.array_equal(one.episode_returns, alone.episode_returns) and one.env_steps == alone.env_steps


def test_each_rainbow_agent_of_a_fleet_matches_its_standalone_run(
    encoder, rainbow_standalone, rainbow_fleet_of_three
):
    """Tolerance 1e-3 on every trained weight and on the last loss after 241 updates. The fleet's backbone
    runs on all agents' inputs at once (acting and learning) and breakout's two heads are stacked (one vmapped
    call, batched matmuls, one Adam over stacked tensors: tested against own-module updates below).
    Where a convolution's summation order depends on the batch size (cuDNN's and oneDNN's algorithm choice),
    features differ in the last bits; Adam carries that into the heads, and if it ever flips a greedy action
    or a C51 target's argmax the two runs then take different actions and replay different data: the agent
    is then an equally valid run, not the same one. Measured on this CPU with the tiny preset: no
    difference beyond 1e-6; the tolerance is for other machines and devices."""
    for member, result in zip(RAINBOW_MEMBERS, rainbow_fleet_of_three, strict=True):
        alone = rainbow_standalone[member]
        a, b = trained(alone.agent), trained(result.agent)
        worst = max((a[k] - b[k]).abs().max().item() for k in a)
        assert worst < 1e-3, f"{member}: max |difference| {worst:g}"
        assert abs(result.metrics["loss"] - alone.metrics["loss"]) < 1e-3
        assert result.updates == alone.updates == RAINBOW_UPDATES
        torch.manual_seed(member[1])  # the standalone run's initial neck and head, built again
        init = trained(RainbowAgent(encoder, int(num_actions(get_game(member[0]))), alone.agent.cfg).online)
        online = {k.removeprefix("online."): v for k, v in a.items() if k.startswith("online.")}
        assert max((online[k] - init[k]).abs().max().item() for k in init) > 100 * worst  # it trained


class KilledAfter(JobCheckpoint):
    """A checkpoint whose process dies right after its `updates`-th update is saved: before the frames of
    that checkpoint reach the mirrors (the worst moment, resume.FrameMirror)."""

    def __init__(self, *args, updates: int):
        super().__init__(*args)
        self.kill_at = updates

    def save(self, step, state):
        super().save(step, state)
        if step >= self.kill_at:
            raise KeyboardInterrupt


def test_a_killed_rainbow_fleet_resumes_to_the_uninterrupted_agents(
    encoder, rainbow_fleet_of_three, tmp_path
):
    """Killed and resumed with the envs in two worker processes (envs.pool: stepped, saved and restored
    there); the uninterrupted fleet stepped them in its own process. Both end with the same agents."""
    identity = {"job": {"members": [f"{g}/{s}" for g, s in RAINBOW_MEMBERS]}}
    killed = KilledAfter(tmp_path, "finetune-rainbow-fleet", identity, 60, updates=120)
    with pytest.raises(KeyboardInterrupt):
        rainbow_fleet(encoder, RAINBOW_MEMBERS, killed, env_workers=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "member0_replay_frames.u8", "member1_replay_frames.u8", "member2_replay_frames.u8", "state.pt"
    ]  # fmt: skip
    again = JobCheckpoint(tmp_path, "finetune-rainbow-fleet", identity, 60)
    resumed = rainbow_fleet(encoder, RAINBOW_MEMBERS, again, env_workers=2)
    assert again.last == 240  # loaded at 120, saved at 180 and 240
    for whole, part in zip(rainbow_fleet_of_three, resumed, strict=True):
        a, b = trained(whole.agent), trained(part.agent)
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert np.array_equal(whole.episode_returns, part.episode_returns) and whole.metrics == part.metrics


RAINBOW_CLI = (
    "finetune --protocol rainbow --encoder random --preset tiny --split id --games breakout boxing".split()
)
RAINBOW_CLI += ["--seeds", "0", "--episodes", "1", "--eval-envs", "1", "eval.env.horizon=100", "--save-agent"]
RAINBOW_CLI += [*RAINBOW_STEPS, "train.env_steps=150"]


def test_rainbow_fleet_records_and_agents_are_the_standalone_ones(tmp_path):
    """The random baseline's backbone is seeded by the job's seed: the two games of seed 0 make one fleet.
    Its records are the standalone ones plus `config.fleet` (the same keys, config and step counts; the
    saved agents' weights within the tolerance above). (`eval` reading fleet records: the BC sweep above.)"""
    for name, extra in (("alone", []), ("fleet", ["--fleet"])):
        proc = run_cli(*RAINBOW_CLI, "--results", tmp_path / name, *extra, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
    alone = sorted((tmp_path / "alone").glob("random/rainbow/*/seed0.json"))
    assert len(alone) == 2
    for path in alone:
        twin = tmp_path / "fleet" / path.relative_to(tmp_path / "alone")
        mine, theirs = record_without_timing(twin), record_without_timing(path)
        assert mine["config"].pop("fleet") == {"size": 2, "members": ["breakout seed 0", "boxing seed 0"]}
        assert mine.keys() == theirs.keys() and mine["config"].keys() == theirs["config"].keys()
        assert mine["config"]["protocol"] == theirs["config"]["protocol"]
        assert (mine["gradient_steps"], mine["env_steps"]) == (theirs["gradient_steps"], theirs["env_steps"])
        agent = "agents/seed0.safetensors"
        a, b = (load_file(p.parent / agent) for p in (twin, path))
        assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3


def test_bf16_and_channels_last_change_only_the_backbone_pass(encoder):
    """train.bf16 / train.channels_last (GPU speed options, off by default): the backbone runs under bfloat16
    autocast with channels-last weights; features come back float32, within bfloat16's precision of the
    float32 pass, and a fleet trains with them."""
    from atari_pb.models.agent import build_agent_net, set_backbone_precision

    torch.manual_seed(0)
    net = build_agent_net(encoder, 4)
    obs = torch.randint(0, 256, (8, 4, 84, 84), dtype=torch.uint8)
    exact = net.features(obs)
    set_backbone_precision([net], bf16=True, channels_last=True)
    fast = net.features(obs)
    assert fast.dtype == torch.float32 and not torch.equal(fast, exact)
    assert (fast - exact).abs().max() <= 0.05 * exact.abs().max()  # bf16 keeps 8 bits of mantissa
    conv = next(m for m in net.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    cfg = load_rainbow_config(
        [*RAINBOW_STEPS, "train.env_steps=80", "train.bf16=true", "train.channels_last=true"]
    )
    tasks = [FinetuneTask(get_game(g), encoder, s, progress=False) for g, s in RAINBOW_MEMBERS]
    results = train_rainbow_fleet(cfg, tasks, progress=False)
    assert [r.updates for r in results] == [21] * len(RAINBOW_MEMBERS) and all(
        np.isfinite(r.metrics["loss"]) for r in results
    )


def test_stacked_heads_update_each_agent_as_its_own_modules_would(encoder):
    """Two breakout agents' heads stacked (StackedHeads: vmap, one Adam over the stacked tensors, per-agent
    clipping) against twins updated one by one with their own modules, on the same batches and features:
    equal to float rounding (1e-5) after 30 updates, Adam's moments included once written back."""
    from atari_pb.finetune.rainbow import RainbowRun
    from atari_pb.finetune.rainbow_fleet import StackedHeads

    cfg = load_rainbow_config(RAINBOW_STEPS)
    stacked, twins = (
        [RainbowRun(get_game("breakout"), encoder, cfg, s, "cpu") for s in (0, 1)] for _ in "ab"
    )
    for run in stacked + twins:
        for _ in range(100):
            run.act()
    heads = StackedHeads(stacked, [0, 1])
    for _ in range(30):
        batches = [run.learner.sample() for run in stacked]
        with torch.no_grad():
            features = torch.stack(
                [r.agent.features(r.agent.augmented_pair(b)) for r, b in zip(stacked, batches)]
            )
        out = heads.learn(batches, features).numpy()
        for run, batch, row in zip(stacked, batches, out, strict=True):
            run.learner.finish(batch, row[:16], {})
        for twin in twins:
            batch = twin.learner.sample()
            twin.learner.finish(batch, *twin.agent.update(batch, batch.weights))
        for row, twin in zip(out, twins, strict=True):
            assert row[16:] == pytest.approx(
                [twin.learner.metrics[k] for k in ("loss", "q", "grad_norm")], rel=1e-4
            )
    heads.unstack()
    for run, twin in zip(stacked, twins, strict=True):
        a, b = trained(run.agent), trained(twin.agent)
        assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
        mine, theirs = (x.agent.optimizer.state_dict()["state"] for x in (run, twin))
        assert mine.keys() == theirs.keys() and len(mine) == 9
        assert all(torch.allclose(mine[i]["exp_avg_sq"], theirs[i]["exp_avg_sq"], atol=1e-7) for i in mine)
