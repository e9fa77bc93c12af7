"""The distribution as users install it: it owns no top-level name but ``loader``, so an
app with a ``scheduler`` of its own (or PyPI's ``scheduler``) runs the clock unharmed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from tests.support.processes import (
    nothing_left_running,
    read_until,
    start_loader,
    terminate,
)

__all__ = ["nothing_left_running"]  # the fixture, used by the clock test here

ROOT = Path(__file__).resolve().parents[2]
#: What the build reads: the packages, and the files pyproject.toml names.
SOURCES = ["pyproject.toml", "README.md", "loader", "scheduler"]
#: The first setuptools that reads `license = "MIT"` (PEP 639): older ones need isolation.
SETUPTOOLS_FOR_LICENSE_EXPRESSIONS = 77


def _copy_sources(destination: Path) -> Path:
    """The project's sources in a directory of their own: a build writes next to them
    (build/, *.egg-info), and a stale build/ must not leak into the wheel under test."""
    destination.mkdir()
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(source, destination / name, ignore=ignore)
        else:
            shutil.copy2(source, destination / name)
    return destination


def _pip_install(project: Path, target: Path) -> None:
    """``pip install PROJECT`` (not editable) into ``target``, without dependencies: the
    ones of this environment serve. Offline when this environment can build it."""
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
    if int(version("setuptools").split(".")[0]) >= SETUPTOOLS_FOR_LICENSE_EXPRESSIONS:
        command.append("--no-build-isolation")
    command += ["--target", str(target), str(project)]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)


def test_a_regular_install_owns_no_top_level_name_but_loader(tmp_path: Path) -> None:
    """`pip install .` installs `loader` alone, with the clock inside as loader.scheduler."""
    site = tmp_path / "site"
    _pip_install(_copy_sources(tmp_path / "project"), site)

    (dist_info,) = site.glob("*.dist-info")
    assert (dist_info / "top_level.txt").read_text().split() == ["loader"]
    recorded = {line.split(",")[0] for line in (dist_info / "RECORD").read_text().splitlines()}
    # The console script is recorded outside site-packages (../../bin/loader).
    owned = {Path(path).parts[0] for path in recorded if not path.startswith("..")}
    assert owned - {dist_info.name} == {"loader"}, sorted(recorded)
    installed = {p.name for p in site.iterdir()} - {dist_info.name, "bin"}
    assert installed == {"loader"}
    assert (site / "loader" / "scheduler" / "clock.py").is_file()
    # Every module of every package of the library is in the install (a subpackage left
    # out of pyproject.toml's list would fail here).
    for module in (ROOT / "loader").rglob("*.py"):
        assert (site / module.relative_to(ROOT)).is_file(), module.relative_to(ROOT)

    code = (
        "import loader, loader.scheduler\n"
        "assert loader.Clock is loader.scheduler.Clock\n"
        "print(loader.scheduler.__file__)\n"
    )
    environment = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=environment,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == site / "loader" / "scheduler" / "__init__.py"


def test_the_clock_runs_in_an_app_with_its_own_scheduler_package(tmp_path: Path) -> None:
    """`python -m loader clock jobs/` in an app that has a `scheduler` package starts and
    exits 0 on SIGTERM, never importing the app's package."""
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "__init__.py").write_text(
        'print("the app\'s scheduler was imported", flush=True)\n'
        "EVERY = {'reports': '0 6 * * *'}\n"
    )
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "yearly.yml").write_text(
        "name: yearly\n"
        "source: {url: 'sqlite://', query: 'SELECT 1 AS id'}\n"
        "target: {url: 'http://127.0.0.1:9/never'}\n"
        "schedule: '0 0 1 1 *'\n"
    )

    clock = start_loader(tmp_path, "clock", "jobs")
    read_until(clock, "loader.clock")  # its first log line: up, signal handlers installed
    code, out, _ = terminate(clock)

    assert code == 0, out
    assert "Error" not in out and "the app's scheduler was imported" not in out, out
