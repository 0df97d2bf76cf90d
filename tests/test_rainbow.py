"""Rainbow fine-tuning: the replay buffer against a plain loop over the raw stream, the C51 update on a
batch whose answer is known, a short learning run on a real game, and the configuration."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from atari_pb.envs.atari import EnvConfig, make_vector_env
from atari_pb.errors import UsageError
from atari_pb.finetune.rainbow import (
    AgentConfig,
    RainbowAgent,
    RainbowConfig,
    load_rainbow_config,
    train_rainbow,
)
from atari_pb.finetune.replay import PrioritizedReplay, ReplayBatch
from atari_pb.games import get_game
from atari_pb.models.distributional import project_distribution
from atari_pb.models.encoder import Encoder, ModelConfig

FRAME = (5, 5)  # small frames: the replay does not care about their size


@pytest.fixture
def one_thread():
    """The machine's cores are shared: one torch thread is faster than two fighting for them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------- replay
class Stream:
    """Random episodes from `num_envs` fake environments, fed to a replay step by step, with a record of
    every transition as the agent saw it: its 4-frame stack (zeros before the episode's first frame, as
    ale_py shows after a reset), reward, terminal / episode-end flags and the stack that followed."""

    def __init__(self, num_envs: int, seed: int, p_end: float = 0.06, p_life: float = 0.06):
        self.n, self.rng, self.p_end, self.p_life = num_envs, np.random.default_rng(seed), p_end, p_life
        self.stacks = [self._reset() for _ in range(num_envs)]
        self.records: list[list[dict]] = [[] for _ in range(num_envs)]
        self.next_id = 0

    def _frame(self) -> np.ndarray:
        return self.rng.integers(1, 256, FRAME, dtype=np.uint8)  # never 0: padding is visible

    def _reset(self) -> np.ndarray:
        stack = np.zeros((4, *FRAME), np.uint8)
        stack[-1] = self._frame()
        return stack

    def step(self, replay: PrioritizedReplay) -> None:
        frames, ids, rewards, terminals, ends, finals = [], [], [], [], [], []
        for i in range(self.n):
            end = self.rng.random() < self.p_end
            terminated = end and self.rng.random() < 0.5  # otherwise truncated
            lost_life = not end and self.rng.random() < self.p_life
            stack = self.stacks[i]
            after = np.concatenate([stack[1:], self._frame()[None]])
            record = dict(
                id=self.next_id,
                obs=stack,
                reward=float(self.rng.choice([-1.0, 0.0, 0.0, 1.0, 2.5])),
                terminal=terminated or lost_life,
                end=end,
                next=after,
            )
            self.records[i].append(record)
            frames.append(stack[-1])
            ids.append(self.next_id)
            rewards.append(record["reward"])
            terminals.append(record["terminal"])
            ends.append(end)
            finals.append(after[-1])
            self.next_id += 1
            self.stacks[i] = self._reset() if end else after
        replay.add(
            np.stack(frames),
            np.array(ids),
            np.array(rewards),
            np.array(terminals),
            np.array(ends),
            np.stack(finals),
        )

    def expected(self, gamma: float, n_step: int) -> dict[int, dict]:
        """Transition id -> its n-step return, discount and bootstrap stack, computed by a loop over the
        raw stream; only for transitions whose bootstrap observation has already been seen by the replay
        (the next step was added, or the episode ended and its final frame came with the last step)."""
        out = {}
        for recs in self.records:
            for t, rec in enumerate(recs):
                ret = 0.0
                for k in range(min(n_step, len(recs) - t)):
                    step = recs[t + k]
                    ret += gamma**k * step["reward"]
                    if step["terminal"] or step["end"] or k == n_step - 1:  # the window closes here
                        if step["end"] or t + k + 1 < len(recs):  # its next observation was added
                            discount = 0.0 if step["terminal"] else gamma ** (k + 1)
                            out[rec["id"]] = dict(
                                obs=rec["obs"], ret=ret, discount=discount, next=step["next"]
                            )
                        break
        return out


def check_batch(batch: ReplayBatch, expected: dict[int, dict]) -> None:
    """Every sampled transition must be one the raw stream says is complete, with the same data."""
    for j, tid in enumerate(batch.actions.tolist()):
        assert tid in expected, f"transition {tid} sampled before its n-step future was in the buffer"
        e = expected[tid]
        np.testing.assert_array_equal(batch.obs[j], e["obs"])
        assert batch.returns[j] == pytest.approx(e["ret"], abs=1e-5)
        assert batch.discounts[j] == pytest.approx(e["discount"], abs=1e-6)
        if e["discount"] > 0:  # after a terminal the bootstrap observation is multiplied by 0
            np.testing.assert_array_equal(batch.next_obs[j], e["next"])


def make_replay(capacity: int, num_envs: int, **kw) -> PrioritizedReplay:
    kw = {"n_step": 5, "gamma": 0.9, "priority_exponent": 0.5, "frame_shape": FRAME, "seed": 0} | kw
    return PrioritizedReplay(capacity, num_envs, **kw)


def test_replay_matches_raw_stream_before_wrapping():
    replay, stream = make_replay(3 * 400, 3), Stream(3, seed=1)
    for _ in range(150):
        stream.step(replay)
    expected = stream.expected(0.9, 5)
    valid = np.flatnonzero(replay.valid)
    # every complete transition is sampleable, and nothing else
    assert sorted(replay.action[valid].tolist()) == sorted(expected)
    check_batch(replay.gather(valid), expected)
    # the stream has what the test means to cover
    recs = [r for env in stream.records for r in env]
    assert (
        sum(r["end"] and not r["terminal"] for r in recs) > 5
    )  # truncations: bootstrap from the final frame
    assert sum(r["terminal"] and not r["end"] for r in recs) > 5  # lost lives: no bootstrap, game goes on
    batch = replay.gather(valid)
    assert (batch.obs == 0).all(axis=(2, 3)).any()  # some stacks were padded with zeros


def test_replay_never_samples_stale_or_incomplete_transitions():
    """Fill a small buffer several times over, sampling all along: every sample matches the stream."""
    replay, stream = make_replay(2 * 40, 2), Stream(2, seed=2, p_end=0.04)
    for step in range(400):
        stream.step(replay)
        if step >= 10 and step % 5 == 0:
            expected = stream.expected(0.9, 5)
            for _ in range(4):
                check_batch(replay.sample(32, beta=0.5), expected)
    # the newest complete transitions of each env are all sampleable
    expected = stream.expected(0.9, 5)
    sampleable = set(replay.action[replay.valid].tolist())
    for recs in stream.records:
        recent = [r["id"] for r in recs[-25:] if r["id"] in expected]
        assert recent and set(recent) <= sampleable
    assert len(replay) >= 0.6 * replay.capacity


def test_priorities_drive_sampling():
    replay, stream = make_replay(300, 1, priority_exponent=0.5, seed=3), Stream(1, seed=3, p_end=0.02)
    for _ in range(280):
        stream.step(replay)
    valid = np.flatnonzero(replay.valid)
    assert len(valid) > 200
    rng = np.random.default_rng(0)
    priorities = rng.uniform(0.0, 4.0, len(valid))
    priorities[::7] = 0.0  # these must never come out
    replay.update_priorities(valid, priorities)

    # importance weights: (N P(i))^-beta normalised by the batch's largest weight
    probs = priorities**0.5 / (priorities**0.5).sum()
    p_of = dict(zip(valid.tolist(), probs))
    batch = replay.sample(64, beta=0.7)
    w = (len(valid) * np.array([p_of[i] for i in batch.indices.tolist()])) ** -0.7
    np.testing.assert_allclose(batch.weights, w / w.max(), rtol=1e-5)

    # frequencies follow P(i): a chi-square test over many stratified batches
    counts = np.zeros(replay.capacity)
    for _ in range(1500):
        np.add.at(counts, replay.sample(64, beta=0.4).indices, 1)
    assert counts[valid[priorities == 0]].sum() == 0
    assert counts[np.setdiff1d(np.arange(replay.capacity), valid)].sum() == 0
    live = valid[priorities > 0]
    expect = probs[priorities > 0] * counts.sum()
    chi2 = ((counts[live] - expect) ** 2 / expect).sum()
    dof = len(live) - 1
    assert chi2 < dof + 5 * np.sqrt(2 * dof), (chi2, dof)

    # a new transition enters with the largest priority seen so far
    replay.update_priorities(valid[:1], np.array([9.0]))
    before = set(np.flatnonzero(replay.valid).tolist())
    for _ in range(10):
        stream.step(replay)
    new = np.array(sorted(set(np.flatnonzero(replay.valid).tolist()) - before))
    assert len(new) > 0
    np.testing.assert_allclose(replay.tree.get(new), 3.0)  # 9 ** 0.5


# ---------------------------------------------------------------------------------------------- agent
def tiny_agent(train_backbone: bool = False, **overrides) -> RainbowAgent:
    torch.manual_seed(0)
    cfg = dataclasses.replace(AgentConfig(), **overrides)
    encoder = Encoder(ModelConfig(preset="tiny"))
    return RainbowAgent(encoder, num_actions=3, cfg=cfg, seed=0, train_backbone=train_backbone)


def hand_batch(obs_a: np.ndarray, obs_b: np.ndarray, b: int = 16) -> ReplayBatch:
    """Half the samples: state A, every action, return 1, terminal. The other half: state B, action 0,
    return 0, bootstrapping from A with discount 0.5. So Q(A, .) = 1 and Q(B, 0) = 0.5."""
    half = b // 2
    obs = np.concatenate([np.repeat(obs_a[None], half, 0), np.repeat(obs_b[None], half, 0)])
    return ReplayBatch(
        indices=np.arange(b),
        obs=obs,
        actions=np.concatenate([np.arange(half) % 3, np.zeros(half, np.int64)]),
        returns=np.array([1.0] * half + [0.0] * half, np.float32),
        discounts=np.array([0.0] * half + [0.5] * half, np.float32),
        next_obs=np.repeat(obs_a[None], b, 0),
        weights=np.ones(b, np.float32),
    )


def test_c51_update_moves_toward_the_projected_target(one_thread):
    agent = tiny_agent(augment=False, lr=1e-3, target_tau=0.9)
    rng = np.random.default_rng(0)
    obs_a = rng.integers(0, 256, (4, 84, 84), dtype=np.uint8)
    obs_b = rng.integers(0, 256, (4, 84, 84), dtype=np.uint8)
    batch = hand_batch(obs_a, obs_b)
    support = agent.support
    # the terminal samples' target is known without any network: all mass at 1.0, between two atoms
    target_a = project_distribution(
        torch.ones(1, 51) / 51, torch.tensor([1.0]), torch.tensor([0.0]), support
    )[0]

    def dist(obs: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return agent.logits(agent.features(torch.from_numpy(obs[None])))[0, 0].softmax(-1)

    def kl(p: torch.Tensor, q: torch.Tensor) -> float:
        return float((p * (p.clamp_min(1e-12).log() - q.clamp_min(1e-12).log())).sum())

    backbone_before = [p.clone() for p in agent.backbone.parameters()]
    kl_before = kl(target_a, dist(obs_a))
    first, _ = agent.update(batch, batch.weights)
    for _ in range(250):
        loss, metrics = agent.update(batch, batch.weights)
    assert loss.shape == (16,) and np.isfinite(metrics["grad_norm"])
    assert loss.mean() < 0.5 * first.mean()
    assert kl(target_a, dist(obs_a)) < 0.1 * kl_before
    q = lambda obs: float((dist(obs) * support).sum())  # noqa: E731
    assert q(obs_a) == pytest.approx(1.0, abs=0.15)
    assert q(obs_b) == pytest.approx(0.5, abs=0.15)  # learned through the bootstrap from A
    # the backbone stayed frozen; the target network followed the online one
    assert all(torch.equal(a, b) for a, b in zip(backbone_before, agent.backbone.parameters()))
    for t, o in zip(agent.target_head.parameters(), agent.head.parameters()):
        assert torch.allclose(t, o, atol=0.05)


def test_e2e_trains_the_backbone_and_importance_weights_scale_the_loss(one_thread):
    rng = np.random.default_rng(1)
    batch = hand_batch(*rng.integers(0, 256, (2, 4, 84, 84), dtype=np.uint8))
    agent = tiny_agent(train_backbone=True)
    before = [p.clone() for p in agent.backbone.parameters()]
    agent.update(batch, batch.weights)
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.backbone.parameters()))
    assert agent.target_backbone is not agent.backbone
    # zero weights: no gradient reaches the parameters (Adam then moves nothing)
    agent = tiny_agent()
    head = [p.clone() for p in agent.head.parameters()]
    loss, metrics = agent.update(batch, np.zeros(16, np.float32))
    assert metrics["grad_norm"] == 0.0 and (loss > 0).all()
    assert all(torch.equal(a, b) for a, b in zip(head, agent.head.parameters()))


# ---------------------------------------------------------------------------------------------- config
def test_config_yaml_holds_the_reference_protocol():
    from omegaconf import OmegaConf

    from atari_pb.config import config_file

    cfg = load_rainbow_config()
    a, r, t = cfg.agent, cfg.replay, cfg.train
    assert (a.n_step, a.gamma, a.num_atoms, a.v_min, a.v_max) == (10, 0.99, 51, -10.0, 10.0)
    assert (a.lr, a.adam_eps, a.grad_clip, a.target_tau, a.double_q) == (1e-4, 1.5e-4, 10.0, 0.99, True)
    assert (r.priority_exponent, r.beta_start, r.beta_end) == (0.5, 0.4, 1.0)
    assert (t.env_steps, t.learning_starts, t.updates_per_step, t.batch_size) == (50_000, 2_000, 2, 32)
    assert (t.eps_start, t.eps_end, t.eps_decay_steps) == (1.0, 0.01, 10_000)
    assert cfg.env == EnvConfig()
    # the file spells out every field of every section
    raw = OmegaConf.to_container(OmegaConf.load(config_file("finetune", "rainbow")))
    for section in dataclasses.fields(RainbowConfig):
        assert set(raw[section.name]) == {f.name for f in dataclasses.fields(getattr(cfg, section.name))}
    assert load_rainbow_config(["train.num_envs=4"]).train.num_envs == 4
    with pytest.raises(UsageError, match="unknown key 'agent.freeze_backbone'"):  # e2e is not a config key
        load_rainbow_config(["agent.freeze_backbone=false"])


def test_config_unknown_key_is_an_error(tmp_path):
    with pytest.raises(UsageError, match="unknown key 'agent.dueling'"):
        load_rainbow_config(["agent.dueling=true"])
    path = tmp_path / "rainbow.yaml"
    path.write_text("train:\n  env_steps: 100\n  replay_ratio: 2\n")
    with pytest.raises(UsageError, match="unknown key 'train.replay_ratio'"):
        load_rainbow_config(path=path)
    with pytest.raises(UsageError, match="act_with"):
        load_rainbow_config(["agent.act_with=behaviour"])


# ---------------------------------------------------------------------------------------------- training
def short_config(*overrides: str):
    return load_rainbow_config(
        [
            "train.device=cpu",
            "replay.capacity=4000",
            "train.log_every=100000",
            *overrides,
        ]
    )


def test_training_is_reproducible_and_keeps_the_replay_ratio_with_several_envs(one_thread):
    cfg = short_config(
        "train.env_steps=160",
        "train.num_envs=2",
        "train.learning_starts=96",
        "train.updates_per_step=1",
        "train.batch_size=8",
        "train.eps_decay_steps=40",
        "env.horizon=40",
        "agent.n_step=3",
    )
    game = get_game("breakout")  # lives: exercises the lost-life terminals
    torch.manual_seed(0)
    encoder = Encoder(ModelConfig(preset="tiny"))
    runs = [train_rainbow(game, encoder, cfg, seed=3, progress=False) for _ in range(2)]
    a, b = runs
    # a vector step of 2 envs is 2 agent steps and earns 2 updates: updates at steps 96, 98, ..., 160
    assert a.env_steps == 160 and a.updates == (160 - 96 + 2) * 1
    assert len(a.episode_returns) == 160 // 40  # the horizon truncates every episode
    np.testing.assert_array_equal(a.episode_returns, b.episode_returns)
    assert a.metrics == b.metrics
    for p, q in zip(a.agent.state_dict().values(), b.agent.state_dict().values()):
        assert torch.equal(p, q)
    # the encoder passed in was only read
    assert all(p.grad is None for p in encoder.parameters())


def mean_return(policy, game, episodes: int, horizon: int, seed: int) -> float:
    """Mean raw score of `episodes` episodes, one per env, envs seeded seed, seed + 1, ... (a local
    helper: the evaluation module is not this test's subject)."""
    env, obs = make_vector_env(game, episodes, EnvConfig(horizon=horizon), seed)
    total, done = np.zeros(episodes), np.zeros(episodes, bool)
    try:
        while not done.all():
            obs, reward, terminated, truncated, _ = env.step(policy(obs))
            total += reward * ~done
            done |= terminated | truncated
    finally:
        env.close()
    return float(total.mean())


def greedy(agent: RainbowAgent):
    return lambda obs: agent.act(torch.from_numpy(obs)).numpy()


@pytest.mark.slow
def test_rainbow_learns_assault_on_a_short_budget(one_thread):
    """Assault on a random frozen tiny backbone: firing upwards (one of 7 actions) is what scores, so a
    random policy scores some and a constant wrong action nothing. With this seed the untrained agent's
    greedy policy is such a constant action; 1,200 steps of Rainbow make it beat random play."""
    seed, horizon, episodes = 1, 300, 8
    game = get_game("assault")
    cfg = short_config(
        "train.env_steps=1200",
        "train.learning_starts=200",
        "train.eps_decay_steps=500",
        "train.updates_per_step=1",
        "train.batch_size=16",
        f"env.horizon={horizon}",
        # the released N(0, 1) C51 head starts with logits so large that 1,000 updates do not move a tiny
        # agent off its first greedy action; this test is about the learner, so it starts from nn.Linear's
        # head (the head's effect is a parity measurement, docs/parity.md)
        "agent.head_init=torch",
    )
    torch.manual_seed(seed)
    encoder = Encoder(ModelConfig(preset="tiny"))
    torch.manual_seed(seed)  # the initialisation train_rainbow makes
    untrained = RainbowAgent(encoder, 7, cfg.agent, seed)

    result = train_rainbow(game, encoder, cfg, seed, progress=False)
    assert result.env_steps == 1200 and result.updates == 1200 - 200 + 1  # from the 200th step on

    rng = np.random.default_rng(0)
    random_score = mean_return(lambda obs: rng.integers(0, 7, len(obs)), game, episodes, horizon, 1000)
    before = mean_return(greedy(untrained), game, episodes, horizon, 1000)
    after = mean_return(greedy(result.agent), game, episodes, horizon, 1000)
    assert after > 1.4 * random_score > 0, (after, random_score, before)
    assert after > before + 50, (after, before)
