"""Pre-training objectives, one module each. Importing this package imports every module in it, which
registers each objective under its name (see base.py): adding one is adding a module and a YAML."""

import importlib
import pkgutil

from atari_pb.objectives.base import OBJECTIVES, Objective, objective_class

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["OBJECTIVES", "Objective", "objective_class"]
