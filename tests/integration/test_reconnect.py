"""The source connection drops mid-stream: a run with a cursor reconnects and resumes.

The fault is real: the database is reached through a loopback proxy that the test cuts
(both sockets closed, as a failover or a dead network does), or its backend is ended with
``pg_terminate_backend``. What the endpoint received is the proof.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pymysql
import pytest
import yaml

from loader import SourceError, build_job, defaults, open_state, run_job
from tests.integration.conftest import Schema, make_job
from tests.support.logs import log_events
from tests.support.proxy import Proxy
from tests.support.server import Delay, Endpoint

ROWS = 60_000
BATCH = 500


@pytest.fixture
def proxy(database_url: str) -> Any:
    """A cuttable proxy in front of the test database."""
    parts = urlsplit(database_url)
    with Proxy((parts.hostname or "127.0.0.1", parts.port or 5432)) as running:
        yield running


@pytest.fixture
def events(schema: Schema) -> str:
    """A table of ``ROWS`` rows, a few MB on the wire: the cut lands mid-stream."""
    schema.execute(
        f"CREATE TABLE events AS SELECT g AS id, repeat('x', 60) AS pad "
        f"FROM generate_series(1, {ROWS}) AS g"
    )
    return schema.table("events")


def job_for(schema: Schema, url: str, query: str, *, cursor: bool = True, **extra: Any) -> Any:
    source: dict[str, Any] = {"url": url, "fetch_size": 1000}
    if cursor:
        source["cursor"] = {"column": "id"}
    return make_job(schema, "", query, source=source, batch={"size": BATCH}, **extra)


def write(tmp_path: Path, mapping: dict[str, Any], endpoint: Endpoint) -> Path:
    mapping["target"]["url"] = f"{endpoint.url}/in"
    path = tmp_path / "job.yml"
    path.write_text(yaml.safe_dump(mapping))
    return path


def loader_run(tmp_path: Path, job: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loader", "run", str(job)],
        cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def history(url: str) -> list[Any]:
    store = open_state(url)
    try:
        return list(store.history("test_job"))
    finally:
        store.close()


def assert_every_row_once(endpoint: Endpoint, rows: int = ROWS) -> None:
    """Every id arrived; copies only within the in-flight bound (concurrency batches)."""
    ids = collections.Counter(
        row["id"] for request in endpoint.requests if request.ok for row in request.rows()
    )
    assert sorted(ids) == list(range(1, rows + 1))
    assert sum(ids.values()) - rows <= BATCH


def test_cut_mid_stream_resumes_in_the_same_run(
    tmp_path: Path, schema: Schema, events: str, proxy: Proxy, endpoint: Endpoint,
    pg_state: str,
) -> None:  # fmt: skip
    """A cursor job whose connection is cut mid-stream delivers every row in the same run,
    exits 0, logs one line about the reconnect and prints no traceback."""
    job = write(tmp_path, job_for(schema, proxy.via(schema.url), f"SELECT * FROM {events}"),
                endpoint)  # fmt: skip
    proxy.cut_after(1_000_000)

    done = loader_run(tmp_path, job)

    output = done.stdout + done.stderr
    assert done.returncode == defaults.EXIT_OK, output
    assert proxy.cuts == 1
    assert_every_row_once(endpoint)
    assert "Traceback" not in output and "internal error" not in output
    lost = log_events(output, "source.reconnect")
    assert len(lost) == 1 and lost[0]["attempt"] == 1 and lost[0]["rows_read"] > 0, output
    (record,) = history(pg_state)
    assert (record.status, record.rows_read, record.rows_posted) == ("succeeded", ROWS, ROWS)


def test_the_generic_path_resumes_too(
    schema: Schema, events: str, proxy: Proxy, endpoint: Endpoint, isolated_state: str
) -> None:
    """Rows read through SQLAlchemy's server-side cursor (no database JSON) resume the
    same way; rows read again after the reconnect are not counted twice."""
    mapping = job_for(schema, proxy.via(schema.url), f"SELECT * FROM {events}")
    mapping["target"]["url"] = f"{endpoint.url}/in"
    proxy.cut_after(1_000_000)

    result = run_job(build_job(mapping), database_json=False)

    assert proxy.cuts == 1
    assert_every_row_once(endpoint)
    assert (result.status, result.rows_read, result.rows_posted) == ("succeeded", ROWS, ROWS)


def test_a_terminated_backend_resumes(
    schema: Schema, events: str, endpoint: Endpoint, isolated_state: str
) -> None:
    """``pg_terminate_backend`` on the source's connection (what a failover or a
    maintenance restart does) is a lost connection: the run resumes and delivers all."""
    endpoint.script("/in", *[Delay(0.02)] * 30)
    mapping = job_for(schema, schema.url, f"SELECT * FROM {events}")
    mapping["target"]["url"] = f"{endpoint.url}/in"
    ended: list[int] = []

    def terminate() -> None:
        while len(endpoint.requests) < 5:
            time.sleep(0.01)
        with psycopg.connect(schema.url, autocommit=True) as conn:
            ended.extend(row[0] for row in conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND query LIKE %s", (f"%{events}%",),
            ))  # fmt: skip

    killer = threading.Thread(target=terminate)
    killer.start()
    result = run_job(build_job(mapping))
    killer.join()

    assert ended == [True]
    assert_every_row_once(endpoint)
    assert (result.status, result.rows_posted) == ("succeeded", ROWS)


def test_without_a_cursor_the_run_fails_with_one_line(
    tmp_path: Path, schema: Schema, events: str, proxy: Proxy, endpoint: Endpoint,
    pg_state: str,
) -> None:  # fmt: skip
    """A job without a cursor cannot resume: exit 3, one line saying so, no traceback,
    and the history records the real cause and the rows delivered."""
    query = f"SELECT * FROM {events} ORDER BY id"
    job = write(tmp_path, job_for(schema, proxy.via(schema.url), query, cursor=False), endpoint)
    proxy.cut_after(1_000_000)

    done = loader_run(tmp_path, job)

    output = done.stdout + done.stderr
    assert done.returncode == defaults.EXIT_SOURCE, output
    assert "Traceback" not in output and "internal error" not in output
    (error,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert "connection was lost after" in error and "no cursor, so it cannot resume" in error
    (record,) = history(pg_state)
    assert record.status == "failed" and "no cursor" in (record.error or "")
    assert 0 < record.rows_posted < ROWS
    assert record.rows_posted == len(endpoint.requests) * BATCH


def test_reconnects_are_bounded_by_retry_attempts(
    schema: Schema, events: str, proxy: Proxy, endpoint: Endpoint, isolated_state: str
) -> None:
    """While the database stays unreachable, the run opens the source at most
    ``retry.attempts`` times, then fails (exit 3's SourceError) keeping its checkpoint."""
    mapping = job_for(schema, proxy.via(schema.url), f"SELECT * FROM {events}",
                      retry={"attempts": 3, "backoff": "50ms", "max_backoff": "50ms"})  # fmt: skip
    mapping["target"]["url"] = f"{endpoint.url}/in"

    def cut_and_stay_down() -> None:
        while proxy.sent < 1_000_000:
            time.sleep(0.001)
        proxy.refuse(30)
        proxy.cut()

    threading.Thread(target=cut_and_stay_down, daemon=True).start()
    with pytest.raises(SourceError, match="opened 3 times") as failed:
        run_job(build_job(mapping))

    assert type(failed.value) is SourceError
    result = failed.value.result
    assert result is not None and 0 < result.rows_posted < ROWS
    store = open_state(isolated_state)
    checkpoint = store.checkpoint("test_job")
    store.close()
    assert checkpoint is not None and checkpoint.position == (result.rows_posted,)


def test_a_dropped_state_store_still_records_the_failure(
    tmp_path: Path, schema: Schema, events: str, proxy: Proxy, endpoint: Endpoint,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """When the state store's connection drops with the source's (one database, one
    failover), the failed run is still recorded with its cause and counts, not left
    running to be called abandoned later."""
    state = proxy.via(schema.scoped_url)
    monkeypatch.setenv("LOADER_STATE_URL", state)
    query = f"SELECT * FROM {events} ORDER BY id"
    job = write(tmp_path, job_for(schema, proxy.via(schema.url), query, cursor=False), endpoint)

    def failover() -> None:
        while proxy.sent < 1_000_000:
            time.sleep(0.001)
        proxy.refuse(1.2)
        proxy.cut()

    threading.Thread(target=failover, daemon=True).start()
    done = loader_run(tmp_path, job)

    assert done.returncode == defaults.EXIT_SOURCE, done.stdout + done.stderr
    (record,) = history(schema.scoped_url)
    assert record.status == "failed" and "connection was lost" in (record.error or "")
    assert record.rows_posted == len(endpoint.requests) * BATCH > 0


@pytest.fixture
def mariadb_table() -> Any:
    """A ``ROWS``-row table in the MariaDB of ``LOADER_TEST_MARIADB_URL``, dropped after."""
    url = os.environ.get("LOADER_TEST_MARIADB_URL")
    if not url:
        pytest.fail("set LOADER_TEST_MARIADB_URL, e.g. mysql://root@127.0.0.1:3306/test")
    parts = urlsplit(url)
    name = f"t_{uuid.uuid4().hex[:10]}"
    options = {"host": parts.hostname, "port": parts.port or 3306, "user": parts.username,
               "database": parts.path.lstrip("/"), "autocommit": True}  # fmt: skip
    with pymysql.connect(**options) as conn, conn.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {name} (id INT PRIMARY KEY, pad VARCHAR(80))")
        cursor.execute(f"INSERT INTO {name} SELECT seq, REPEAT('x', 60) FROM seq_1_to_{ROWS}")
    yield url, name
    with pymysql.connect(**options) as conn, conn.cursor() as cursor:
        cursor.execute(f"DROP TABLE {name}")


def test_mariadb_cut_mid_stream_resumes(
    tmp_path: Path, mariadb_table: tuple[str, str], endpoint: Endpoint, schema: Schema
) -> None:
    """MySQL's "Lost connection to server during query" resumes the same way, and the
    unread rows of the lost unbuffered result print no traceback."""
    url, name = mariadb_table
    parts = urlsplit(url)
    with Proxy((parts.hostname or "127.0.0.1", parts.port or 3306)) as proxy:
        job = write(tmp_path, job_for(schema, proxy.via(url), f"SELECT * FROM {name}"), endpoint)
        proxy.cut_after(1_000_000)
        done = loader_run(tmp_path, job)
        assert proxy.cuts == 1

    output = done.stdout + done.stderr
    assert done.returncode == defaults.EXIT_OK, output
    assert_every_row_once(endpoint)
    assert "Traceback" not in output and "Exception ignored" not in output


def test_a_full_refresh_resumes_with_keys_of_its_own(
    schema: Schema, events: str, proxy: Proxy, endpoint: Endpoint, isolated_state: str
) -> None:
    """A ``--full-refresh`` run of a cursor job resumes after the checkpoint it moved in
    this run; the reopened stream's batches, numbered anew, still get keys of their own
    (a key covers the body too)."""
    mapping = job_for(schema, proxy.via(schema.url), f"SELECT * FROM {events}")
    mapping["target"]["url"] = f"{endpoint.url}/in"
    proxy.cut_after(1_000_000)

    result = run_job(build_job(mapping), full_refresh=True)

    assert proxy.cuts == 1
    assert_every_row_once(endpoint)
    assert (result.status, result.rows_posted) == ("succeeded", ROWS)
    keys = [request.headers["Idempotency-Key"] for request in endpoint.requests]
    assert len(set(keys)) == len(keys)
