"""The README's first command: `loader demo` works with no outside service."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_the_example_job_end_to_end(tmp_path: Path) -> None:
    """demo creates the SQLite database, starts a receiver and delivers the pro sign-ups."""
    shutil.copytree(ROOT / "jobs", tmp_path / "jobs")

    done = subprocess.run(
        [sys.executable, "-m", "loader", "demo"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert (tmp_path / ".loader" / "example.db").exists()
    received = [line for line in done.stdout.splitlines() if line.startswith("POST /v1/import")]
    sizes = sorted(int(line.split(": ")[1].split()[0]) for line in received)
    assert sizes == [34, 100, 100, 100]  # the batches may arrive in any order
    assert "rows posted           334" in done.stdout
    assert "example: succeeded" in done.stdout


def test_receive_prints_what_arrives(tmp_path: Path) -> None:
    """`loader receive` answers 200 and prints the method, path and row count."""
    process = subprocess.Popen(
        [sys.executable, "-m", "loader", "receive", "--port", "0"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        url = banner.split()[2]
        response = httpx.post(f"{url}/hook", json={"events": [{"a": 1}, {"a": 2}]})
        assert response.status_code == 200 and response.json() == {"received": 2}
        line = process.stdout.readline()
        assert line.startswith("POST /hook: 2 rows")
    finally:
        process.terminate()
        process.wait(timeout=10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
