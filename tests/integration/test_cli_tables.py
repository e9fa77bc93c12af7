"""Tables fit the terminal: `history`, `status` and `deadletter list` at 80 and 120
columns keep statuses and times whole, and the full error is there on request."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.integration.conftest import Schema
from tests.integration.test_cli import loader
from tests.support.server import Endpoint

#: Words of the endpoint's answer, long enough to be cut in any table.
LONG_ANSWER = " ".join(f"word{n}" for n in range(60))


def write_job(tmp_path: Path, schema: Schema, endpoint: Endpoint) -> Path:
    schema.execute(f"CREATE TABLE {schema.table('items')} (id int PRIMARY KEY, name text)")
    schema.execute(f"INSERT INTO {schema.table('items')} VALUES (1, 'a'), (2, 'b')")
    path = tmp_path / "tables.yml"
    path.write_text(
        f"name: tables\n"
        f"schedule: '*/5 * * * *'\n"
        f"source:\n  url: {schema.url}\n"
        f"  query: SELECT id, name FROM {schema.table('items')} ORDER BY id\n"
        f"  cursor: {{column: id}}\n"
        f"target: {{url: '{endpoint.url}/in'}}\n"
        f"retry: {{attempts: 2, backoff: 10ms}}\n"
    )
    return path


@pytest.fixture
def runs(tmp_path: Path, schema: Schema, endpoint: Endpoint, pg_state: str) -> Path:
    """A job with a failed run (a long answer from the endpoint), then a succeeded one."""
    job = write_job(tmp_path, schema, endpoint)
    answer = (500, {"Content-Type": "text/plain"}, LONG_ANSWER.encode())
    endpoint.script("/in", answer, answer)
    assert loader("run", str(job), cwd=tmp_path).returncode != 0
    assert loader("run", str(job), cwd=tmp_path).returncode == 0
    return job


def shown(job: Path, *args: str, columns: int) -> str:
    done = loader(*args, cwd=job.parent, env={"COLUMNS": str(columns)})
    assert done.returncode == 0, done.stderr
    return done.stdout


def run_ids(job: Path) -> list[str]:
    document = json.loads(loader("history", str(job), "--json", cwd=job.parent).stdout)
    return [run["run_id"] for run in document["runs"]]


@pytest.mark.parametrize("columns", [80, 120])
def test_history_fits_with_statuses_and_times_whole(runs: Path, columns: int) -> None:
    """`history` at 80 and 120 columns: no line too long, statuses, run ids and start
    times whole, the long error cut with a hint to the flags that show it whole."""
    text = shown(runs, "history", str(runs), columns=columns)

    assert max(map(len, text.splitlines())) <= columns
    assert re.search(r"\bfailed\b", text) and re.search(r"\bsucceeded\b", text)
    assert len(re.findall(r"\b\d\d-\d\d \d\d:\d\d\b", text)) == 2
    assert all(run_id in text for run_id in run_ids(runs))
    assert re.search(r"\bfailed\b.*…", text) and "word59" not in text
    assert "--errors or --run RUN shows them whole" in text


def test_history_errors_and_run_show_the_error_whole(runs: Path) -> None:
    """`history --errors` and `history --run RUN` print the failed run's error in full,
    within 80 columns."""
    failed = run_ids(runs)[-1]
    for args in (["--errors"], ["--run", failed]):
        text = shown(runs, "history", str(runs), *args, columns=80)

        assert max(map(len, text.splitlines())) <= 80
        assert LONG_ANSWER in " ".join(text.split())
        assert failed in text


def test_history_run_unknown_is_an_error(runs: Path) -> None:
    """`history --run` with an id not in the job's history exits 2 naming it."""
    done = loader("history", str(runs), "--run", "nope", cwd=runs.parent)
    assert done.returncode == 2 and "no run 'nope'" in done.stderr


@pytest.mark.parametrize("columns", [80, 120])
def test_status_fits_with_statuses_and_times_whole(runs: Path, columns: int) -> None:
    """`status` at 80 and 120 columns: no line too long, the last status and the last
    and next run times whole."""
    text = shown(runs, "status", str(runs.parent), columns=columns)

    assert max(map(len, text.splitlines())) <= columns
    assert re.search(r"\bsucceeded\b", text) and "tables" in text
    assert len(re.findall(r"\b\d\d-\d\d \d\d:\d\d\b", text)) == 2


def test_deadletter_list_fits_and_json_keeps_the_answer_whole(
    tmp_path: Path, schema: Schema, endpoint: Endpoint, pg_state: str
) -> None:
    """`deadletter list` at 80 columns: no line too long, the status and time whole, a
    hint to --json, which keeps the endpoint's long answer whole."""
    job = write_job(tmp_path, schema, endpoint)
    endpoint.reject_when(lambda body: b'"b"' in body, (422, {}, LONG_ANSWER.encode()))
    assert loader("run", str(job), cwd=tmp_path).returncode == 6

    text = shown(job, "deadletter", "list", str(job), columns=80)
    document = json.loads(shown(job, "deadletter", "list", str(job), "--json", columns=80))

    assert max(map(len, text.splitlines())) <= 80
    assert "id=2: status 422: word0" in text and "word59" not in text
    assert re.search(r"\bat \d\d-\d\d \d\d:\d\d, ", text)
    assert "lines cut to fit: --json shows them whole" in text
    assert document["dead_letters"][0]["answer"] == LONG_ANSWER
