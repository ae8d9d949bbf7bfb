"""The wheel installs only ``sanitel``: built from a copy of the tree, installed into a fresh venv next to a
dummy distribution that owns the top-level names ``api`` and ``schemas``, it must run and leave them alone.

The fresh venv gets the main venv's site-packages for the third-party dependencies through a ``.pth`` path
line. A ``.pth`` file inside a directory added that way is not processed, so the editable install's import
hook (``__editable__.sanitel-*.pth``) stays out: ``sanitel`` must come from the wheel, and the test checks it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# what a wheel never needs: the venv, local stack data, build output, caches, tests and benchmarks
NOT_SOURCE = (".git", ".venv", "var", "build", "dist", "tests", "bench", "node_modules", "__pycache__",
              "*.egg-info", ".pytest_cache", ".ruff_cache", ".mypy_cache", ".hypothesis")
STAGES = ("schemas", "ingest", "processors", "alerts", "api", "simulators")
DUMMY_MARK = "dummy-top-level-package"

pytestmark = pytest.mark.timeout(180)


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def run(self, *args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        # no PYTHONPATH and a neutral working directory: nothing but the venv decides what imports
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        return subprocess.run([str(a) for a in args], cwd=cwd or self.venv, env=env, capture_output=True,
                               text=True, timeout=120)

    def python_json(self, code: str) -> object:
        done = self.run(self.python, "-c", code)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


def _pip_wheel(project: Path, out: Path) -> None:
    """``pip wheel`` with the running venv's setuptools when it can build this project, so no download is needed;
    otherwise in pip's isolated build environment, which installs setuptools from the configured indexes."""
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--disable-pip-version-check", "-w", str(out)]
    offline = _venv_can_build(project)
    done = subprocess.run([*pip, *(["--no-build-isolation"] if offline else []), str(project)],
                          capture_output=True, text=True, timeout=150)
    if done.returncode != 0 and not offline and "no matching distribution" in done.stderr.lower():
        pytest.skip("the venv's setuptools cannot build the wheel and pip could not fetch the build requirements "
                    f"(offline?): {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr


def _venv_can_build(project: Path) -> bool:
    """True when the running venv's packages meet the project's [build-system].requires and can write wheels."""
    from packaging.requirements import Requirement  # a pytest dependency

    requires = tomllib.loads((project / "pyproject.toml").read_text())["build-system"]["requires"]
    for text in requires:
        requirement = Requirement(text)
        try:
            if not requirement.specifier.contains(metadata.version(requirement.name), prereleases=True):
                return False
        except metadata.PackageNotFoundError:
            return False
    # setuptools < 70.1 writes wheels only with the separate `wheel` package
    return importlib.util.find_spec("setuptools.command.bdist_wheel") is not None \
        or importlib.util.find_spec("wheel") is not None


def _build_wheel(out: Path, work: Path) -> Path:
    # Build from a copy: an in-tree build writes build/ and *.egg-info into the shared work tree, and stale
    # files under build/lib would end up in the wheel.
    source = work / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE), symlinks=True)
    _pip_wheel(source, out)
    (wheel,) = out.glob("sanitel-*.whl")
    return wheel


def _build_dummy(out: Path, work: Path) -> Path:
    """A distribution that owns top-level ``api`` and ``schemas``, the names the stage folders have in the repo."""
    project = work / "dummy"
    for package in ("api", "schemas"):
        (project / package).mkdir(parents=True)
        (project / package / "__init__.py").write_text(f"MARK = {DUMMY_MARK!r}\n")
    (project / "pyproject.toml").write_text(textwrap.dedent("""\
        [build-system]
        requires = ["setuptools>=64"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "dummy-top-level"
        version = "1.0"

        [tool.setuptools]
        packages = ["api", "schemas"]
        """))
    _pip_wheel(project, out)
    (wheel,) = out.glob("dummy_top_level-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    work = tmp_path_factory.mktemp("packaging")
    wheels = work / "wheels"
    wheel = _build_wheel(wheels, work)
    dummy = _build_dummy(wheels, work)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    # pip runs as the fresh interpreter (--python), so the console script's shebang is the fresh venv's;
    # installed before the .pth below, so pip sees an empty venv
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
                    "--no-index", "--quiet", "--disable-pip-version-check", str(dummy), str(wheel)],
                   check=True, capture_output=True, timeout=120)
    (fresh_site,) = (venv / "lib").glob("python3*/site-packages")
    (fresh_site / "main_venv_dependencies.pth").write_text("".join(f"{p}\n" for p in site.getsitepackages()))
    yield Installed(wheel, venv)


def test_wheel_puts_only_sanitel_into_site_packages(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as zf:
        names = zf.namelist()
        top_level = zf.read(next(n for n in names if n.endswith(".dist-info/top_level.txt"))).decode().split()
    tops = {n.split("/", 1)[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"sanitel"}, tops
    assert top_level == ["sanitel"]


def test_wheel_holds_every_module_of_the_tree(installed: Installed) -> None:
    # a subpackage missing from [tool.setuptools] packages would silently be left out of the wheel
    mapping: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    expected = set()
    for package, folder in mapping.items():
        for path in (ROOT / folder).rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            rel = path.relative_to(ROOT / folder)
            if package == "sanitel" and len(rel.parts) > 1:
                continue  # sanitel/ holds modules only; its stage subpackages come from their own folders
            expected.add("/".join((*package.split("."), *rel.parts)))
    with zipfile.ZipFile(installed.wheel) as zf:
        shipped = {n for n in zf.namelist() if n.endswith(".py")}
    assert sorted(expected - shipped) == []


def test_console_script_runs_from_the_wheel(installed: Installed) -> None:
    done = installed.run(installed.venv / "bin" / "sanitel", "--help")
    assert done.returncode == 0, done.stderr
    for command in ("collector", "hj212-listener", "simulate", "evaluator", "api", "maintain", "report"):
        assert command in done.stdout


def test_every_stage_imports_from_the_wheel_beside_a_foreign_api_package(installed: Installed) -> None:
    modules = ("sanitel", "sanitel.schemas", "sanitel.ingest.collector", "sanitel.processors.writer",
               "sanitel.alerts.evaluator", "sanitel.api.app", "sanitel.simulators.run", "sanitel.broker_auth")
    found = installed.python_json(textwrap.dedent(f"""\
        import importlib, json, sys
        files = {{name: importlib.import_module(name).__file__ for name in {modules!r}}}
        import api, schemas
        print(json.dumps({{"files": files, "dummy": [api.MARK, schemas.MARK],
                          "editable_hook": [type(f).__module__ for f in sys.meta_path if "editable" in repr(f)]}}))
        """))
    assert isinstance(found, dict)
    venv = str(installed.venv.resolve())
    outside = {name: f for name, f in found["files"].items() if not str(Path(f).resolve()).startswith(venv)}
    assert outside == {}, "imported from outside the fresh venv (the editable install leaked in?)"
    assert found["dummy"] == [DUMMY_MARK, DUMMY_MARK]
    assert found["editable_hook"] == []


def test_wheel_ships_migrations_rule_packs_and_scenarios(installed: Installed) -> None:
    loaded = installed.python_json(textwrap.dedent("""\
        import json
        from sanitel.db import load_migrations
        from sanitel.alerts.incidents import load_incident_rules
        from sanitel.alerts.rules import INCIDENT_RULES_FILE, default_rule_files, load_files
        from sanitel.emission_limits import limit_set, mee_rules
        from sanitel.signal_conditions import conditions
        from sanitel.simulators.scenario import available_scenarios, load_scenario

        rules = load_files(default_rule_files())
        print(json.dumps({
            "migrations": [m.version for m in load_migrations()],
            "rule_files": sorted([INCIDENT_RULES_FILE, *(p.name for p in default_rule_files())]),
            "rules": len(rules.rules),
            "incident_rules": load_incident_rules(None).group_wait.total_seconds(),
            "kernel_data": [len(limit_set().limits), mee_rules().furnace_min_temp_c, sorted(conditions())],
            "scenarios": {name: load_scenario(name).name for name in available_scenarios()},
        }))
        """))
    assert isinstance(loaded, dict)
    assert len(loaded["migrations"]) == len(list((ROOT / "schemas" / "migrations").glob("*.sql")))
    # the rule packs and the incidents' grouping and inhibition rules beside them
    assert loaded["rule_files"] == sorted(p.name for p in (ROOT / "alerts" / "rules").glob("*.y*ml"))
    assert loaded["rules"] > 0 and loaded["incident_rules"] == 30  # incidents.yaml read from the wheel
    # the kernel's data files: emission limits with the Order No. 10 figures, the noisy-signal conditions
    assert loaded["kernel_data"][0] > 0 and loaded["kernel_data"][1] == 850.0 and "bin_full" in loaded["kernel_data"][2]
    assert sorted(loaded["scenarios"]) == sorted(p.stem for p in (ROOT / "simulators" / "scenarios").glob("*.yaml"))
