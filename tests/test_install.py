"""Packaging: the sdist and the wheel built from it carry every subpackage, the game table and the five
configuration folders (at atari_pb/configs/<folder>/*.yaml in the wheel), and the unpacked wheel reads its
own copy of the configuration. Built with setuptools' PEP 517 hooks from a copy of the sources, as
`python -m build` does, so nothing is written into the checkout. (.ci/run also installs the wheel into a
fresh virtual environment and runs a short pipeline with it.)"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from atari_pb.config import CONFIG_KINDS

REPO = Path(__file__).resolve().parents[1]
SOURCES = ["setup.py", "setup.cfg", "pyproject.toml", "MANIFEST.in", "README.md"]


def _hook(hook: str, src: Path, out: Path) -> Path:
    """Run setuptools.build_meta.<hook>(out) in src; the path of the file it built."""
    code = f"import sys; from setuptools import build_meta; print(build_meta.{hook}(sys.argv[1]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(out)], cwd=src, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / proc.stdout.strip().splitlines()[-1]


def _packages() -> list[str]:
    return sorted(
        str(p.parent.relative_to(REPO)).replace(os.sep, "/")
        for p in (REPO / "atari_pb").rglob("__init__.py")
        if "__pycache__" not in p.parts
    )


def _yamls(kind: str) -> list[str]:
    return sorted(p.name for p in (REPO / kind).glob("*.yaml"))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """(sdist, wheel built from the unpacked sdist)."""
    tmp = tmp_path_factory.mktemp("build")
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ["atari_pb", *CONFIG_KINDS]:
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in SOURCES:
        shutil.copy2(REPO / name, src / name)
    sdist = _hook("build_sdist", src, tmp / "dist")
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp / "unpacked", filter="data")
    (root,) = (tmp / "unpacked").iterdir()
    return sdist, _hook("build_wheel", root, tmp / "dist")


def test_setup_py_copies_every_config_folder():
    tree = ast.parse((REPO / "setup.py").read_text())
    kinds = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(getattr(t, "id", None) == "CONFIG_KINDS" for t in node.targets)
    )
    assert tuple(kinds) == CONFIG_KINDS
    manifest = (REPO / "MANIFEST.in").read_text().splitlines()
    assert all(f"recursive-include {kind} *.yaml" in manifest for kind in CONFIG_KINDS)


def test_sdist_carries_the_config_folders(built):
    sdist, _ = built
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for kind in CONFIG_KINDS:
        assert {f"{kind}/{y}" for y in _yamls(kind)} <= names, kind
    assert {"setup.py", "atari_pb/game_table.csv"} <= names


def test_wheel_carries_packages_table_and_configs(built):
    _, wheel = built
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [p for p in _packages() if f"{p}/__init__.py" not in names]
    assert missing == [], f"subpackages missing from the wheel: {missing}"
    modules = sorted(
        str(p.relative_to(REPO)).replace(os.sep, "/")
        for p in (REPO / "atari_pb").rglob("*.py")
        if "__pycache__" not in p.parts
    )
    assert [m for m in modules if m not in names] == []
    assert "atari_pb/game_table.csv" in names
    for kind in CONFIG_KINDS:
        packed = sorted(n.rsplit("/", 1)[1] for n in names if n.startswith(f"atari_pb/configs/{kind}/"))
        assert packed == _yamls(kind) and packed, kind
    assert not any(n.startswith(("tests/", "bench/", *(f"{k}/" for k in CONFIG_KINDS))) for n in names)


def test_unpacked_wheel_reads_its_own_configs(built, tmp_path):
    _, wheel = built
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import atari_pb, atari_pb.config as c; "
        "print(atari_pb.__file__); print(c.config_root()); print(c.config_file('objectives', 'curl'))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ATARI_PB_CONFIG_ROOT")}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    module, root, curl = proc.stdout.split()
    assert Path(module).is_relative_to(site)
    assert Path(root) == site / "atari_pb" / "configs"
    assert Path(curl).read_text() == (REPO / "objectives" / "curl.yaml").read_text()


def _declared_requirements() -> set[str]:
    """Distribution names in setup.cfg's install_requires, normalised as pip does."""
    import configparser
    import re

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    lines = [ln.strip() for ln in cfg["options"]["install_requires"].splitlines()]
    names = [re.split(r"[<>=!~\[; ]", ln, maxsplit=1)[0] for ln in lines if ln and not ln.startswith("#")]
    return {re.sub(r"[-_.]+", "-", n).lower() for n in names}


def _third_party_imports() -> dict[str, str]:
    """Top-level module imported anywhere in atari_pb/ -> the first file importing it, stdlib and ours left out."""
    found: dict[str, str] = {}
    for path in sorted((REPO / "atari_pb").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                if top not in sys.stdlib_module_names and top != "atari_pb":
                    found.setdefault(top, str(path.relative_to(REPO)))
    return found


def test_every_imported_package_is_an_install_requirement():
    """A wheel install gets only install_requires: a module imported from a dev-only or undeclared
    distribution fails at run time in the user's environment (cv2 once did, in rollouts)."""
    import importlib.metadata as md
    import re

    declared = _declared_requirements()
    optional = {"ray"}  # the [ray] extra; imported only by the Ray backend, behind a clear message
    distributions = md.packages_distributions()
    missing = []
    for top, where in sorted(_third_party_imports().items()):
        if top in optional:
            continue
        dists = {re.sub(r"[-_.]+", "-", d).lower() for d in distributions.get(top, [top])}
        if not dists & declared:
            missing.append(f"{top} ({where}; distribution {sorted(dists)})")
    assert missing == [], f"imported but not in install_requires: {missing}"
