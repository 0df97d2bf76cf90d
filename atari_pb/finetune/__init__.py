"""Fine-tuning protocols, one module each (offline_bc, rainbow, ...), registered by name (see base.py), and
the sweep that runs them over games and seeds (run.py). Importing this package imports every module in it,
which registers each protocol: adding one is adding a module and a YAML in finetune/."""

import importlib
import pkgutil

from atari_pb.finetune.base import PROTOCOLS, FinetuneResult, FinetuneTask, Protocol, protocol_class

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["PROTOCOLS", "FinetuneResult", "FinetuneTask", "Protocol", "protocol_class"]
