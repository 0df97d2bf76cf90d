"""ShardSet against a literal, loop-by-loop reading of the sampler contract on the source arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atari_pb.data import SampleSpec, ShardSet, ShardStream, make_loader
from atari_pb.errors import DataError, UsageError
from atari_pb.games import get_game

from .conftest import SAMPLES, load_source


class Source:
    """One checkpoint's first SAMPLES transitions, read with numpy from the DQN-Replay files."""

    def __init__(self, root, game, run, ckpt):
        self.o = load_source(root, game, run, "observation", ckpt)[:SAMPLES]
        self.a = load_source(root, game, run, "action", ckpt)[:SAMPLES]
        self.r = load_source(root, game, run, "reward", ckpt)[:SAMPLES]
        self.d = load_source(root, game, run, "terminal", ckpt)[:SAMPLES]
        self.invalid = set(load_source(root, game, run, "invalid_range", ckpt).tolist())
        self.game = game

    def reward(self, j):
        r = self.r[j]
        return 0.0 if np.isnan(r) else float(np.sign(r))

    def stack(self, j, F):
        out = np.zeros((F, 84, 84), np.uint8)
        for q in range(F):
            f = j - F + 1 + q
            if f < 0 or any(self.d[m] for m in range(f, j)):
                continue
            out[q] = self.o[f]
        return out

    def ret_done(self, j, n, gamma):
        if n == 0:
            return 0.0, float(self.d[j])
        ret, alive = 0.0, 1.0
        for k in range(n):
            ret += gamma**k * self.reward(j + k) * alive
            alive *= 1 - self.d[j + k]
        return ret, float(max(self.d[j + k] for k in range(n)))

    def rtg(self, j):
        total, m = 0.0, j
        while True:
            total += self.reward(m)
            if self.d[m] or m == SAMPLES - 1:
                return total
            m += 1

    def valid(self, i, F, T, n):
        if i + T - 1 + n > SAMPLES - 1:
            return False
        if any(self.d[m] for m in range(i, i + T - 1)):
            return False
        return not any(m in self.invalid for m in range(i - F + 1, i + T + n))


@pytest.fixture(scope="module")
def shards(shard_dir):
    return ShardSet(shard_dir)


@pytest.fixture(scope="module")
def sources(shards, replay_tree):
    return [Source(replay_tree, s.game, s.run, s.ckpt) for s in shards.shards]


CASES = [(4, 1, 3), (4, 5, 1), (2, 8, 0), (4, 1, 10), (1, 3, 2), (4, 4, 3)]


@pytest.mark.parametrize("frames,t_step,n_step", CASES)
def test_valid_starts_match_contract(shards, sources, frames, t_step, n_step):
    got = set(shards.valid_starts(frames, t_step, n_step).tolist())
    want = {
        int(shards.base[k]) + i
        for k, src in enumerate(sources)
        for i in range(SAMPLES)
        if src.valid(i, frames, t_step, n_step)
    }
    assert got == want
    # the planted invalid range inside pong run 1 ckpt 1 removes its neighbourhood
    k = next(s.number for s in shards.shards if (s.game, s.run, s.ckpt) == ("pong", 1, 1))
    assert int(shards.base[k]) + 602 not in got


@pytest.mark.parametrize("frames,t_step,n_step", CASES)
def test_every_field_matches_contract(shards, sources, frames, t_step, n_step):
    gamma = 0.97
    b = shards.sample(
        96, frames=frames, t_step=t_step, n_step=n_step, gamma=gamma, seed=frames * 100 + n_step
    )
    B, T, F = 96, t_step, frames
    assert b["obs"].shape == (B, T, F, 84, 84) and b["obs"].dtype == torch.uint8
    assert b["next_obs"].shape == (B, T, F, 84, 84)
    for key in ("action", "reward", "ret", "done", "rtg", "game_id"):
        assert b[key].shape == (B, T), key
    assert b["index"].shape == (B, 2) and b["index"].dtype == torch.int64
    for row in range(B):
        k, i = b["index"][row].tolist()
        src = sources[k]
        assert src.valid(i, F, T, n_step)
        for t in range(T):
            j = i + t
            np.testing.assert_array_equal(b["obs"][row, t].numpy(), src.stack(j, F))
            assert b["action"][row, t] == src.a[j]
            assert b["reward"][row, t] == src.reward(j)
            ret, done = src.ret_done(j, n_step, gamma)
            assert b["ret"][row, t].item() == pytest.approx(ret, abs=1e-6)
            assert b["done"][row, t] == done
            assert b["rtg"][row, t].item() == pytest.approx(src.rtg(j))
            assert b["game_id"][row, t] == get_game(src.game).game_id
            if n_step == 0:
                np.testing.assert_array_equal(b["next_obs"][row, t].numpy(), b["obs"][row, t].numpy())
            elif not done:
                np.testing.assert_array_equal(b["next_obs"][row, t].numpy(), src.stack(j + n_step, F))


@pytest.mark.parametrize("n_step", [0, 3, 10])
def test_scalars_of_every_valid_start(shards, sources, n_step):
    """ret, done, rtg and reward for every valid start of every shard, not just a random batch."""
    from atari_pb.data import Draw

    start = shards.valid_starts(4, 1, n_step)
    b = shards.gather(Draw(start, np.full(len(start), n_step)), gamma=0.9)
    k_all, i_all = b["index"].numpy().T
    for row, (k, i) in enumerate(zip(k_all, i_all)):
        src = sources[k]
        ret, done = src.ret_done(i, n_step, 0.9)
        assert b["ret"][row, 0].item() == pytest.approx(ret, abs=1e-6), (k, i)
        assert b["done"][row, 0] == done, (k, i)
        assert b["rtg"][row, 0].item() == pytest.approx(src.rtg(i)), (k, i)
        assert b["reward"][row, 0] == src.reward(i), (k, i)


def test_nan_and_large_rewards_are_sign_clipped(shards, sources):
    k = next(s.number for s in shards.shards if (s.game, s.run, s.ckpt) == ("pong", 1, 0))
    g = int(shards.base[k])
    assert np.isnan(sources[k].r[[5, 50, 700]]).all()
    assert shards.reward[g + 5] == 0 and shards.reward[g + 700] == 0
    assert shards.reward[g + 100] == 1 and shards.reward[g + 101] == -1


def test_stack_zero_filled_after_episode_end_at_first_index(shards):
    # breakout run 1 ckpt 0 has a planted terminal at index 0: the stack at 2 must not show frame 0
    k = next(s.number for s in shards.shards if (s.game, s.run, s.ckpt) == ("breakout", 1, 0))
    g = np.array([[int(shards.base[k]) + 2]])
    stack = shards._stacks(np.array([k]), [g], 4)[0][0, 0]
    assert not stack[:2].any() and stack[2:].any()


def test_seed_determinism(shards):
    a = shards.sample(32, n_step=3, seed=7)
    b = shards.sample(32, n_step=3, seed=7)
    c = shards.sample(32, n_step=3, seed=8)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["index"], c["index"])


def test_sampling_is_uniform_over_valid_starts(shards):
    valid = shards.valid_starts(4, 1, 3)
    picks = shards.draw(200_000, n_step=3, seed=0).start
    counts = np.bincount(np.searchsorted(valid, picks), minlength=len(valid))
    assert np.isin(picks, valid).all()
    # each start expects 200k / |valid| ~ 25 picks; a chi-square statistic far from |valid| means bias
    expected = len(picks) / len(valid)
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert abs(chi2 - len(valid)) < 6 * np.sqrt(2 * len(valid))


def test_random_future_and_extra_offsets(shards, sources):
    gamma = 0.99
    b = shards.sample(128, n_step=6, gamma=gamma, seed=3, random_future=True, extra_offsets=[3])
    offsets = b["offset"].numpy()
    assert set(offsets.tolist()) == set(range(1, 7))
    assert b["extra_obs"].shape == (128, 1, 1, 4, 84, 84)
    for row in range(128):
        k, i = b["index"][row].tolist()
        src, off = sources[k], int(offsets[row])
        assert src.valid(i, 4, 1, 6)  # validity always leaves room for the farthest future
        ret, done = src.ret_done(i, off, gamma)
        assert b["ret"][row, 0].item() == pytest.approx(ret, abs=1e-6)
        assert b["done"][row, 0] == done
        if not done:
            np.testing.assert_array_equal(b["next_obs"][row, 0].numpy(), src.stack(i + off, 4))
        _, done3 = src.ret_done(i, 3, gamma)
        assert b["extra_done"][row, 0, 0] == done3
        if not done3:
            np.testing.assert_array_equal(b["extra_obs"][row, 0, 0].numpy(), src.stack(i + 3, 4))


def test_bad_requests(shards):
    with pytest.raises(DataError, match="no valid start"):
        shards.sample(4, t_step=SAMPLES, n_step=1)
    with pytest.raises(UsageError, match="extra_offsets"):
        shards.sample(4, n_step=2, extra_offsets=[3])
    with pytest.raises(UsageError, match="frames"):
        shards.sample(4, frames=0)


def test_stream_ranks_are_disjoint_slices_of_the_global_batch(shards):
    spec = SampleSpec(n_step=3)
    whole = ShardStream(shards, 16, spec, seed=5).batch_at(11)
    parts = [ShardStream(shards, 16, spec, seed=5, rank=r, world_size=2).batch_at(11) for r in range(2)]
    for key in whole:
        assert torch.equal(whole[key], torch.cat([p[key] for p in parts])), key


def test_accumulated_micro_batches_split_each_ranks_slice(shards):
    spec = SampleSpec(n_step=3)
    whole = ShardStream(shards, 16, spec, seed=5).batch_at(4)
    parts = [
        ShardStream(shards, 16, spec, seed=5, rank=r, world_size=2, accumulate=2).batch_at(4 * 2 + m)
        for r in range(2)
        for m in range(2)
    ]
    for key in whole:
        assert torch.equal(whole[key], torch.cat([p[key] for p in parts])), key


def test_loader_threads_and_processes_keep_step_order_and_resume(shards):
    spec = SampleSpec(n_step=1)
    plain = [b["index"] for b in ShardStream(shards, 8, spec, seed=1, num_steps=6)]
    for processes in (False, True):
        loader = make_loader(
            ShardStream(shards, 8, spec, seed=1, num_steps=6), num_workers=2, processes=processes
        )
        with_workers = [b["index"] for b in loader]
        assert all(torch.equal(a, b) for a, b in zip(plain, with_workers, strict=True))
    resumed = [b["index"] for b in ShardStream(shards, 8, spec, seed=1, start_step=4, num_steps=2)]
    assert all(torch.equal(a, b) for a, b in zip(plain[4:], resumed, strict=True))
    assert not torch.equal(plain[0], plain[1])


def test_game_filter(shard_dir):
    only = ShardSet(shard_dir, games=["pong"])
    assert {s.game for s in only.shards} == {"pong"} and len(only) == 4 * SAMPLES
    assert (only.sample(16, seed=0)["game_id"] == get_game("pong").game_id).all()
    with pytest.raises(UsageError, match="holds no shards of boxing; games there: breakout, pong"):
        ShardSet(shard_dir, games=["boxing"])


def test_recycled_buffers_never_change_a_batch_that_is_still_held(shards):
    held = [shards.sample(8, seed=s) for s in range(20)]  # more than the pool keeps per shape
    again = [shards.sample(8, seed=s) for s in range(20)]
    for a, b in zip(held, again):
        assert torch.equal(a["obs"], b["obs"]) and torch.equal(a["next_obs"], b["next_obs"])
    obs_views = [shards.sample(8, seed=s)["obs"][:, 0] for s in range(3)]  # a view keeps its buffer too
    assert all(torch.equal(v, shards.sample(8, seed=s)["obs"][:, 0]) for s, v in enumerate(obs_views))
