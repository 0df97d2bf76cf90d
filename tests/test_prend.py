"""PreND and RND: the reward falls on frames the predictor has learnt and stays high on novel ones (real ALE
frames, a real exported encoder), the predictor's learning-rate scale and frozen backbone, the math
(GAE, running statistics, correlations, k-NN novelty, reservoir) against independent computations, a short
PPO run through the real command line that writes the diagnostics and resumes, and bad requests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch

from atari_pb.cli import main
from atari_pb.core.checkpoint import load_checkpoint
from atari_pb.envs.atari import EnvConfig, make_vector_env
from atari_pb.games import get_game
from atari_pb.models.encoder import Encoder, ModelConfig, export_encoder
from atari_pb.prend.config import IntrinsicConfig, PPOConfig, load_prend_config
from atari_pb.prend.diagnostics import PLOTS, Reservoir, knn_novelty, pearson, rankdata, spearman
from atari_pb.prend.intrinsic import (
    RewardNormalizer,
    RunningMeanStd,
    build_intrinsic,
    forward_filter,
    predictor_lr_scale,
)
from atari_pb.prend.ppo import PolicyNet, gae, make_optimizer
from atari_pb.prend.runner import next_observations

BOXING = get_game("boxing")
# a short run: 2 envs x 32 steps = 64 agent steps per update, diagnostics and a checkpoint every update
SHORT = [
    "ppo.num_envs=2",
    "ppo.num_steps=32",
    "diagnostics.every=1",
    "diagnostics.probe_size=16",
    "diagnostics.probe_stride=2",
    "diagnostics.reservoir=100",
    "intrinsic.obs_norm_init_steps=16",
    "train.save_every=1",
    "train.device=cpu",
]
DIAG_KEYS = {
    "intrinsic/raw_mean",
    "intrinsic/raw_var",
    "diag/pearson",
    "diag/spearman",
    "diag/novelty_mean",
    "episodes",
}


@pytest.fixture(autouse=True)
def one_thread():
    """The machine's cores are shared with ALE's threads: one torch thread is faster than two fighting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def export_tiny(path: Path, seed: int = 0, frames: int = 4, poison: bool = False) -> Path:
    torch.manual_seed(seed)
    enc = Encoder(ModelConfig(preset="tiny", frames=frames))
    if poison:  # an encoder whose weights hold NaN: every embedding, so every reward, is NaN
        with torch.no_grad():
            enc.neck.mlp[0].weight[0, 0] = float("nan")
    return export_encoder(enc, path)


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("enc") / "encoder.safetensors")


def play(game: str, steps: int, seed: int) -> torch.Tensor:
    """uint8 (2 * steps, 4, 84, 84) stacks of a random agent's play in 2 envs."""
    env, obs = make_vector_env(get_game(game), 2, EnvConfig(), seed)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        obs, *_ = env.step(rng.integers(env.single_action_space.n, size=2))
        out.append(obs.copy())
    env.close()
    return torch.from_numpy(np.concatenate(out))


@pytest.fixture(scope="module")
def frames() -> dict[str, torch.Tensor]:
    boxing = play("boxing", 40, seed=0)
    return {"seen": boxing[16:48], "novel": play("pong", 40, seed=1)[16:48]}


def run_cli(*args: str) -> int:
    return main(["--log-level", "WARNING", "prend", *args])


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------- the reward's behaviour
@pytest.mark.parametrize("mode", ["rnd", "prend"])
def test_reward_falls_on_learnt_frames_and_stays_on_novel_ones(mode, frames, encoder_file):
    torch.manual_seed(0)
    encoder = "random" if mode == "rnd" else str(encoder_file)
    intrinsic = build_intrinsic(encoder, BOXING, 4, IntrinsicConfig())
    seen, novel = frames["seen"], frames["novel"]
    intrinsic.update_obs_stats(seen)  # RND's statistics come from what the agent visits
    # the real optimiser and its scaled predictor group (PreND: 0.01 x the base lr)
    lr = 1e-3 if mode == "rnd" else 1e-1
    optimizer = make_optimizer(
        PolicyNet(4, 18), intrinsic, PPOConfig(lr=lr), predictor_lr_scale(IntrinsicConfig(), mode)
    )
    assert optimizer.param_groups[1]["lr"] == pytest.approx(1e-3)
    before_seen = intrinsic.frame_rewards(seen).mean().item()
    before_novel = intrinsic.frame_rewards(novel).mean().item()
    inputs = intrinsic.inputs(seen)
    for _ in range(150):
        optimizer.zero_grad()
        intrinsic.error(inputs).mean().backward()
        optimizer.step()
    after_seen = intrinsic.frame_rewards(seen)
    after_novel = intrinsic.frame_rewards(novel)
    assert after_seen.mean() < 0.2 * before_seen  # the predictor learnt the frames it was shown
    assert after_seen.max() < after_novel.min()  # every novel frame pays more than any seen one
    # novelty is not forgotten along the way: a random encoder's features share a part across games that
    # the predictor learns too (PreND on the tiny preset: seen frames pay ~170x less, novel ones ~6x less),
    # so novel frames must keep a good share of their reward and stay far above the learnt ones
    assert after_novel.mean() > 0.1 * before_novel
    assert after_novel.mean() > 10 * after_seen.mean()


def test_predictor_lr_scale_is_applied_and_the_backbone_is_frozen(encoder_file):
    torch.manual_seed(0)
    intrinsic = build_intrinsic(str(encoder_file), BOXING, 4, IntrinsicConfig())
    policy = PolicyNet(4, 18)
    base = 1e-4
    for overrides, scale in (([], 0.01), (["intrinsic.predictor_lr_scale=0.5"], 0.5)):
        cfg = load_prend_config(overrides)
        optimizer = make_optimizer(policy, intrinsic, cfg.ppo, predictor_lr_scale(cfg.intrinsic, "prend"))
        groups = {g["name"]: g for g in optimizer.param_groups}
        assert groups["policy"]["lr"] == pytest.approx(base)
        assert groups["predictor"]["lr"] == pytest.approx(base * scale)
    assert predictor_lr_scale(IntrinsicConfig(), "rnd") == 1.0  # RND: the predictor learns at the PPO lr

    # only the predictor's neck and head train; the backbone and the target neck are in no group
    in_groups = {id(p) for g in optimizer.param_groups for p in g["params"]}
    trainable = {name for name, p in intrinsic.named_parameters() if id(p) in in_groups}
    assert trainable and all(n.startswith(("predictor_neck.", "predictor_head.")) for n in trainable)
    assert trainable == {n for n, p in intrinsic.named_parameters() if p.requires_grad}
    frozen = [p for n, p in intrinsic.named_parameters() if n.startswith(("backbone.", "target_neck."))]
    assert frozen and not any(p.requires_grad for p in frozen)

    # the scale is really used: Adam's first step moves every parameter by about its group's lr
    optimizer = make_optimizer(policy, intrinsic, PPOConfig(lr=base), 0.01)
    before = {n: p.detach().clone() for n, p in [*intrinsic.named_parameters(), *policy.named_parameters()]}
    x = torch.randint(0, 256, (8, 4, 84, 84), dtype=torch.uint8)
    logits, v_ext, v_int = policy(x)
    (
        intrinsic.error(intrinsic.inputs(x)).mean() + logits.pow(2).mean() + v_ext.sum() + v_int.sum()
    ).backward()
    optimizer.step()
    moved = {n: (p.detach() - before[n]).abs().max().item() for n, p in intrinsic.named_parameters()}
    assert all(
        moved[n] == 0.0
        for n, _ in intrinsic.named_parameters()
        if n.startswith(("backbone.", "target_neck."))
    )
    step = max(moved[n] for n in trainable)
    assert 0.5 * base * 0.01 < step < 1.5 * base * 0.01
    policy_step = max((p.detach() - before[n]).abs().max().item() for n, p in policy.named_parameters())
    assert 0.5 * base < policy_step < 1.5 * base


# ------------------------------------------------------------------------------------------------ math
def test_the_reward_is_for_the_observation_reached_even_at_an_episode_end():
    obs = torch.arange(4 * 3, dtype=torch.uint8).view(4, 3, 1)  # T + 1 = 4 steps of 3 envs
    final = np.full(1, 200, dtype=np.uint8)
    out = next_observations(obs, {(1, 2): final})
    expected = obs[1:].clone()
    expected[1, 2] = 200  # env 2's episode ended with step 1: not the next episode's first frame
    assert torch.equal(out, expected) and torch.equal(obs[2, 2], torch.tensor([8], dtype=torch.uint8))


def test_gae_matches_a_sum_over_future_deltas():
    rng = np.random.default_rng(0)
    T, N, gamma, lam = 7, 3, 0.9, 0.8
    r, v, last = rng.normal(size=(T, N)), rng.normal(size=(T, N)), rng.normal(size=N)
    d = (rng.random((T, N)) < 0.25).astype(float)
    adv, ret = gae(*(torch.tensor(a) for a in (r, v, last, d)), gamma, lam)
    for i in range(N):
        values = np.append(v[:, i], last[i])
        for t in range(T):
            # A_t = sum_l (gamma lam)^l delta_{t+l}, stopping after the first episode end
            total, k = 0.0, t
            while k < T:
                delta = r[k, i] + gamma * values[k + 1] * (1 - d[k, i]) - values[k]
                total += (gamma * lam) ** (k - t) * delta
                if d[k, i]:
                    break
                k += 1
            assert adv[t, i].item() == pytest.approx(total)
            assert ret[t, i].item() == pytest.approx(total + v[t, i])


def test_running_statistics_and_reward_normalisation():
    rng = np.random.default_rng(1)
    parts = [rng.normal(3.0, 2.0, size=(n, 5)) for n in (7, 1, 30)]
    rms = RunningMeanStd((5,))
    for part in parts:
        rms.update(torch.tensor(part))
    whole = np.concatenate(parts)
    np.testing.assert_allclose(rms.mean.numpy(), whole.mean(0), rtol=1e-4)
    np.testing.assert_allclose(rms.var.numpy(), whole.var(0), rtol=1e-4)

    rewards = rng.random((6, 2))
    u, filtered = np.zeros(2), []
    for t in range(6):
        u = 0.9 * u + rewards[t]
        filtered.append(u.copy())
    out, last = forward_filter(torch.tensor(rewards), torch.zeros(2, dtype=torch.float64), 0.9)
    np.testing.assert_allclose(out.numpy(), np.array(filtered))
    np.testing.assert_allclose(last.numpy(), filtered[-1])

    norm = RewardNormalizer(2, 0.9)
    normalised = norm.normalize(torch.tensor(rewards))
    std = np.sqrt(np.array(filtered).reshape(-1).var())
    np.testing.assert_allclose(normalised.numpy(), rewards / std, rtol=1e-3)


def test_correlations_novelty_and_reservoir():
    rng = np.random.default_rng(2)
    x = rng.normal(size=50)
    y = x + rng.normal(size=50)
    y[:10] = y[0]  # ties
    assert pearson(x, y) == pytest.approx(scipy.stats.pearsonr(x, y)[0])
    assert spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y)[0])
    np.testing.assert_allclose(rankdata(y), scipy.stats.rankdata(y))

    queries, memory = rng.normal(size=(4, 3)), rng.normal(size=(20, 3))
    expected = [np.sort(np.linalg.norm(memory - q, axis=1))[:5].mean() for q in queries]
    np.testing.assert_allclose(knn_novelty(torch.tensor(queries), torch.tensor(memory), 5).numpy(), expected)
    assert knn_novelty(torch.tensor(queries), torch.tensor(memory[:2]), 5).shape == (4,)

    stream = torch.arange(1000, dtype=torch.float32)[:, None]
    res = Reservoir(100, 1)
    for chunk in stream.split(64):
        res.add(chunk, rng)
    kept = res.data[:, 0].numpy()
    assert res.seen == 1000 and res.size == 100 and len(set(kept)) == 100
    assert kept.mean() > 250  # uniform over the stream, not its first 100 items
    counts = np.zeros(10)
    for seed in range(200):  # each tenth of the stream is kept about equally often
        r = Reservoir(10, 1)
        r.add(stream[:100], np.random.default_rng(seed))
        counts += np.bincount(r.data[:, 0].numpy().astype(int) // 10, minlength=10)
    assert counts.min() > 0.6 * counts.mean()


# ---------------------------------------------------------------------------- the command line, end to end
def test_short_prend_run_writes_diagnostics_and_resumes(tmp_path, encoder_file):
    out = tmp_path / "run"
    assert (
        run_cli(
            "--encoder", str(encoder_file), "--game", "boxing", "--out", str(out), "--steps", "128", *SHORT
        )
        == 0
    )
    rows = metrics(out)
    assert [r["step"] for r in rows] == [64, 128]
    assert all(DIAG_KEYS <= r.keys() for r in rows)
    assert all(-1 <= r["diag/spearman"] <= 1 and r["intrinsic/raw_mean"] > 0 for r in rows)
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first = load_checkpoint(out / "checkpoint.pt")
    assert (first["update"], first["env_steps"], first["reservoir"]["seen"]) == (2, 128, 128)
    assert first["probes"].shape == (16, 4, 84, 84) and first["probes"].dtype == torch.uint8
    assert (out / "tb").is_dir() and "prend --encoder" in (out / "config.yaml").read_text()

    # a line logged after the checkpoint by a killed run is dropped on resume
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 150, "intrinsic/raw_mean": 1.0}) + "\n")
    assert (
        run_cli(
            "--encoder",
            str(encoder_file),
            "--game",
            "boxing",
            "--out",
            str(out),
            "--steps",
            "256",
            "--resume",
        )
        == 0
    )
    steps = [r["step"] for r in metrics(out)]
    assert steps == [64, 128, 192, 256]
    last = load_checkpoint(out / "checkpoint.pt")
    assert (last["update"], last["env_steps"]) == (4, 256)
    assert last["reservoir"]["seen"] == 256  # continued from the checkpoint's 128, not from zero
    assert torch.equal(last["probes"], first["probes"])  # the probe set travels with the run
    assert not torch.equal(last["policy"]["actor.2.weight"], first["policy"]["actor.2.weight"])
    opt = last["optimizer"]["param_groups"]
    assert [g["name"] for g in opt] == ["policy", "predictor"] and opt[1]["lr"] == pytest.approx(1e-6)

    # the run refuses to start over itself, and resuming under other settings
    assert run_cli("--encoder", str(encoder_file), "--game", "boxing", "--out", str(out), *SHORT) == 2
    assert run_cli("--encoder", "random", "--game", "boxing", "--out", str(out), "--resume") == 2
    assert (
        run_cli(
            "--encoder", str(encoder_file), "--game", "boxing", "--out", str(out), "--resume", "ppo.clip=0.2"
        )
        == 2
    )


@pytest.mark.parametrize("encoder", ["random", "none"])
def test_short_rnd_and_ppo_only_runs(tmp_path, encoder):
    out = tmp_path / encoder
    assert run_cli("--encoder", encoder, "--game", "boxing", "--out", str(out), "--steps", "64", *SHORT) == 0
    (row,) = metrics(out)
    if encoder == "random":
        assert DIAG_KEYS <= row.keys()
        assert all((out / name).is_file() for name in PLOTS)
        assert load_checkpoint(out / "checkpoint.pt")["optimizer"]["param_groups"][1]["lr"] == pytest.approx(
            1e-4
        )
    else:  # PPO on the game's reward alone: no intrinsic reward, only the return plot
        assert not any(k.startswith(("intrinsic/", "diag/")) for k in row)
        assert [p.name for p in out.glob("*.png")] == ["episode_return.png"]


# ------------------------------------------------------------------------------------------ bad requests
def test_bad_requests_are_one_line_and_write_nothing(tmp_path, encoder_file, capsys):
    three = export_tiny(tmp_path / "three" / "encoder.safetensors", frames=3)
    wrong_dim = export_tiny(tmp_path / "dim" / "encoder.safetensors")
    config = json.loads(wrong_dim.with_suffix(".json").read_text())
    wrong_dim.with_suffix(".json").write_text(json.dumps({**config, "out_dim": 999}))
    cases = [
        (["--encoder", str(three), "--game", "boxing"], [str(three), "3-frame"]),
        (["--encoder", str(wrong_dim), "--game", "boxing"], [str(wrong_dim), "out_dim 999"]),
        (["--encoder", str(tmp_path / "missing.safetensors"), "--game", "boxing"], ["missing.safetensors"]),
        (["--encoder", str(encoder_file), "--game", "boxin"], ["unknown game 'boxin'", "boxing"]),
        (["--encoder", "random", "--game", "boxing", "ppo.nonsense=1"], ["nonsense"]),
    ]
    for args, words in cases:
        out = tmp_path / "out"
        capsys.readouterr()
        assert run_cli(*args, "--out", str(out)) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("atari-pb: error:"), err
        assert all(w in err[0] for w in words), err[0]
        assert not out.exists()


def test_nan_intrinsic_reward_stops_with_the_step(tmp_path):
    poisoned = export_tiny(tmp_path / "nan" / "encoder.safetensors", poison=True)
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "atari_pb",
        "prend",
        "--encoder",
        str(poisoned),
        "--game",
        "boxing",
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}  # torch's spinning threads would slow ALE's
    proc = subprocess.run(
        [*cmd, "--steps", "128", *SHORT], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("atari-pb:")]
    assert len(errors) == 1, proc.stderr
    assert "intrinsic reward is not finite at env step 64" in errors[0]
    assert "no checkpoint was written yet" in errors[0]
    assert not (out / "checkpoint.pt").exists()
