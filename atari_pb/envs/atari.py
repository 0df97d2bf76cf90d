"""Atari environments for fine-tuning and evaluation, equal by default to the released Atari-PB environment
(dojeon-ai/Atari-PB `src/envs/atari.py`, "atari.py:N" below; configs/env/atari.yaml):

    frame skip 4, reward summed over the skipped frames          atari.py:147-150
    max-pool of the last two frames, ALE's grayscale palette     atari.py:149, 179-189
    84x84 by cv2 bilinear (INTER_LINEAR) resizing                atari.py:190
    4-frame stacks, zeros before an episode's first frame        atari.py:137, 200, 202-206
    at reset: no FIRE, one NOOP frame, then 1-30 NOOP frames     atari.py:127-139, 215-217
    at a lost life: one NOOP frame (its reward dropped), the     atari.py:151-153, 208-217
      stack restarts from zeros; the episode goes on to game over
    the minimal action set, NOOP dropped in 7 games              atari.py:86-89
    no sticky actions; a 27,000 horizon that plays 27,001 steps  atari.py:56, 156; configs/env/atari.yaml
    env i seeded seed + i, as the released evaluation envs       src/envs/__init__.py:27-30
    no-op draws and emulator seed derived from it as there       atari.py:115-125
    the constructor's own reset before the first episode's       atari.py:113

The last line matters: ALE's reset_game does not erase all of the console's state, so an emulator that
was reset once before plays differently in some games (Seaquest, Boxing, Freeway, ...). With all of it,
the observations, rewards, lost lives and episode ends equal those of the released AtariEnv (run on
ale-py 0.12.1) step for step: tests/test_env_parity.py holds digests of its output.

Every difference from ale-py's own vector env (what this project used before) is a named option of
`EnvConfig`; `ALE_VECTOR_SETTINGS` switches them all back. Observations are uint8 (N, frames, 84, 84)
stacks, actions index the game's action set (`action_set`), rewards are raw game scores (learners clip
them themselves, so evaluation sees true scores; the released env clipped them for learning only too,
reporting `game_score` as the score, atari.py:155-158).

Two engines run these envs, chosen by `make_vector_env`: ale-py's C++ `AtariVectorEnv` where the settings
are ones it can play (`noop="ale"` and `life_loss="none"`), else `ReleasedVectorEnv`
(atari_pb/envs/released.py), which steps one `ALEInterface` per env frame by frame as the released code
does: the released no-op starts and the NOOP frame after a lost life cannot be played by the C++ env,
which only steps every env by whole frame-skips at once. The released engine runs in the calling process,
or split over worker processes (atari_pb/envs/sharded.py, `num_threads` > 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from atari_pb.errors import UsageError
from atari_pb.games import Game, get_game

NOOP_RULES = ("released", "ale")
LIFE_LOSS_RULES = ("released", "none")
RESIZES = ("linear", "area")
ACTION_SETS = ("released", "minimal")

# atari.py:87-89: these games drop the first action of the minimal set (NOOP) from their action set;
# basic_math and othello are Atari-PB (Far-OOD) games, the others are not
RELEASED_NOOP_LESS_GAMES = frozenset(
    {"video_chess", "tic_tac_toe_3d", "miniature_golf", "video_cube", "basic_math", "othello", "tetris"}
)


@dataclass
class EnvConfig:
    """The `env:` section of finetune/*.yaml and eval/*.yaml. Defaults: the released Atari-PB env."""

    frame_skip: int = 4
    frames: int = 4  # stacked frames
    noop_max: int = 30
    # released: at reset one NOOP frame (atari.py:131, 215-217), then k ~ U{1..noop_max} NOOP frames
    #   (atari.py:132-134, randint(1, noop_max + 1) of gym 0.25's np_random(seed) = default_rng(seed), whose
    #   first draw the constructor's reset took, atari.py:113); single frames, not frame-skipped steps
    # ale: ale-py's vector env: d ~ U{0..noop_max-1} frames, a FIRE at reset counting as one of them
    noop: str = "released"
    sticky_action_prob: float = 0.0  # atari.py:56: repeat_action_probability 0
    # agent steps per episode. The released env cuts an episode when its step counter, read *before* it
    # counts the step, reaches horizon=27000 (atari.py:156-159): its episodes play 27,001 steps
    horizon: int = 27_001
    # ale-py's episodic_life: a lost life ends the episode and the next one restarts the game. Not the
    # released `episodic_lives` (a lost life is a learning terminal while the game goes on: that is
    # life_loss="released" with info["lost_life"], which Rainbow reads)
    episodic_life: bool = False
    # press FIRE once after reset_game in games whose minimal set has FIRE; the released env never does
    fire_reset: bool = False
    # released: a lost life (lives fell below the count at the last reset or loss, and > 0: atari.py:208-213)
    #   plays one NOOP frame whose reward is dropped (atari.py:151, 216) and restarts the frame stack from
    #   zeros (atari.py:152-153); the episode goes on to game over. none: nothing happens at a lost life
    life_loss: str = "released"
    # linear: cv2.INTER_LINEAR (atari.py:190 passes cv2.INTER_LINEAR as the 3rd positional argument, which
    #   is `dst`: the interpolation is cv2's default, INTER_LINEAR). area: INTER_AREA, as ale-py's vector env
    #   and Dopamine (DQN-Replay's pre-training frames) resize
    resize: str = "linear"
    # released: the minimal set, without NOOP in RELEASED_NOOP_LESS_GAMES (atari.py:86-89); minimal: ale-py's
    # minimal set (DQN-Replay's action indices)
    action_set: str = "released"


# this project's env before it matched the released one: ale-py's vector env with its own settings
ALE_VECTOR_SETTINGS = {
    "noop": "ale",
    "fire_reset": True,
    "life_loss": "none",
    "resize": "area",
    "action_set": "minimal",
    "horizon": 27_000,
}


def check_env_config(cfg: EnvConfig) -> None:
    for name, valid in (
        ("noop", NOOP_RULES),
        ("life_loss", LIFE_LOSS_RULES),
        ("resize", RESIZES),
        ("action_set", ACTION_SETS),
    ):
        if getattr(cfg, name) not in valid:
            raise UsageError(f"env.{name}={getattr(cfg, name)!r}; valid: {', '.join(valid)}")
    if min(cfg.frame_skip, cfg.frames, cfg.horizon) < 1 or cfg.noop_max < 0:
        raise UsageError("env: frame_skip, frames and horizon must be >= 1 and noop_max >= 0")
    if not 0.0 <= cfg.sticky_action_prob <= 1.0:
        raise UsageError(f"env.sticky_action_prob={cfg.sticky_action_prob}: must be in [0, 1]")


# ------------------------------------------------------------------------------------------ action sets
@cache
def _rom_facts(name: str) -> tuple[tuple[int, ...], tuple[int, int]]:
    from ale_py import ALEInterface, LoggerMode, roms

    ALEInterface.setLoggerMode(LoggerMode.Error)  # ALE's banner and "Sending Reset..." would go to stdout
    ale = ALEInterface()
    ale.loadROM(roms.get_rom_path(name))
    height, width = ale.getScreenDims()
    return tuple(int(a.value) for a in ale.getMinimalActionSet()), (int(height), int(width))


def minimal_action_set(name: str) -> tuple[int, ...]:
    """ALE action ids (ale_py.Action values) of the game's minimal action set, in ALE's order."""
    return _rom_facts(name)[0]


def screen_shape(name: str) -> tuple[int, int]:
    """(height, width) of the game's screen: 210 x 160 in most games, up to 250 rows in a few."""
    return _rom_facts(name)[1]


def action_set(game: Game | str, which: str = "released") -> np.ndarray:
    """int64 ALE action ids (ale_py.Action values) of the game's action set: agent action k plays
    action_set(game)[k]. "released": Atari-PB's (the minimal set, NOOP dropped in
    RELEASED_NOOP_LESS_GAMES); "minimal": ale-py's minimal set (DQN-Replay's indices)."""
    if which not in ACTION_SETS:
        raise UsageError(f"action set {which!r}; valid: {', '.join(ACTION_SETS)}")
    name = game.name if isinstance(game, Game) else get_game(game).name
    ids = minimal_action_set(name)
    if which == "released" and name in RELEASED_NOOP_LESS_GAMES:
        ids = ids[1:]
    return np.array(ids, dtype=np.int64)


def minimal_indices(game: Game | str, which: str = "released") -> np.ndarray:
    """int64 position of each action of `action_set(game, which)` in ale-py's minimal set: what the actions
    of an `AtariVectorEnv` (full_action_space=False) index. Agent action k -> vector-env action
    minimal_indices(game, which)[k]."""
    name = game.name if isinstance(game, Game) else get_game(game).name
    position = {a: i for i, a in enumerate(minimal_action_set(name))}
    return np.array([position[int(a)] for a in action_set(name, which)], dtype=np.int64)


def num_actions(game: Game | str, which: str = "released") -> int:
    """The size of the game's action set (the env's `single_action_space.n` for action_set=which)."""
    return len(action_set(game, which))


# ------------------------------------------------------------------------------------------- the env
def uses_ale_vector_env(cfg: EnvConfig) -> bool:
    """Whether ale-py's C++ vector env can play `cfg`: it has no single-frame steps, so neither the released
    no-op starts nor the NOOP frame after a lost life."""
    return cfg.noop == "ale" and cfg.life_loss == "none"


def make_vector_env(game: Game, num_envs: int, cfg: EnvConfig, seed: int, num_threads: int = 0):
    """`num_envs` copies of `game`, env i seeded with seed + i: returns (env, first observations).
    Autoreset happens on the same step, so the observation after an episode's last step is the next
    episode's first (`info["final_obs"]` holds the last one). Besides ale-py's info keys ("env_id",
    "lives", "episode_frame_number"), info["lost_life"] (bool (N,)) marks a life lost in an episode that
    goes on, and info["stack_reset"] one whose observation restarted from zeros (life_loss="released").
    `num_threads`: ale-py's thread count for its engine (0: ALE chooses); for the released engine the
    number of worker processes the envs are split over (0 or 1: they step in this process; a worker costs
    about a second to start and pays off from a few thousand steps)."""
    check_env_config(cfg)
    seeds = np.arange(seed, seed + num_envs, dtype=np.int64) % (1 << 31)
    if uses_ale_vector_env(cfg):
        from atari_pb.envs.vector import AleVectorEnv

        env = AleVectorEnv(game.name, num_envs, cfg, minimal_indices(game, cfg.action_set), num_threads)
    else:
        from atari_pb.envs.released import ReleasedVectorEnv
        from atari_pb.envs.sharded import ShardedVectorEnv

        actions = action_set(game, cfg.action_set)
        if num_threads > 1 and num_envs > 1:
            env = ShardedVectorEnv(game.name, num_envs, cfg, actions, seeds, num_threads)
        else:
            env = ReleasedVectorEnv(game.name, num_envs, cfg, actions, seeds)
        obs, _ = env.reset()
        return env, obs
    obs, _ = env.reset(seed=seeds)
    return env, obs
