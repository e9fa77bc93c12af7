"""Ordinary events end with a line, never a traceback: a closed pipe, a confirmation
without a terminal, a busy port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from loader import defaults
from tests.integration.conftest import Schema


def write_job(tmp_path: Path, schema: Schema, rows: int) -> Path:
    schema.execute(f"CREATE TABLE many AS SELECT g AS id FROM generate_series(1, {rows}) g")
    path = tmp_path / "job.yml"
    path.write_text(
        textwrap.dedent(
            f"""\
            name: many
            source:
              url: {schema.url}
              query: SELECT * FROM {schema.table("many")} ORDER BY id
              cursor: {{column: id}}
            target:
              url: http://127.0.0.1:9/
            batch: {{size: 1}}
            """
        )
    )
    return path


def into_a_closed_pipe(tmp_path: Path, *args: str) -> tuple[int, str]:
    """``loader ARGS | head -1`` once head has exited: stdout is a pipe nobody reads, so
    the first write fails, whatever the size of the output and however fast it comes."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "loader", *args],
            cwd=tmp_path, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60,
        )  # fmt: skip
    finally:
        os.close(write_end)
    return done.returncode, done.stderr


@pytest.mark.parametrize("args", [("run", "job.yml", "--dry-run"), ("state", "show", "job.yml")])
def test_a_closed_pipe_ends_quietly(
    tmp_path: Path, schema: Schema, pg_state: str, args: tuple[str, ...]
) -> None:
    """``loader ... | head -1`` ends with 141, as a Unix tool killed by SIGPIPE, and no
    traceback or "Exception ignored" at exit."""
    write_job(tmp_path, schema, 5000)
    code, stderr = into_a_closed_pipe(tmp_path, *args)
    assert code == defaults.EXIT_CLOSED_PIPE, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert "internal error" not in stderr


@pytest.mark.parametrize(
    "args", [("state", "reset", "job.yml"), ("deadletter", "purge", "job.yml")]
)
def test_a_confirmation_without_a_terminal_asks_for_yes(
    tmp_path: Path, schema: Schema, pg_state: str, args: tuple[str, ...]
) -> None:
    """With stdin from /dev/null a confirmation has no answer: exit 2 naming --yes."""
    write_job(tmp_path, schema, 1)
    done = subprocess.run(
        [sys.executable, "-m", "loader", *args],
        cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == defaults.EXIT_CONFIG, done.stderr
    assert "pass --yes" in done.stderr
    assert "Traceback" not in done.stderr


def test_receive_on_a_busy_port_names_the_port_and_the_flag(tmp_path: Path) -> None:
    """A port already taken is a line naming it and --port, exit 2."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "loader", "receive", "--port", str(port)],
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == defaults.EXIT_CONFIG, done.stderr
    assert f"127.0.0.1:{port}" in done.stderr and "--port" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_env_file_named_but_missing_is_an_error(tmp_path: Path) -> None:
    """``--env-file nope.env`` exits 2 naming it; the default ``.env`` may be absent."""
    (tmp_path / "job.yml").write_text(
        "source: {url: 'sqlite://', query: 'SELECT 1 AS id'}\ntarget: {url: 'http://127.0.0.1:9/'}\n"
    )

    def validate(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "loader", "validate", "job.yml", *args],
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    missing = validate("--env-file", "nope.env")
    assert missing.returncode == defaults.EXIT_CONFIG
    assert "nope.env: no such file" in missing.stderr
    assert validate().returncode == defaults.EXIT_OK


def test_a_clock_on_a_busy_port_names_the_port_and_the_flag(
    tmp_path: Path, schema: Schema, pg_state: str
) -> None:
    """The clock's /metrics and /healthz port already taken: exit 2 naming it, --port
    and $PORT, before any job runs."""
    write_job(tmp_path, schema, 1)
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "loader", "clock", "job.yml"],
            cwd=tmp_path, env={**os.environ, "PORT": str(port)},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == defaults.EXIT_CONFIG, done.stdout + done.stderr
    assert f"port {port}" in done.stderr and "--port (or $PORT)" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
