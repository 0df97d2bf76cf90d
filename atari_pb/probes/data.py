"""Probe datasets (AtariARI): frame stacks of played games, each labelled with the game's annotated RAM bytes.

`atari-pb collect-probes DST --dataset probes_demo` plays every game of the dataset with `num_envs`
environments of `make_vector_env` (this project's env, the same frame stacks the encoders take) under a
random or epsilon-greedy policy, and after every step reads each env's 128 bytes of RAM. Frame stack t is
the observation after step t (t = 0: after the reset); its RAM is read right after that step, before the
next one, so both describe the same moment. With same-step autoreset, an episode's last frame is never seen
(the observation returned is already the next episode's first), as in AtariARI's collection.

Episodes (`episode_end`): `life` (the default) ends one at every lost life, as AtariARI's EpisodicLifeEnv
(baselines' atari_wrappers, in AtariARI's wrap_deepmind) does: the frame after the step that lost the life
(the env's `info["lost_life"]`, where its frame stack restarts from zeros) is the next episode's first, step
0. The game itself goes on to game over, as in AtariARI, whose EpisodicLifeEnv does not reset the game at a
lost life either. One difference: the env counts a life as lost when the lives fall below the count kept at
the last reset or loss, so a bonus life followed by a loss ends no episode there (baselines compares with
the previous step's count). `game`: episodes run to game over (format 1's only rule).

Layout of `DST/<game>.h5` (format version 2), rows ordered by split, then episode, then step, so that each
split and each episode is one contiguous block:
  obs      (N, 4, 84, 84) uint8   frame stacks, gzip-compressed in chunks
  ram      (N, 128) uint8         the console's RAM
  labels   (N, V) uint8           ram[:, ram_indices]; V = len(variables), in `variables(game)` order
  split    (N,) uint8             0 train, 1 val, 2 test: whole episodes, so no episode is in two splits
  episode  (N,) int32             episode id, unique within the file (numbered in the order they started)
  step     (N,) int32             agent steps since the episode's start (0: the reset's observation, or
                                  the first after a lost life)
  lives    (N,) int32             the console's lives (ALE's lives()) at that frame
  attrs    format, format_version, game, variables (JSON list), ram_indices (JSON list), categories
           (JSON {variable: category}), policy, seed, settings (JSON: everything that shaped the data)
Episodes still running when the game's frames are all collected are cut there and kept (each env's last
episode); AtariARI keeps such episodes too. `DST/manifest.json` lists each finished file with its SHA-256 and
size, and the settings every file of DST was collected with.

What AtariARI's benchmark does on top of such data, left to the probe protocol (it reads `episode`, `step`
and `ram`): it drops episodes of 64 frames or fewer, drops variables whose label entropy over all frames
is below 0.6 nats, removes test frames identical to a train or val frame, and splits by episode count
(70/10/20 of the episodes). It plays with a random agent that never picks action 0, on 210x160 single
frames; here the frames are the project's 84x84 4-stacks, the policy uniform over the action set and the
split 70/10/20 of the frames (docs/parity.md, "Probes (AtariARI)").
"""

from __future__ import annotations

import json
import logging
import os
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from atari_pb.data.manifest import fsync_dir, sha256_file
from atari_pb.envs.atari import EnvConfig, check_env_config, make_vector_env, uses_ale_vector_env
from atari_pb.errors import DataError, UsageError
from atari_pb.games import SPLITS as GAME_SPLITS
from atari_pb.games import Game, get_game, split_games
from atari_pb.probes.annotations import CATEGORIES, annotated_games, check_annotated, ram_indices, variables

log = logging.getLogger(__name__)

FORMAT = "atari-pb-probes"
FORMAT_VERSION = 2  # 2: episodes end at lost lives (episode_end), a lives column
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val", "test")  # split codes 0, 1, 2
EPISODE_ENDS = ("life", "game")
RAM_SIZE = 128
_CHUNK = 32  # frame stacks per compressed chunk
_WRITE_BLOCK = 1024  # rows copied into the HDF5 file at a time


@dataclass
class SplitFractions:
    """Shares of each game's frames per split; whole episodes go to one split each."""

    train: float = 0.7
    val: float = 0.1
    test: float = 0.2


@dataclass
class ProbeDatasetConfig:
    """What `atari-pb collect-probes` collects (datasets/probes*.yaml)."""

    # annotated games, or splits (their annotated games); default: every annotated game
    games: list[str] = field(default_factory=annotated_games)
    frames_per_game: int = 50_000  # AtariARI's --probe-steps
    # frames of the games named here instead: games whose lives are short (breakout) need more frames for
    # as many episodes of more than 64 frames as the others
    game_frames: dict[str, int] = field(default_factory=dict)
    splits: SplitFractions = field(default_factory=SplitFractions)
    seed: int = 0
    policy: str = "random"  # random | eps-greedy:<agent.safetensors, {game} = each game> (as `collect`)
    epsilon: float = 0.01  # eps-greedy only
    sticky_action_prob: float = EnvConfig.sticky_action_prob  # the env's default
    # envs played side by side; each one's last episode is cut when the frames are all in. 64: games without
    # lives play one episode per env, and the probe wants 10 in the test split (20% of them)
    num_envs: int = 64
    episode_end: str = "life"  # life: an episode ends at every lost life (AtariARI) | game: at game over


# ------------------------------------------------------------------------------------------- settings
def probe_games(names: Sequence[str]) -> list[Game]:
    """Game names (which must be annotated) and split names (their annotated games), in order, no repeats."""
    out: dict[str, Game] = {}
    for name in names:
        if name in GAME_SPLITS:
            games = [g for g in split_games(name) if g.name in CATEGORIES]
        else:
            try:
                game = get_game(name)
            except UsageError:
                game = None
            games = [get_game(check_annotated(game.name if game else name))]
        for g in games:
            out.setdefault(g.name, g)
    if not out:
        raise UsageError(
            f"no annotated game in {list(names)}; annotated games: {', '.join(annotated_games())}"
        )
    return list(out.values())


def game_frames(cfg: ProbeDatasetConfig, game: Game) -> int:
    """The frames collected of `game`."""
    return cfg.game_frames.get(game.name, cfg.frames_per_game)


def env_config(cfg: ProbeDatasetConfig) -> EnvConfig:
    """The env the games are played in: the project's default env, with the dataset's sticky actions."""
    return EnvConfig(sticky_action_prob=cfg.sticky_action_prob)


def fractions(cfg: ProbeDatasetConfig) -> np.ndarray:
    return np.array([getattr(cfg.splits, s) for s in SPLITS], np.float64)


def check_config(cfg: ProbeDatasetConfig) -> list[Game]:
    """Every check that needs no emulator: the games, sizes, split fractions, env and policy."""
    from atari_pb.data.collect import check_policy

    games = probe_games(cfg.games)
    if cfg.episode_end not in EPISODE_ENDS:
        raise UsageError(f"episode_end={cfg.episode_end!r}; valid: {', '.join(EPISODE_ENDS)}")
    share = fractions(cfg)
    if share.min() < 0 or abs(share.sum() - 1.0) > 1e-6 or share[0] <= 0:
        raise UsageError(f"splits {dict(zip(SPLITS, share.tolist()))}: must be >= 0, sum to 1, train > 0")
    if cfg.num_envs < int((share > 0).sum()):
        raise UsageError(
            f"num_envs={cfg.num_envs}: at least one per non-empty split ({int((share > 0).sum())})"
        )
    for name in cfg.game_frames:
        check_annotated(name)
    sizes = {
        "frames_per_game": cfg.frames_per_game,
        **{f"game_frames.{g}": n for g, n in cfg.game_frames.items()},
    }
    for key, n in sizes.items():
        if n < cfg.num_envs:
            raise UsageError(f"{key}={n}: at least num_envs ({cfg.num_envs})")
    env_cfg = env_config(cfg)
    check_env_config(env_cfg)
    if uses_ale_vector_env(env_cfg):
        raise UsageError(
            "the env's settings select ale-py's C++ vector env, which gives no access to the RAM"
        )
    check_policy(_collect_config(cfg), games)
    return games


def _collect_config(cfg: ProbeDatasetConfig):
    from atari_pb.data.collect import CollectConfig

    return CollectConfig(policy=cfg.policy, epsilon=cfg.epsilon, seed=cfg.seed)


def settings(cfg: ProbeDatasetConfig) -> dict:
    """Everything that shapes a game's data, except which games: equal settings give equal files."""
    out = asdict(cfg)
    out.pop("games")
    if out["policy"] == "random":
        out.pop("epsilon")  # unused
    out["env"] = asdict(env_config(cfg))
    out["format_version"] = FORMAT_VERSION
    return out


def env_seed(cfg: ProbeDatasetConfig, game: Game) -> int:
    """The seed of env 0 of `game` (env i: + i), independent of which other games are collected."""
    return zlib.crc32(f"probes/{cfg.seed}/{game.name}".encode()) % (1 << 31)


def policy_seeds(cfg: ProbeDatasetConfig, game: Game) -> list[list[int]]:
    """One generator seed per env, apart from the env's own (the released env draws its no-ops from
    default_rng(env seed): the same seed would tie the first actions to the no-op count)."""
    base = env_seed(cfg, game)
    return [[1, base + i] for i in range(cfg.num_envs)]


# ------------------------------------------------------------------------------------------- manifest
@dataclass(frozen=True)
class ProbeFile:
    path: str  # relative to DST: "<game>.h5"
    game: str
    length: int
    sha256: str
    bytes: int


def read_manifest(root: Path) -> tuple[dict | None, dict[str, ProbeFile]]:
    """(settings, files by game) of `root/manifest.json`; (None, {}) when there is none yet."""
    path = Path(root) / MANIFEST_NAME
    if not path.exists():
        return None, {}
    try:
        doc = json.loads(path.read_text())
        if doc.get("format") != FORMAT:  # another kind of directory (ingest's shards...): a wrong path
            raise UsageError(f"{path} is not a probe dataset manifest (format {doc.get('format')!r})")
        if doc.get("format_version") != FORMAT_VERSION:
            raise DataError(
                f"{path}: format_version {doc.get('format_version')!r}, this atari-pb reads {FORMAT_VERSION}; "
                "collect the probe data again into a new directory"
            )
        files = [ProbeFile(**e) for e in doc["files"]]
        return doc["settings"], {f.game: f for f in files}
    except (DataError, UsageError):
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(f"{path}: malformed manifest ({err})") from None


def held_games(root: str | Path, *splits: str) -> list[str]:
    """The games of `splits` whose probe data `root`'s manifest lists (none when it has no manifest):
    what `make probe` probes, so that a dataset of a few games (probes_demo) needs no --games."""
    _, files = read_manifest(Path(root))
    wanted = {g.name for split in splits for g in split_games(split)}
    return [g for g in sorted(files) if g in wanted]


def write_manifest(root: Path, config: dict, files: dict[str, ProbeFile]) -> None:
    """Rewrite the manifest atomically (a reader sees the old one or the new one), entries sorted by game."""
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "settings": config,
        "files": [asdict(files[g]) for g in sorted(files)],
    }
    tmp = Path(root) / f".{MANIFEST_NAME}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, Path(root) / MANIFEST_NAME)
    fsync_dir(Path(root))


# ------------------------------------------------------------------------------------------- playing
def env_rams(env, out: np.ndarray) -> np.ndarray:
    """Each env's RAM into `out` (num_envs, 128) uint8. ale-py's C++ vector env gives no RAM; the engine
    that plays the released env steps one `ale_py.ALEInterface` per env, whose RAM is read here."""
    ales = getattr(env, "ales", None)
    if ales is None or len(ales) != len(out):
        raise UsageError(f"{type(env).__name__} gives no access to its envs' RAM; probe data needs it")
    for ale, row in zip(ales, out):
        ale.getRAM(row)
    return out


@dataclass
class Stream:
    """A game's frames in the order they were played (rows: step-major, env-minor)."""

    obs: np.ndarray  # (N, 4, 84, 84) uint8, a memory map
    ram: np.ndarray  # (N, 128) uint8
    episode: np.ndarray  # (N,) int32
    step: np.ndarray  # (N,) int32
    lives: np.ndarray  # (N,) int32


def play(game: Game, cfg: ProbeDatasetConfig, obs_path: Path, progress: tqdm | None = None) -> Stream:
    """Play `game_frames(cfg, game)` frames with `cfg.num_envs` envs; frame stacks go to `obs_path`."""
    from atari_pb.data.collect import make_policy

    n, total = cfg.num_envs, game_frames(cfg, game)
    env, obs = make_vector_env(game, n, env_config(cfg), env_seed(cfg, game))
    try:
        policy = make_policy(_collect_config(cfg), game, env.single_action_space.n, policy_seeds(cfg, game))
        frames = np.lib.format.open_memmap(obs_path, "w+", np.uint8, (total, *obs.shape[1:]))
        stream = Stream(
            frames,
            np.empty((total, RAM_SIZE), np.uint8),
            np.empty(total, np.int32),
            np.empty(total, np.int32),
            np.empty(total, np.int32),
        )
        rams = np.empty((n, RAM_SIZE), np.uint8)
        episode, step = np.arange(n, dtype=np.int32), np.zeros(n, np.int32)
        row, next_episode = 0, n
        while True:
            take = min(n, total - row)
            rows = slice(row, row + take)
            stream.obs[rows], stream.ram[rows] = obs[:take], env_rams(env, rams)[:take]
            stream.episode[rows], stream.step[rows] = episode[:take], step[:take]
            stream.lives[rows] = [ale.lives() for ale in env.ales[:take]]
            row += take
            if progress is not None:
                progress.update(take)
            if row == total:
                return stream
            obs, _, terminated, truncated, info = env.step(policy.act(obs))
            step += 1
            ended = terminated | truncated  # obs[i] is already the next game's first
            if cfg.episode_end == "life":
                ended = ended | info["lost_life"]  # obs[i]: the first after the lost life (module docstring)
            for i in np.flatnonzero(ended):
                episode[i], step[i], next_episode = next_episode, 0, next_episode + 1
    finally:
        env.close()


def assign_splits(episode: np.ndarray, share: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Split code (N,) uint8 per row, whole episodes per split. Episodes are taken in a random order, each
    to the split furthest below its share of the frames; a split with a share but no episode then takes
    the shortest episode of a split holding several."""
    ids, lengths = np.unique(episode, return_counts=True)
    target = share * len(episode)
    held = np.zeros(len(SPLITS))
    chosen = np.zeros(len(ids), np.uint8)
    for k in rng.permutation(len(ids)):
        s = int(np.argmax(np.where(share > 0, target - held, -np.inf)))
        chosen[k], held[s] = s, held[s] + lengths[k]
    for s in np.flatnonzero(share > 0):
        if not (chosen == s).any():
            counts = np.bincount(chosen, minlength=len(SPLITS))
            donors = np.flatnonzero(counts[chosen] > 1)  # episodes of splits holding several
            if len(donors) == 0:
                raise DataError(f"{len(ids)} episodes cannot fill the splits {share.tolist()}")
            chosen[donors[np.argmin(lengths[donors])]] = s
    return chosen[np.searchsorted(ids, episode)]


def split_seed(cfg: ProbeDatasetConfig, game: Game) -> list[int]:
    return [2, env_seed(cfg, game)]


# ------------------------------------------------------------------------------------------- writing
def write_game_file(
    path: Path, game: Game, stream: Stream, split: np.ndarray, cfg: ProbeDatasetConfig
) -> None:
    """The finished layout (module docstring) at `path`: rows sorted by split, episode, step."""
    order = np.lexsort((stream.step, stream.episode, split))
    total = len(order)
    indices = np.array(ram_indices(game.name), np.int64)
    with h5py.File(path, "w", libver="v110") as f:
        obs = f.create_dataset(
            "obs",
            shape=stream.obs.shape,
            dtype=np.uint8,
            chunks=(min(_CHUNK, total), *stream.obs.shape[1:]),
            compression="gzip",
            compression_opts=1,
            track_times=False,
        )
        for start in range(0, total, _WRITE_BLOCK):
            rows = order[start : start + _WRITE_BLOCK]
            obs[start : start + len(rows)] = stream.obs[rows]
        ram = stream.ram[order]
        arrays = {
            "ram": ram,
            "labels": ram[:, indices],
            "split": split[order].astype(np.uint8),
            "episode": stream.episode[order],
            "step": stream.step[order],
            "lives": stream.lives[order],
        }
        for name, array in arrays.items():
            f.create_dataset(name, data=array, track_times=False)
        f.attrs.update(
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "game": game.name,
                "variables": json.dumps(variables(game.name)),
                "ram_indices": json.dumps(indices.tolist()),
                "categories": json.dumps(CATEGORIES[game.name]),
                "policy": cfg.policy,
                "seed": cfg.seed,
                "settings": json.dumps(settings(cfg), sort_keys=True),
            }
        )


def collect_game(dst: Path, game: Game, cfg: ProbeDatasetConfig, progress: tqdm | None = None) -> ProbeFile:
    """Play and write one game's file under a temporary name, renamed when complete."""
    final = dst / f"{game.name}.h5"
    tmp = dst / f".{game.name}.h5.tmp"
    obs_tmp = dst / f".{game.name}.obs.tmp.npy"
    started = time.perf_counter()
    try:
        stream = play(game, cfg, obs_tmp, progress)
        played = time.perf_counter() - started
        split = assign_splits(stream.episode, fractions(cfg), np.random.default_rng(split_seed(cfg, game)))
        episodes = len(np.unique(stream.episode))
        write_game_file(tmp, game, stream, split, cfg)
        del stream  # the memory map, before its file goes
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        entry = ProbeFile(final.name, game.name, len(split), sha256_file(tmp), tmp.stat().st_size)
        os.replace(tmp, final)
        fsync_dir(dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        obs_tmp.unlink(missing_ok=True)
    counts = np.bincount(split, minlength=len(SPLITS))
    log.info(
        "%s: %d frames (%s) in %d episodes; played at %.0f frames/s, written in %.1f s",
        game.name,
        len(split),
        ", ".join(f"{s} {c}" for s, c in zip(SPLITS, counts)),
        episodes,
        len(split) / played,
        time.perf_counter() - started - played,
    )
    return entry


def collect_probes(dst: Path, cfg: ProbeDatasetConfig) -> list[str]:
    """Collect every game of `cfg` into `dst`; games already finished with the same settings are kept.
    Returns the games collected now."""
    dst = Path(dst)
    games = check_config(cfg)
    if dst.exists() and not dst.is_dir():
        raise UsageError(f"{dst} is a file; collect-probes needs a directory")
    config = settings(cfg)
    done_config, files = read_manifest(dst)
    if done_config is not None and done_config != config:
        changed = sorted(k for k in config.keys() | done_config.keys() if config.get(k) != done_config.get(k))
        raise UsageError(
            f"{dst} holds probe data collected with other settings (different {', '.join(changed)}); "
            "collect into another directory"
        )
    todo = [g for g in games if not _finished(dst, files.get(g.name))]
    for g in games:
        if g not in todo:
            log.info("%s: already collected in %s", g.name, dst)
    dst.mkdir(parents=True, exist_ok=True)
    with tqdm(
        total=sum(game_frames(cfg, g) for g in todo),
        unit="frame",
        unit_scale=True,
        desc="collect-probes",
        disable=None,
    ) as bar:
        for game in todo:
            files[game.name] = collect_game(dst, game, cfg, bar)
            write_manifest(dst, config, files)
    return [g.name for g in todo]


def _finished(dst: Path, entry: ProbeFile | None) -> bool:
    """Listed in the manifest, and its file is there with the listed size (the reader checks the hash)."""
    if entry is None:
        return False
    path = dst / entry.path
    return path.is_file() and path.stat().st_size == entry.bytes


# ------------------------------------------------------------------------------------------- reading
class ProbeData:
    """One game's probe data, checked against the manifest's SHA-256 when opened.

    data = ProbeData("data/probes/probes_demo", "pong")   # DST, or DST/pong.h5
    data.variables                                      # ["player_y", "player_x", ...]
    data.obs("train"), data.labels("train")             # (M, 4, 84, 84) uint8, (M, V) uint8
    """

    def __init__(self, path: str | Path, game: str):
        path = Path(path)
        self.game = check_annotated(game)
        self.path = path / f"{self.game}.h5" if path.is_dir() else path
        root = self.path.parent
        _, files = read_manifest(root)
        entry = files.get(self.game)
        if entry is None or entry.path != self.path.name:
            raise DataError(f"{self.path}: not listed for {self.game} in {root / MANIFEST_NAME}")
        if not self.path.is_file():
            raise DataError(f"{self.path}: missing (listed in {root / MANIFEST_NAME})")
        if self.path.stat().st_size != entry.bytes or sha256_file(self.path) != entry.sha256:
            raise DataError(
                f"{self.path}: SHA-256 does not match {root / MANIFEST_NAME} (corrupted or changed)"
            )
        self._read_index(entry.length)

    def _read_index(self, length: int) -> None:
        try:
            with h5py.File(self.path, "r") as f:
                attrs = dict(f.attrs)
                self.split = f["split"][:]
                self.episode = f["episode"][:]
                self.step = f["step"][:]
                self.lives = f["lives"][:]
                shapes = {name: f[name].shape for name in ("obs", "ram", "labels")}
        except (OSError, KeyError) as err:
            raise DataError(f"{self.path}: not a probe data file ({err})") from None
        if attrs.get("format") != FORMAT or attrs.get("format_version") != FORMAT_VERSION:
            raise DataError(
                f"{self.path}: format {attrs.get('format')!r} v{attrs.get('format_version')!r}, not {FORMAT} v{FORMAT_VERSION}"
            )
        self.variables: list[str] = json.loads(attrs["variables"])
        self.ram_indices: list[int] = json.loads(attrs["ram_indices"])
        self.categories: dict[str, str] = json.loads(attrs["categories"])
        self.settings: dict = json.loads(attrs["settings"])
        if (
            attrs.get("game") != self.game
            or self.variables != variables(self.game)
            or self.ram_indices != ram_indices(self.game)
        ):
            raise DataError(
                f"{self.path}: made for {attrs.get('game')!r} with another annotation table than this atari-pb's"
            )
        want = {
            "obs": (length, *shapes["obs"][1:]),
            "ram": (length, RAM_SIZE),
            "labels": (length, len(self.variables)),
        }
        if (
            shapes != want
            or not len(self.split) == len(self.episode) == len(self.step) == len(self.lives) == length
        ):
            raise DataError(
                f"{self.path}: shapes {shapes} do not fit {length} frames of {len(self.variables)} variables"
            )
        self._ranges = {}
        for code, name in enumerate(SPLITS):
            rows = np.flatnonzero(self.split == code)
            if len(rows) and rows[-1] - rows[0] + 1 != len(rows):
                raise DataError(f"{self.path}: the {name} rows are not one block")
            self._ranges[name] = slice(int(rows[0]), int(rows[-1]) + 1) if len(rows) else slice(0, 0)

    def rows(self, split: str) -> slice:
        """The block of rows of `split` (train, val or test)."""
        if split not in self._ranges:
            raise UsageError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        return self._ranges[split]

    def __len__(self) -> int:
        return len(self.split)

    def _read(self, name: str, split: str) -> np.ndarray:
        with h5py.File(self.path, "r") as f:
            return f[name][self.rows(split)]

    def obs(self, split: str) -> np.ndarray:
        """Frame stacks (M, 4, 84, 84) uint8 of `split`, episode after episode, each in step order."""
        return self._read("obs", split)

    def labels(self, split: str) -> np.ndarray:
        """(M, V) uint8: the RAM bytes of `self.variables`, row by row with `obs(split)`."""
        return self._read("labels", split)

    def ram(self, split: str) -> np.ndarray:
        """(M, 128) uint8: the whole RAM, row by row with `obs(split)`."""
        return self._read("ram", split)

    def episodes(self, split: str) -> np.ndarray:
        return self.episode[self.rows(split)]

    def steps(self, split: str) -> np.ndarray:
        return self.step[self.rows(split)]
