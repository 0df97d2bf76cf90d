"""Fleet fine-tuning (`finetune --fleet`, atari_pb/finetune/offline_bc_fleet.py and rainbow_fleet.py): agents that share one frozen
backbone trained in lockstep with one backbone pass per step. A fleet of one is the standalone job bit for
bit; in a fleet of several each agent matches its standalone run to floating-point tolerance; a killed
fleet resumes; its records are standalone records plus `config.fleet`, and `eval` reads them alike."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from atari_pb.envs.atari import num_actions
from atari_pb.finetune.base import FinetuneTask
from atari_pb.finetune.offline_bc import load_offline_bc_config, train_offline_bc
from atari_pb.finetune.offline_bc_fleet import train_offline_bc_fleet
from atari_pb.finetune.rainbow import RainbowAgent, load_rainbow_config, train_rainbow
from atari_pb.finetune.rainbow_fleet import train_rainbow_fleet
from atari_pb.finetune.resume import JobCheckpoint
from atari_pb.games import get_game
from atari_pb.models.encoder import Encoder, ModelConfig, export_encoder
from tests.conftest import one_error_line, run_cli
from tests.test_resume import kill_after_checkpoint, record_without_timing

STEPS = 200  # updates of the in-process comparisons ("a few hundred")
OVERRIDES = [f"train.max_steps={STEPS}", "train.batch_size=16", "train.loader_threads=0"]
CLI_STEPS = 60  # the command-line sweeps
MEMBERS = [("breakout", 0), ("breakout", 1), ("pong", 1)]


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


def test_each_agent_of_a_fleet_matches_its_standalone_run(encoder, shard_dir):
    """Tolerance 1e-3 on every trained weight (of order 1) after 200 updates. The fleet's backbone runs on 4x
    the batch; where a convolution's summation order depends on the batch size (cuDNN's and oneDNN's
    algorithm choice), features differ in the last bits and AdamW carries that into the heads (Adam turns
    differences of near-zero gradients into up to lr-sized steps, 1e-3 here). Measured on this CPU with
    the tiny preset: no difference at all (0.0); the tolerance is for other machines and devices, and
    stays 100x below what training moved the weights (checked below)."""
    results = fleet(encoder, shard_dir, MEMBERS)
    for (game, seed), result in zip(MEMBERS, results, strict=True):
        alone = standalone(encoder, shard_dir, game, seed)
        a, b = trained(alone.agent), trained(result.agent)
        worst = max((a[k] - b[k]).abs().max().item() for k in a)
        assert worst < 1e-3, f"{game} seed {seed}: max |difference| {worst:g}"
        moved = max((a[k] - trained_init(encoder, shard_dir, game, seed)[k]).abs().max().item() for k in a)
        assert moved > 100 * worst  # the agents trained: the tolerance is far below what training changed


def trained_init(encoder: Encoder, shard_dir: Path, game: str, seed: int) -> dict[str, torch.Tensor]:
    from atari_pb.finetune.offline_bc import setup_bc_run

    cfg = load_offline_bc_config(OVERRIDES).train
    return trained(
        setup_bc_run(get_game(game), encoder, shard_dir, num_actions(get_game(game)), cfg, seed).agent
    )


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
        (  # 1e8 frames of replay are ~660 GiB an agent: not two of them
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
            "--fleet-size 2: a rainbow agent holds up to 660.",
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
