"""Start-up: the commands that do not touch a database or an endpoint leave the heavy
libraries unimported. Checked with ``python -X importtime``, whose list of imported
modules is the same on every machine (unlike a wall time)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: What `--version` and `--help` must not import: the job model (pydantic), the state
#: store (SQLAlchemy), the source (psycopg), HTTP (httpx), the queue and the metrics.
HEAVY = {"sqlalchemy", "psycopg", "httpx", "pydantic", "procrastinate", "prometheus_client"}
#: What `validate` must not import: it reads job files and connects nowhere.
CONNECTING = {"sqlalchemy", "psycopg", "httpx", "procrastinate", "prometheus_client"}


def imported_packages(*args: str) -> set[str]:
    """The top-level packages ``python -X importtime -m loader ARGS`` imports; the command
    must succeed."""
    process = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "loader", *args],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-2000:]
    names = set()
    for line in process.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                names.add(name.split(".")[0])
    assert "loader" in names  # the output is importtime's, not empty
    return names


@pytest.mark.parametrize("option", ["--version", "--help"])
def test_version_and_help_import_no_heavy_library(option: str) -> None:
    """`loader --version` and `loader --help` import none of the libraries a run needs."""
    assert imported_packages(option) & HEAVY == set()


def test_validate_connects_nowhere_and_imports_accordingly(tmp_path: Path) -> None:
    """`loader validate` loads the job model but no database, HTTP or queue library."""
    job = tmp_path / "job.yml"
    job.write_text(
        "source: {url: 'postgresql://h/db', query: SELECT 1 AS id}\n"
        "target: {url: 'http://h/'}\n"
        'schedule: "every 30s"\n'
    )
    names = imported_packages("validate", str(job))
    assert "pydantic" in names
    assert names & CONNECTING == set()


def test_public_names_load_their_library_on_first_use() -> None:
    """`import loader` leaves SQLAlchemy unloaded; ``loader.open_state`` loads it."""
    code = (
        "import sys, loader\n"
        "print('sqlalchemy' in sys.modules)\n"
        "loader.open_state\n"
        "print('sqlalchemy' in sys.modules)\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert output.split() == ["False", "True"]
