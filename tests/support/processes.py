"""``loader`` commands started as real processes, none left running after a test.

A thread reads each process's output as it comes, so a test can wait for a line (the
process is up, its signal handlers installed) and still get the whole output at the end.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


class _Output:
    """The lines a process printed so far; complete once the process closed its output."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self.thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.closed = True
            self.changed.notify_all()

    @property
    def text(self) -> str:
        with self.changed:
            return "".join(self.lines)


_STARTED: dict[subprocess.Popen[str], _Output] = {}


def start_loader(cwd: Path, *args: str, up: str | None = None) -> subprocess.Popen[str]:
    """``loader ARGS...`` in ``cwd``, stdout and stderr together, killed after the test.
    With ``up``, wait until a line contains it (or the process ends) before returning."""
    process = subprocess.Popen(
        [sys.executable, "-m", "loader", *args],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    _STARTED[process] = _Output(process)
    if up is not None:
        read_until(process, up, require=False)
    return process


def read_until(
    process: subprocess.Popen[str], text: str, timeout: float = 30, *, require: bool = True
) -> str:
    """Wait until a line of the output contains ``text``; the output so far. When the
    process ends first, fail (or, with ``require=False``, return)."""
    output = _STARTED[process]
    deadline = time.monotonic() + timeout
    with output.changed:
        while not any(text in line for line in output.lines):
            if output.closed and not require:
                break
            remaining = deadline - time.monotonic()
            assert not output.closed and remaining > 0, (
                f"no {text!r} in the output: {''.join(output.lines)}"
            )
            output.changed.wait(remaining)
        return "".join(output.lines)


def terminate(process: subprocess.Popen[str], timeout: float = 40) -> tuple[int, str, float]:
    """SIGTERM, then wait: the exit code, the whole output and how long it took to exit."""
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    return (*finish(process, timeout), time.monotonic() - started)


def finish(process: subprocess.Popen[str], timeout: float = 40) -> tuple[int, str]:
    """Wait for the process to end: its exit code and whole output."""
    process.wait(timeout=timeout)
    output = _STARTED[process]
    output.thread.join(timeout=5)
    return process.returncode, output.text


@pytest.fixture(autouse=True)
def nothing_left_running() -> Iterator[None]:
    """A failing test must not leave a clock or a worker running."""
    yield
    while _STARTED:
        process, output = _STARTED.popitem()
        if process.poll() is None:
            process.kill()
            process.wait()
        output.thread.join(timeout=5)
        if process.stdout is not None:
            process.stdout.close()
