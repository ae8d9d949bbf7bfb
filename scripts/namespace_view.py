"""Builds a symlink view of the installed namespace for tools that read source trees.

The stage folders sit at the top of the repository but install as ``sanitel.<stage>`` through
setuptools' ``package-dir`` mapping (pyproject.toml). mypy and import-linter cannot follow the
editable install's import hook, so they read this view instead: ``build/namespace/sanitel/`` with a
link per module of ``sanitel/`` and a link per mapped stage folder. The mapping is read from
pyproject.toml, so the view never disagrees with the wheel.

    python scripts/namespace_view.py      # prints the folder to put first on PYTHONPATH / MYPYPATH
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VIEW = ROOT / "build" / "namespace"


def build_view() -> Path:
    mapping: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    shutil.rmtree(VIEW, ignore_errors=True)
    top = VIEW / "sanitel"
    top.mkdir(parents=True)
    for entry in (ROOT / mapping["sanitel"]).iterdir():
        if entry.suffix in (".py", ".pyi", ".typed"):
            (top / entry.name).symlink_to(entry)
    for package, folder in mapping.items():
        if package != "sanitel":
            (VIEW / package.replace(".", "/")).symlink_to(ROOT / folder, target_is_directory=True)
    return VIEW


if __name__ == "__main__":
    print(build_view())
