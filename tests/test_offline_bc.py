"""Offline BC fine-tuning on logged data: real Breakout frames played by a rule that looks at the screen
(keep the paddle near the middle, 10% random actions), written in DQN-Replay format and ingested like any
other data. (Random-policy data would carry no signal to clone.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atari_pb.data import ShardSet
from atari_pb.data.collect import invalid_range
from atari_pb.data.ingest import ingest
from atari_pb.data.replay_format import replay_file, write_gz_npy
from atari_pb.envs.atari import EnvConfig, make_vector_env
from atari_pb.finetune.offline_bc import BCTrainConfig, train_offline_bc
from atari_pb.games import get_game
from atari_pb.models.encoder import Encoder, ModelConfig

STEPS = 1500


def screen_rule(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Keep Breakout's paddle (row 76 of the 84x84 frame, inside the walls) near the middle: RIGHT (2) when
    it is left of centre, LEFT (3) otherwise; 10% random actions."""
    row = obs[:, -1, 76, 4:80] > 60
    centre = np.where(row.any(1), (row * np.arange(4, 80)).sum(1) / np.maximum(row.sum(1), 1), 42)
    action = np.where(centre < 42, 2, 3)
    explore = rng.random(len(action)) < 0.1
    return np.where(explore, rng.integers(0, 4, len(action)), action).astype(np.int32)


@pytest.fixture(scope="module")
def logged_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("logged")
    game = get_game("breakout")
    rng = np.random.default_rng(0)
    for run in (1, 2):
        env, obs = make_vector_env(game, 1, EnvConfig(noop_max=0), seed=run)
        frames, actions, rewards, terminals = [], [], [], []
        for _ in range(STEPS):
            a = screen_rule(obs, rng)
            frames.append(obs[0, -1])
            obs, r, term, trunc, _ = env.step(a)
            actions.append(a[0]), rewards.append(r[0]), terminals.append(term[0] | trunc[0])
        env.close()
        arrays = {
            "observation": np.stack(frames),
            "action": np.array(actions, np.int32),
            "reward": np.array(rewards, np.float32),
            "terminal": np.array(terminals, np.uint8),
            "invalid_range": invalid_range(0, STEPS),
            "add_count": np.array(STEPS, np.int64),
        }
        replay_file(root, game.replay_name, run, "observation", 50).parent.mkdir(parents=True)
        for field, array in arrays.items():
            write_gz_npy(replay_file(root, game.replay_name, run, field, 50), array)
    shards = tmp_path_factory.mktemp("logged_shards")
    assert not ingest(root, shards, [game], [1, 2], [50], STEPS).errors
    return shards


def test_backbone_stays_frozen_unless_e2e(logged_shards):
    game = get_game("breakout")
    encoder = Encoder(ModelConfig(preset="tiny"))
    before = {k: v.clone() for k, v in encoder.backbone.state_dict().items()}
    cfg = BCTrainConfig(max_steps=3, batch_size=8, loader_threads=0)
    frozen = train_offline_bc(game, encoder, logged_shards, 4, cfg, seed=0, progress=False).agent
    assert all(torch.equal(before[k], v) for k, v in frozen.backbone.state_dict().items())
    e2e = train_offline_bc(
        game, encoder, logged_shards, 4, cfg, seed=0, train_backbone=True, progress=False
    ).agent
    assert any(not torch.equal(before[k], v) for k, v in e2e.backbone.state_dict().items())
    assert all(
        torch.equal(before[k], v) for k, v in encoder.backbone.state_dict().items()
    )  # a copy was trained


def test_frozen_backbone_bc_clones_the_rule_on_held_out_runs(logged_shards):
    """The protocol's setting (frozen backbone, fresh neck and head) on run 1, scored on run 2, which it never
    saw: the logged actions are ~47% RIGHT / ~47% LEFT, so both chance (25%) and always answering the
    majority action (<= 50%) stay far below what reading the paddle's position gives (~0.9).
    Augmentation is off: the rule turns on whether the paddle is 1-2 pixels left or right of the centre,
    which the +-4 pixel random shift would hide."""
    game = get_game("breakout")
    torch.manual_seed(0)
    encoder = Encoder(ModelConfig(preset="tiny"))
    cfg = BCTrainConfig(
        max_steps=400, batch_size=64, lr=3e-3, augment=False, holdout_runs=[2], loader_threads=0
    )
    result = train_offline_bc(game, encoder, logged_shards, 4, cfg, seed=0, progress=False)
    held = ShardSet(logged_shards, games=["breakout"], runs=[2]).sample(4096, n_step=0, seed=5)
    majority = np.bincount(held["action"][:, 0].numpy(), minlength=4).max() / 4096
    assert majority < 0.55
    assert result.holdout_accuracy > majority + 0.2, (result.holdout_accuracy, majority)
    assert result.train_accuracy > majority + 0.2
