"""Packaging hook: the metadata is in setup.cfg; this file only puts the configuration YAMLs into the wheel.

The five folders of configuration (datasets/ objectives/ finetune/ eval/ prend/) stay at the top of the
checkout, where a source checkout or an editable install reads them. A built wheel carries a copy at
atari_pb/configs/<folder>/*.yaml, which atari_pb.config.config_root() prefers when it exists. An editable
install gets no copy, so it keeps reading the checkout.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# atari_pb.config.CONFIG_KINDS (tests/test_install.py keeps the two equal)
CONFIG_KINDS = ("datasets", "objectives", "finetune", "eval", "prend")


class BuildPyWithConfigs(build_py):
    """build_py, then <build_lib>/atari_pb/configs/<folder>/*.yaml copied from the top-level folders."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        target = Path(self.build_lib) / "atari_pb" / "configs"
        if target.exists():  # a reused build/ must not keep YAMLs deleted since
            shutil.rmtree(target)
        for kind in CONFIG_KINDS:
            files = sorted((ROOT / kind).glob("*.yaml"))
            if not files:
                raise SystemExit(f"setup.py: no configuration files in {ROOT / kind}")
            self.mkpath(str(target / kind))
            for src in files:
                self.copy_file(str(src), str(target / kind / src.name))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        if not self.editable_mode:
            target = Path(self.build_lib) / "atari_pb" / "configs"
            outputs += [
                str(target / kind / p.name) for kind in CONFIG_KINDS for p in (ROOT / kind).glob("*.yaml")
            ]
        return outputs


setup(cmdclass={"build_py": BuildPyWithConfigs})
