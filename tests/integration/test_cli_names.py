"""Jobs named by name on the command line, global options after the command, and
``--json`` output, as a user runs them (real processes, PostgreSQL, an HTTP endpoint)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loader import defaults
from tests.integration.conftest import Schema
from tests.support.server import Endpoint

TOKEN = "tok-canary-5e21c7"


def loader(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``loader ARGS`` in ``cwd``, its jobs directory ``conf/``."""
    env = {**os.environ, "LOADER_JOBS_DIR": "conf", "CRM_TOKEN": TOKEN}
    return subprocess.run(
        [sys.executable, "-m", "loader", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def document(done: subprocess.CompletedProcess[str]) -> Any:
    """stdout as the one JSON document it must be."""
    return json.loads(done.stdout)


@pytest.fixture
def jobs(tmp_path: Path, schema: Schema, endpoint: Endpoint) -> Path:
    """``conf/nightly.yml``, a job named ``orders`` (not its file's stem), whose row 3
    the endpoint refuses; and a job the name does not match."""
    schema.execute(
        "CREATE TABLE users AS SELECT g AS id, 'u' || g AS name FROM generate_series(1, 5) g"
    )
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "nightly.yml").write_text(
        f"name: orders\nsource:\n  url: {schema.url}\n"
        f"  query: SELECT * FROM {schema.table('users')}\n"
        "  cursor: {column: id}\n"
        f"target:\n  url: {endpoint.url}\n  headers:\n    Authorization: Bearer ${{CRM_TOKEN}}\n"
        "retry:\n  attempts: 2\n  backoff: 10ms\n"
    )  # fmt: skip
    (tmp_path / "conf" / "other.yml").write_text("name: other\n" + "source: {}\n")
    endpoint.reject_when(lambda body: b'"id":3,' in body, (422, {}, b"id 3 refused"))
    return tmp_path


def test_a_job_is_named_by_name_and_every_json_document_parses(
    jobs: Path, endpoint: Endpoint
) -> None:
    """``orders`` (the name inside conf/nightly.yml) works on run, history, state show,
    deadletter list and show; with --json each prints one JSON document with the
    documented keys, the token masked; ``-v --log-format json`` after the command logs
    JSON lines to stderr, none to stdout."""
    ran = loader(jobs, "run", "orders", "--json", "-v", "--log-format", "json")

    assert ran.returncode == defaults.EXIT_REJECTED_ROWS, ran.stderr
    summary = document(ran)
    assert summary["job"] == "orders" and summary["status"] == "partial"
    assert (summary["rows_read"], summary["rows_posted"], summary["rows_rejected"]) == (5, 4, 1)
    assert summary["checkpoint"] == [5] and summary["error"] is None
    assert {"run_id", "duration_seconds", "requests", "retries", "requests_shown"} <= set(summary)
    logs = [json.loads(line) for line in ran.stderr.splitlines() if line.startswith("{")]
    assert logs and all(line["run_id"] == summary["run_id"] for line in logs if "run_id" in line)
    assert sorted(endpoint.accepted_ids()) == [1, 2, 4, 5]

    runs = document(loader(jobs, "history", "orders", "--json"))
    assert runs["job"] == "orders" and [r["run_id"] for r in runs["runs"]] == [summary["run_id"]]
    assert runs["runs"][0]["status"] == "partial" and runs["runs"][0]["cursor_to"] == [5]

    state = document(loader(jobs, "state", "show", "nightly", "--json"))  # by file stem
    assert state["job"] == "orders" and state["dead_letters"] == 1
    assert state["checkpoint"]["position"] == [5] and state["checkpoint"]["fits_the_job"] is True

    letters = document(loader(jobs, "deadletter", "list", "--json", "orders"))
    assert letters["total"] == 1 and letters["dead_letters"][0]["row"] == {"id": 3, "name": "u3"}
    assert letters["dead_letters"][0]["status"] == 422
    assert letters["dead_letters"][0]["answer"] == "id 3 refused"

    shown = loader(jobs, "show", "orders")
    assert shown.returncode == 0 and "name: orders" in shown.stdout
    everything = ran.stdout + ran.stderr + shown.stdout
    assert TOKEN not in everything


def test_a_failed_run_prints_its_summary_as_json(jobs: Path, endpoint: Endpoint) -> None:
    """A run that fails still prints its JSON summary on stdout, the error masked, and
    exits with the failure's code."""
    endpoint.script("/", *[503] * 10)

    ran = loader(jobs, "run", "orders", "--json")

    assert ran.returncode == defaults.EXIT_DELIVERY, ran.stderr
    summary = document(ran)
    assert summary["status"] == "failed" and summary["rows_posted"] == 0
    assert summary["error"] and TOKEN not in ran.stdout + ran.stderr
    (run,) = document(loader(jobs, "history", "--json", "orders"))["runs"]
    assert (run["run_id"], run["status"], run["error"]) == (
        summary["run_id"], "failed", summary["error"]
    )  # fmt: skip


def test_a_name_that_matches_nothing_lists_the_jobs(jobs: Path) -> None:
    """An unknown name exits 2 naming the jobs directory and the jobs in it."""
    done = loader(jobs, "state", "show", "ordres")

    assert done.returncode == defaults.EXIT_CONFIG
    assert "no job file or job named 'ordres' in conf/" in done.stderr
    assert "jobs found: orders, other" in done.stderr


def test_a_dry_run_shows_its_requests_in_json_secrets_masked(
    jobs: Path, endpoint: Endpoint
) -> None:
    """``run --dry-run --json`` lists the requests it would send, the token masked, and
    sends nothing."""
    ran = loader(jobs, "--log-format", "text", "run", "--dry-run", "orders", "--json")

    assert ran.returncode == defaults.EXIT_OK, ran.stderr
    summary = document(ran)
    assert summary["status"] == "dry-run" and summary["rows_read"] == 5
    (request,) = summary["requests_shown"]
    assert request["method"] == "POST" and request["url"] == endpoint.url
    assert TOKEN not in request["headers"]["Authorization"]
    assert json.loads(request["body"])[0] == {"id": 1, "name": "u1"}
    assert endpoint.requests == []


def test_status_reads_the_jobs_directory_from_loader_jobs_dir(
    tmp_path: Path, schema: Schema, endpoint: Endpoint
) -> None:
    """Without paths, ``status`` (like the clock and workers) looks in LOADER_JOBS_DIR."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "nightly.yml").write_text(
        f"name: orders\nsource:\n  url: {schema.url}\n  query: SELECT 1 AS id\n"
        f"target:\n  url: {endpoint.url}\n"
    )

    done = loader(tmp_path, "status", "--json")

    assert done.returncode == 0, done.stderr
    assert "orders" in done.stdout
