"""Data: DQN-Replay collection, download and ingest into HDF5 shards, and the sampler.

`from atari_pb.data import ShardSet` is the public entry point; the sampler (and torch) is imported only
when it is first used, so the data commands start quickly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from atari_pb.data.sampler import Draw, Shard, ShardSet
    from atari_pb.data.stream import SampleSpec, ShardStream, make_loader

_LAZY = {
    "Draw": "atari_pb.data.sampler",
    "Shard": "atari_pb.data.sampler",
    "ShardSet": "atari_pb.data.sampler",
    "SampleSpec": "atari_pb.data.stream",
    "ShardStream": "atari_pb.data.stream",
    "make_loader": "atari_pb.data.stream",
}
__all__ = ["Draw", "SampleSpec", "Shard", "ShardSet", "ShardStream", "make_loader"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'atari_pb.data' has no attribute {name!r}")
