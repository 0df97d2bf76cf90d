"""RL Unplugged Atari (`atari_episodes_ordered`): the logged DQN-Replay runs as GZIP TFRecord files, read
prefix-only into the same shards that DQN-Replay gives (layout `rlu`).

Where (TFDS `rl_unplugged/rlu_atari_checkpoints_ordered`): `<base>/<Game>/run_<r>-<i:05d>-of-<N:05d>`, runs
1-5; shard `i` is checkpoint `i` of 1M steps, 0-based, in time order; N is 50 for most games and 49 for a
few (TFDS's `_SHORT_GAMES`: Carnival, Gravitar, StarGunner). A local copy mirrors that layout, so a tree
made by `gsutil cp` ingests as well as one made by `atari-pb download --source rlu`.

What a record holds: one `tf.train.Example` per episode, episodes in order within the checkpoint, with
`checkpoint_idx`, `episode_idx`, `episode_return`, `clipped_episode_return` and the equal-length lists
`observations` (PNG, 84x84x1 uint8), `actions`, `unclipped_rewards`, `clipped_rewards`, `discounts`.

How an episode becomes DQN-Replay transitions (o_t, a_t, r_t, terminal_t). The evidence, and what it leaves
open, is in the parity document (docs/parity.md, "RL Unplugged"):
  * TFDS's `atari_example_to_rlds` says that in an episode whose last discount is 0 "in the last step only
    the observation has valid information (the terminal state)": step t holds o_t, the action a_t taken
    there and the reward after it, and the last step is the observation after the last action. DQN-Replay
    never stores that observation (Dopamine's `end_episode` stores the last action's transition and
    stops). So an episode of L steps gives its first L - 1 steps as transitions, and the last one is dropped.
  * Every episode end inside the prefix is stored as terminal = 1, the terminal of the last kept step:
    Dopamine's `end_episode(reward)` stores `is_terminal=True` whether the game ended or the step limit cut
    it, so that is how DQN-Replay holds both. Whether the end was terminal (last discount 0) is counted
    per shard (`terminal_ends`, `cut_ends`), so nothing is lost.
  * rewards are `clipped_rewards`, as DQN-Replay stores them (Dopamine clips before storing).
  * actions index the game's minimal action set, as DQN-Replay's do; they are checked against its size.
  * Two checks of that reading are counted per shard and logged when non-zero: a dropped last step that
    carries a reward (`dropped_rewards`) and a whole episode whose kept clipped rewards do not sum to its
    `clipped_episode_return` (`return_mismatches`). Both are 0 when the reading above is right.

The prefix: checkpoint K's shard holds its first `samples` transitions; the episode that straddles the cut
keeps its first part, with no terminal at the cut (the sampler never reads past a shard's end).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from atari_pb.data.replay_format import FRAME_SHAPE
from atari_pb.data.tfrecord import RecordStream, parse_example
from atari_pb.errors import DataError, UsageError
from atari_pb.games import Game

log = logging.getLogger(__name__)

RLU_LAYOUT = "rlu"
DEFAULT_RLU_URL = "https://storage.googleapis.com/rl_unplugged/atari_episodes_ordered"
# The 46 games of TFDS's rl_unplugged/atari_utils.py (_GAMES), by DQN-Replay's CamelCase names.
RLU_GAMES = frozenset(
    "Alien Amidar Assault Asterix Atlantis BankHeist BattleZone BeamRider Boxing Breakout Carnival Centipede "
    "ChopperCommand CrazyClimber DemonAttack DoubleDunk Enduro FishingDerby Freeway Frostbite Gopher Gravitar "
    "Hero IceHockey Jamesbond Kangaroo Krull KungFuMaster MsPacman NameThisGame Phoenix Pong Pooyan Qbert "
    "Riverraid RoadRunner Robotank Seaquest SpaceInvaders StarGunner TimePilot UpNDown VideoPinball "
    "WizardOfWor YarsRevenge Zaxxon".split()
)
# Shard counts tried first when discovering a run's: TFDS's (50, and 49 for its _SHORT_GAMES); any other
# count up to MAX_SHARD_COUNT is tried after them.
KNOWN_SHARD_COUNTS = (50, 49)
MAX_SHARD_COUNT = 100
SOURCE_RECORD = "rlu.json"  # at the root of a downloaded tree: {"base_url": ...}, for the manifest's URLs
BLOCK = (
    1 << 16
)  # compressed bytes decided on at a time: a prefix ends at a multiple of it (or the file's end)
_SHARD_NAME = re.compile(r"run_(\d+)-(\d{5})-of-(\d{5})")
_INT_FEATURES = ("checkpoint_idx", "episode_idx", "actions")
_FLOAT_FEATURES = (
    "episode_return",
    "clipped_episode_return",
    "unclipped_rewards",
    "clipped_rewards",
    "discounts",
)
_LISTS = ("observations", "actions", "unclipped_rewards", "clipped_rewards", "discounts")


def shard_name(run: int, ckpt: int, count: int) -> str:
    return f"run_{run}-{ckpt:05d}-of-{count:05d}"


def rlu_url(base_url: str, game: Game, run: int, ckpt: int, count: int) -> str:
    return f"{base_url.rstrip('/')}/{game.replay_name}/{shard_name(run, ckpt, count)}"


def local_shard(root: Path, game: Game, run: int, ckpt: int) -> Path | None:
    """`<root>/<Game>/run_<r>-<ckpt>-of-<N>`, whatever N is; None when there is none."""
    found = sorted(Path(root, game.replay_name).glob(f"run_{run}-{ckpt:05d}-of-*"))
    found = [p for p in found if _SHARD_NAME.fullmatch(p.name)]
    if len(found) > 1:
        raise DataError(
            f"{found[0].parent}: {len(found)} files for run {run} checkpoint {ckpt}: {found[0].name}, ..."
        )
    return found[0] if found else None


def local_ckpts(root: Path, game: Game, run: int) -> list[int]:
    names = (_SHARD_NAME.fullmatch(p.name) for p in Path(root, game.replay_name).glob(f"run_{run}-*"))
    return sorted(int(m[2]) for m in names if m)


def source_url(root: Path, path: Path) -> str:
    """Where a local shard file came from: the base URL its download recorded, else RLU's public one."""
    record = Path(root) / SOURCE_RECORD
    base = DEFAULT_RLU_URL
    if record.is_file():
        try:
            base = json.loads(record.read_text())["base_url"]
        except (ValueError, KeyError, TypeError) as err:
            raise DataError(f"{record}: malformed ({err})") from None
    return f"{base.rstrip('/')}/{path.parent.name}/{path.name}"


def write_source_record(root: Path, base_url: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (Path(root) / SOURCE_RECORD).write_text(json.dumps({"base_url": base_url}, indent=1) + "\n")


def check_coverage(games: Sequence[Game], skip_missing: bool) -> list[Game]:
    """The requested games that RL Unplugged has; the others stop the request in one line, or with
    `skip_missing` are left out with a warning."""
    missing = [g.name for g in games if g.replay_name not in RLU_GAMES]
    if not missing:
        return list(games)
    if not skip_missing:
        raise UsageError(
            f"RL Unplugged Atari has no data for {len(missing)} of the {len(games)} games asked for: "
            f"{', '.join(missing)}; pass --skip-missing-games to go on with the other "
            f"{len(games) - len(missing)}"
        )
    kept = [g for g in games if g.replay_name in RLU_GAMES]
    if not kept:
        raise UsageError(f"RL Unplugged Atari has none of the games asked for ({', '.join(missing)})")
    log.warning("RL Unplugged Atari lacks %s; going on with %d games", ", ".join(missing), len(kept))
    return kept


# ----------------------------------------------------------------------------------------- episodes
@dataclass
class Episode:
    record: int  # its index in the file
    checkpoint_idx: int
    episode_idx: int
    clipped_episode_return: float
    observations: Sequence[bytes]
    actions: np.ndarray  # int64
    clipped_rewards: np.ndarray  # float32
    discounts: np.ndarray  # float32

    @property
    def terminal(self) -> bool:
        """Whether the episode ended in a terminal state (its last discount is 0)."""
        return bool(self.discounts[-1] == 0)

    @property
    def transitions(self) -> int:
        """DQN-Replay transitions it holds: every step but the last, the observation after the last action."""
        return len(self.actions) - 1


def parse_episode(record: bytes, source: str, index: int) -> Episode:
    """One RLU record -> an Episode; a missing feature or lists of unequal length name the record."""
    features = parse_example(record, source, index).features.feature
    where = f"{source}: record {index}"
    values = {}
    for name in (*_INT_FEATURES, *_FLOAT_FEATURES, "observations"):
        if name not in features:
            raise DataError(f"{where}: no feature {name!r}; an RL Unplugged episode has {', '.join(_LISTS)}")
        kind = (
            "int64_list"
            if name in _INT_FEATURES
            else "float_list"
            if name in _FLOAT_FEATURES
            else "bytes_list"
        )
        feature = features[name]
        if feature.WhichOneof("kind") not in (kind, None):
            raise DataError(f"{where}: feature {name!r} is a {feature.WhichOneof('kind')}, expected a {kind}")
        values[name] = getattr(feature, kind).value
    lengths = {name: len(values[name]) for name in _LISTS}
    if len(set(lengths.values())) != 1:
        raise DataError(
            f"{where}: lists of unequal length in one episode ({', '.join(f'{k} {v}' for k, v in lengths.items())})"
        )
    if lengths["actions"] == 0:
        raise DataError(f"{where}: an empty episode")
    for name in ("checkpoint_idx", "episode_idx", "clipped_episode_return"):
        if len(values[name]) != 1:
            raise DataError(f"{where}: feature {name!r} holds {len(values[name])} values, expected 1")
    return Episode(
        record=index,
        checkpoint_idx=int(values["checkpoint_idx"][0]),
        episode_idx=int(values["episode_idx"][0]),
        clipped_episode_return=float(values["clipped_episode_return"][0]),
        observations=values["observations"],
        actions=np.asarray(values["actions"], np.int64),
        clipped_rewards=np.asarray(values["clipped_rewards"], np.float32),
        discounts=np.asarray(values["discounts"], np.float32),
    )


class EpisodeCounter:
    """What `download` feeds an RLU file through: counts the transitions of its records until it has
    `samples`, deciding in aligned BLOCKs of the file so the cut lands on the same byte however the bytes
    arrived (a resumed download ends byte-identical to an uninterrupted one)."""

    def __init__(self, samples: int):
        self.samples = samples
        self.reset()

    def reset(self) -> None:
        self._stream: RecordStream | None = None
        self._pending = bytearray()
        self._offset = 0  # file bytes fed so far
        self.transitions = 0

    @property
    def done(self) -> bool:
        return self.transitions >= self.samples

    @property
    def frames_in(self) -> int:
        return self.transitions

    def feed(self, data: bytes, source: str) -> int:
        """Take `data` (the next bytes of the file); returns how many of them the prefix keeps."""
        if self._stream is None:
            self._stream = RecordStream(source)
        before = self._offset
        self._offset += len(data)
        self._pending += data
        while not self.done and len(self._pending) >= BLOCK:
            self._take(BLOCK)
        if not self.done:
            return len(data)
        return min(len(data), max(0, self._stream.consumed - before))

    def finish(self, source: str) -> None:
        """The file ended: decide on what is left."""
        if self._stream is None:
            self._stream = RecordStream(source)
        if self._pending and not self.done:
            self._take(len(self._pending))

    def _take(self, n: int) -> None:
        block = bytes(self._pending[:n])
        del self._pending[:n]
        for record in self._stream.feed(block):
            self.transitions += max(
                parse_episode(record, self._stream.source, self._stream.records - 1).transitions, 0
            )
            if self.done:
                break

    def shortfall(self, url: str) -> str:
        return f"{url}: the file ends after {self.transitions} transitions, {self.samples} were asked for"


# ------------------------------------------------------------------------------------------- prefix
@dataclass
class Prefix:
    """The first `samples` transitions of one RLU file, as DQN-Replay transitions (module docstring)."""

    pngs: list[bytes]
    action: np.ndarray  # int32
    reward: np.ndarray  # float32, clipped
    terminal: np.ndarray  # uint8
    records: list[int] = field(default_factory=list)  # the record index of each transition
    episodes: list[dict] = field(default_factory=list)  # episode_idx, start, transitions, terminal
    checkpoint_idx: list[int] = field(default_factory=list)  # the values its records carry
    bytes_read: int = 0  # compressed bytes read from the file
    terminal_ends: int = 0
    cut_ends: int = 0  # episode ends inside the prefix whose last discount is not 0
    dropped_rewards: int = 0
    return_mismatches: int = 0


def _episodes(path: Path, source: str, full: bool) -> Iterator[tuple[Episode, RecordStream]]:
    stream = RecordStream(source)
    with open(path, "rb") as f:
        while chunk := f.read(BLOCK):
            for record in stream.feed(chunk):
                yield parse_episode(record, source, stream.records - 1), stream
        if full and not (stream.gzip_ended and stream.at_record_boundary):
            raise DataError(f"{source}: truncated file (the GZIP stream or its last record is cut short)")


def read_prefix(path: Path, samples: int, num_actions: int, full_check: bool = False) -> Prefix:
    """The first `samples` transitions of `path`; with `full_check` every later record is read and checked
    too (CRCs, structure) and the file must end cleanly."""
    source = str(path)
    out = Prefix([], np.empty(samples, np.int32), np.empty(samples, np.float32), np.zeros(samples, np.uint8))
    n = 0
    stream = None
    for episode, stream in _episodes(path, source, full_check):
        if n < samples:
            n = _add(out, episode, n, samples, num_actions, source)
            out.bytes_read = stream.consumed
            if n == samples and not full_check:
                break
        else:  # --full-check: the rest is read and checked as well
            out.checkpoint_idx.append(episode.checkpoint_idx)
    if n < samples:
        ended = stream is not None and stream.gzip_ended and stream.at_record_boundary
        raise DataError(
            f"{source}: "
            + ("" if ended else "truncated GZIP stream: ")
            + f"{n} transitions ({len(out.episodes)} episodes), {samples} were asked for"
        )
    return out


def _add(out: Prefix, episode: Episode, n: int, samples: int, num_actions: int, source: str) -> int:
    """Append the episode's transitions (up to `samples` in all); returns the new count."""
    take = min(episode.transitions, samples - n)
    out.checkpoint_idx.append(episode.checkpoint_idx)
    if take <= 0:
        return n
    actions = episode.actions[:take]
    bad = np.flatnonzero((actions < 0) | (actions >= num_actions))
    if bad.size:
        raise DataError(
            f"{source}: record {episode.record}: action {actions[bad[0]]} at step {bad[0]} is not an index into "
            f"the game's minimal action set (0..{num_actions - 1})"
        )
    out.action[n : n + take] = actions
    out.reward[n : n + take] = episode.clipped_rewards[:take]
    out.pngs.extend(episode.observations[:take])
    out.records.extend([episode.record] * take)
    whole = take == episode.transitions
    if whole:
        out.terminal[n + take - 1] = 1
        out.terminal_ends += episode.terminal
        out.cut_ends += not episode.terminal
        out.dropped_rewards += bool(episode.clipped_rewards[-1] != 0)
        kept = float(episode.clipped_rewards[:take].sum(dtype=np.float64))
        out.return_mismatches += abs(kept - episode.clipped_episode_return) > 1e-3
    out.episodes.append(
        {
            "episode_idx": episode.episode_idx,
            "start": n,
            "transitions": take,
            "whole": whole,
            "terminal": episode.terminal,
        }
    )
    return n + take


def decode_frames(prefix: Prefix, start: int, out: np.ndarray, source: str) -> None:
    """PNGs start .. start+len(out)-1 of the prefix into `out` (uint8, (k, 84, 84))."""
    import cv2  # only where frames are decoded: `download` never needs it

    for i in range(len(out)):
        png = np.frombuffer(prefix.pngs[start + i], np.uint8)
        frame = cv2.imdecode(png, cv2.IMREAD_UNCHANGED)
        if frame is None or frame.dtype != np.uint8 or frame.shape not in (FRAME_SHAPE, (*FRAME_SHAPE, 1)):
            what = (
                "does not decode"
                if frame is None
                else f"is {frame.dtype} {frame.shape}, not an 84x84x1 uint8 frame"
            )
            raise DataError(
                f"{source}: record {prefix.records[start + i]}: the PNG of transition {start + i} {what}"
            )
        out[i] = frame.reshape(FRAME_SHAPE)
