"""The README's first command: `loader demo` works with no outside service."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from loader import defaults
from tests.support.server import Endpoint

ROOT = Path(__file__).resolve().parents[2]


def loader(
    tmp_path: Path, *args: str, env: dict[str, str], code: int = 0
) -> subprocess.CompletedProcess[str]:
    """Run the CLI in ``tmp_path`` with ``env`` as its whole environment; expect ``code``."""
    done = subprocess.run(
        [sys.executable, "-m", "loader", *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == code, done.stdout + done.stderr
    return done


def demo(tmp_path: Path, *args: str, env: dict[str, str] | None = None, code: int = 0) -> str:
    """Run `loader demo` in ``tmp_path`` (holding a copy of jobs/); its stdout."""
    if not (tmp_path / "jobs").exists():
        shutil.copytree(ROOT / "jobs", tmp_path / "jobs")
    return loader(tmp_path, "demo", *args, env=env or dict(os.environ), code=code).stdout


def test_demo_runs_the_example_job_end_to_end(tmp_path: Path) -> None:
    """demo creates the SQLite database, starts a receiver and delivers the pro sign-ups,
    saying what the query kept and summing up what arrived."""
    out = demo(tmp_path)

    assert (tmp_path / ".loader" / "example.db").exists()
    assert "created .loader/example.db: 1,000 sign-ups" in out
    assert "the job's query keeps plan = 'pro': 334 of 1,000 rows to send" in out
    assert "the receiver got 4 requests, 334 rows in all" in out
    assert "rows posted           334" in out
    assert "example: succeeded" in out


def test_demo_prints_the_first_bodies_as_received(tmp_path: Path) -> None:
    """demo prints the first two request bodies as they arrived: pretty JSON in the job's
    envelope, two rows each, then how many more the request held."""
    out = demo(tmp_path, "--rows", "30")

    heads = re.findall(r"--- request (\d) of (\d) as received: POST /v1/import, (\d+) rows", out)
    assert [(n, of) for n, of, _ in heads] == [("1", "1")]
    assert int(heads[0][2]) == 10  # every third of 30 sign-ups is on the pro plan
    body = out.split("as received: POST /v1/import, 10 rows ---\n", 1)[1]
    assert body.startswith('{\n  "users": [\n    {\n      "id": 1,\n')
    assert '"email": "user4@example.com"' in body and "user7@" not in body
    assert "    ... 8 more rows\n  ]\n}\n" in body


def test_demo_keeps_its_state_apart_from_the_jobs(
    tmp_path: Path, endpoint: Endpoint, pg_state: str
) -> None:
    """`demo --job` records nothing in the job's own state store (PostgreSQL here, or
    the default .loader/state.db), a failed run neither, and sends to its receiver,
    never to the job's target."""
    shutil.copytree(ROOT / "jobs", tmp_path / "jobs")
    job = tmp_path / "jobs" / "mine.yml"
    job.write_text(
        "name: mine\n"
        "source: {url: '${DATABASE_URL}', query: 'SELECT id, plan FROM signups ORDER BY id'}\n"
        "target: {url: '${WEBHOOK_URL}'}\n"
    )
    env = {**os.environ, "WEBHOOK_URL": f"{endpoint.url}/hook", "DATABASE_URL": "sqlite://"}
    orders = "jobs/orders_to_webhook.yml"  # its query fails on the demo's database

    out = demo(tmp_path, "--job", str(job), "--rows", "5", env=env)
    demo(tmp_path, "--job", orders, env=env, code=defaults.EXIT_SOURCE)
    without = {k: v for k, v in env.items() if k != defaults.STATE_URL_ENV}
    demo(tmp_path, "--job", str(job), env=without)

    assert endpoint.requests == []
    for path in (str(job), orders):
        history = loader(tmp_path, "history", path, "--json", env=env).stdout
        assert json.loads(history)["runs"] == []
    assert not (tmp_path / ".loader" / "state.db").exists()
    assert (tmp_path / ".loader" / "demo-state.db").exists()
    assert "the receiver got 1 request, 5 rows in all" in out


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
