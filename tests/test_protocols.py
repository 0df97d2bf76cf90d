"""Every registered fine-tuning protocol, swept the way the objectives are: its YAML loads and is checked,
it trains a tiny agent on a real game through the one `train(cfg, task)` signature, the encoder is only
read, the backbone stays frozen unless `train_backbone` (the e2e baseline), the agent plays the game's
actions (a protocol scored by rollouts) or the protocol scores itself on its own scale (`rollouts = False`:
the probe), and the result counts gradient and environment steps apart. Adding a protocol means adding its
quick settings here, or this file fails."""

from __future__ import annotations

import math

import pytest
import torch

from atari_pb.envs.atari import make_vector_env, num_actions
from atari_pb.errors import UsageError
from atari_pb.finetune.base import (
    PROTOCOLS,
    FinetuneResult,
    FinetuneTask,
    Protocol,
    load_protocol_config,
    protocol_names,
    register,
)
from atari_pb.games import get_game
from atari_pb.models.encoder import Encoder, ModelConfig

# a few gradient steps on the tiny preset; "env" tells whether the protocol plays the game while training
QUICK = {
    "offline_bc": (["train.max_steps=3", "train.batch_size=8", "train.loader_threads=0"], False),
    "rainbow": (
        [
            "train.env_steps=40",
            "train.learning_starts=30",
            "train.updates_per_step=1",
            "train.batch_size=4",
            "train.eps_decay_steps=10",
            "agent.n_step=3",
            "replay.capacity=500",
            "env.horizon=20",
        ],
        True,
    ),
    "probe": (
        ["train.epochs=2", "train.patience=1", "features.batch_size=64", "data.min_test_episodes=0"],
        False,
    ),
}
DATA = {"offline_bc": "shard_dir", "probe": "probe_dir"}  # the fixture holding a protocol's `needs_data`
GAME = get_game("breakout")


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory):
    """Real probe data of GAME (atari-pb collect-probes): 4 episodes of 100 frame stacks (whole games: most
    of breakout's lives last fewer than 64 frames, which the probe drops)."""
    from atari_pb.probes.data import ProbeDatasetConfig, collect_probes

    dst = tmp_path_factory.mktemp("probes")
    cfg = ProbeDatasetConfig(games=[GAME.name], frames_per_game=400, num_envs=4, episode_end="game")
    collect_probes(dst, cfg)
    return dst


def test_every_protocol_has_quick_settings_here():
    assert sorted(QUICK) == protocol_names()
    assert all(name in DATA for name in protocol_names() if PROTOCOLS[name].needs_data)


@pytest.mark.parametrize("name", protocol_names())
@pytest.mark.parametrize("train_backbone", [False, True], ids=["frozen", "e2e"])
def test_protocol_trains_through_the_one_signature(name, train_backbone, request):
    torch.set_num_threads(1)
    overrides, plays = QUICK[name]
    protocol = PROTOCOLS[name]
    cfg = load_protocol_config(name, overrides)
    assert isinstance(cfg, protocol.Config)
    torch.manual_seed(0)
    encoder = Encoder(ModelConfig(preset="tiny"))
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    data = request.getfixturevalue(DATA[name]) if protocol.needs_data else None
    task = FinetuneTask(GAME, encoder, seed=0, train_backbone=train_backbone, data=data, progress=False)
    result = protocol.train(cfg, task)

    assert isinstance(result, FinetuneResult) and result.gradient_steps > 0
    assert (result.env_steps > 0) == plays and result.seconds > 0
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())  # only read
    trained = result.agent.backbone.state_dict()
    moved = any(not torch.equal(before[f"backbone.{k}"], v) for k, v in trained.items())
    assert moved == train_backbone
    if not protocol.rollouts:  # self-scoring: its own score on its own scale, and its declared parts
        assert result.score is not None and math.isfinite(result.score)
        if protocol.score_scale == "f1":
            assert 0.0 <= result.score <= 1.0
        assert result.summary["score_parts"] and set(result.summary["score_parts"]) <= set(
            protocol.score_parts
        )
        return
    assert result.score is None  # scored by the sweep's rollouts
    # the agent plays the game: greedy actions index its minimal action set
    env, obs = make_vector_env(GAME, 3, protocol_env(cfg), seed=0)
    env.close()
    actions = result.agent.act(torch.from_numpy(obs))
    assert actions.shape == (3,) and actions.dtype == torch.int64
    assert ((actions >= 0) & (actions < num_actions(GAME))).all()


def protocol_env(cfg):
    from atari_pb.envs.atari import EnvConfig

    return getattr(cfg, "env", EnvConfig())


def test_registry_refuses_unknown_and_duplicate_names():
    with pytest.raises(
        UsageError, match="unknown protocol 'bc'; valid protocols: offline_bc, probe, rainbow"
    ):
        load_protocol_config("bc")

    class Again(Protocol):
        name = "rainbow"

    with pytest.raises(UsageError, match="protocol 'rainbow' is registered twice"):
        register(Again)
    assert PROTOCOLS["rainbow"] is not Again


def test_protocol_checks_refuse_bad_values():
    with pytest.raises(UsageError, match="train.batch_size and train.epochs must be positive"):
        load_protocol_config("offline_bc", ["train.epochs=0"])
    with pytest.raises(UsageError, match="replay.capacity=10 is too small"):
        load_protocol_config("rainbow", ["replay.capacity=10"])
