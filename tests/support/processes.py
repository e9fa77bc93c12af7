"""``loader`` commands started as real processes, none left running after a test."""

from __future__ import annotations

import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

_STARTED: list[subprocess.Popen[str]] = []


def start_loader(cwd: Path, *args: str) -> subprocess.Popen[str]:
    """``loader ARGS...`` in ``cwd``, stdout and stderr together, killed after the test."""
    process = subprocess.Popen(
        [sys.executable, "-m", "loader", *args],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    _STARTED.append(process)
    return process


_READ: dict[int, str] = {}  # output read by read_until, per pid


def read_until(process: subprocess.Popen[str], text: str, timeout: float = 30) -> str:
    """Read the process's output until a line contains ``text`` (it is then up and
    running, signal handlers included); the output read so far."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while text not in _READ.get(process.pid, ""):
        ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
        line = process.stdout.readline() if ready else ""
        assert line, f"no {text!r} in the output: {_READ.get(process.pid, '')}"
        _READ[process.pid] = _READ.get(process.pid, "") + line
    return _READ[process.pid]


def terminate(process: subprocess.Popen[str], timeout: float = 40) -> tuple[int, str, float]:
    """SIGTERM, then wait: the exit code, the whole output and how long it took to exit."""
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=timeout)
    return process.returncode, _READ.pop(process.pid, "") + out, time.monotonic() - started


@pytest.fixture(autouse=True)
def nothing_left_running() -> Iterator[None]:
    """A failing test must not leave a clock or a worker running."""
    yield
    while _STARTED:
        process = _STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.communicate()
