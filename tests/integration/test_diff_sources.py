"""Diff syncs beyond the basics: kill -9 mid-run, MariaDB and SQLite sources, partitions.

The endpoint is a real HTTP server on loopback; sources are real databases.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from loader import build_job, open_state, run_job
from tests.integration.conftest import Schema, make_job
from tests.integration.test_mariadb import ENV_VAR, connect
from tests.support.server import Delay, Endpoint


def users(schema: Schema, count: int) -> str:
    schema.execute(
        "CREATE TABLE users AS SELECT g AS id, 'u' || g AS name, g % 7 AS score "
        f"FROM generate_series(1, {count}) AS g"
    )
    return f"SELECT id, name, score FROM {schema.table('users')}"


def run_cli(path: Path, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "loader", "run", str(path)], cwd=cwd,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.parametrize("state", ["sqlite", "postgres"])
def test_kill_9_mid_run_loses_nothing(
    tmp_path: Path, schema: Schema, endpoint: Endpoint, state: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Three kill -9 during a 10,000-row diff sync, then a final run: every row arrives,
    duplicates stay within the batches in flight per kill, the next run sends nothing.
    With the state store in the source's database, the database compares."""
    if state == "postgres":
        monkeypatch.setenv("LOADER_STATE_URL", schema.scoped_url)
    batch, concurrency = 200, 2
    query = users(schema, 10_000)
    endpoint.reject_when(lambda body: True, Delay(0.01, 200))
    spec = make_job(schema, endpoint.url, query, source={"diff": {"key": "id"}},
                    batch={"size": batch}, concurrency=concurrency)  # fmt: skip
    path = tmp_path / "job.yml"
    path.write_text(yaml.safe_dump(spec))
    rng = random.Random(10_000)
    for target in sorted(rng.sample(range(1_000, 9_000), 3)):
        time.sleep(0.05)
        before = len(endpoint.requests)
        process = run_cli(path, tmp_path)
        deadline = time.monotonic() + 60
        while (
            len(set(endpoint.accepted_ids())) < target or len(endpoint.requests) == before
        ) and process.poll() is None:
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.002)
        process.kill()
        process.communicate()
        assert process.returncode == -signal.SIGKILL, "the run ended before it was killed"
    final = run_cli(path, tmp_path)
    out, err = final.communicate(timeout=120)
    assert final.returncode == 0, out + err
    ids = endpoint.accepted_ids()
    assert sorted(collections.Counter(ids)) == list(range(1, 10_001))
    assert len(ids) - 10_000 <= 3 * concurrency * batch, len(ids) - 10_000
    endpoint.requests.clear()
    again = run_cli(path, tmp_path)
    out, err = again.communicate(timeout=60)
    assert again.returncode == 0 and endpoint.requests == [], out + err


@pytest.fixture
def maria() -> Iterator[tuple[str, str]]:
    """The MariaDB URL and a table name of this test's own, dropped afterwards."""
    url = os.environ.get(ENV_VAR)
    if not url:
        pytest.fail(f"The MariaDB tests need a server: set {ENV_VAR}", pytrace=False)
    name = f"t_{uuid.uuid4().hex[:10]}"
    yield url, name
    with connect(url) as conn, conn.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {name}")


def test_mariadb_source(maria: tuple[str, str], endpoint: Endpoint) -> None:
    """From MariaDB: all rows first, then only the changed one and a delete."""
    mariadb_url, table = maria
    with connect(mariadb_url) as conn, conn.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {table} (code VARCHAR(20) PRIMARY KEY, n INT)")
        cursor.executemany(f"INSERT INTO {table} VALUES (%s, %s)",
                           [(f"c{i:03}", i) for i in range(200)])  # fmt: skip
    job = build_job({
        "name": "maria", "source": {"url": mariadb_url, "query": f"SELECT code, n FROM {table}",
                                    "diff": {"key": "code", "deletes": {
                                        "url": endpoint.url + "/codes/{code}"}}},
        "target": {"url": endpoint.url + "/import"}, "retry": {"backoff": "10ms"},
    })  # fmt: skip
    assert run_job(job).rows_posted == 200
    with connect(mariadb_url) as conn, conn.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET n = -1 WHERE code = 'c042'")
        cursor.execute(f"DELETE FROM {table} WHERE code = 'c100'")
    endpoint.requests.clear()
    result = run_job(job)
    assert [(r.method, r.path) for r in endpoint.requests] == [
        ("POST", "/import"), ("DELETE", "/codes/c100")]  # fmt: skip
    assert endpoint.requests[0].rows() == [{"code": "c042", "n": -1}]
    assert (result.rows_unchanged, result.rows_deleted) == (198, 1)


def test_sqlite_source(tmp_path: Path, endpoint: Endpoint) -> None:
    """From SQLite, with a composite text key: only the changed row goes again."""
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (region TEXT, sku TEXT, qty INT)")
        conn.executemany("INSERT INTO t VALUES (?, ?, ?)",
                         [(r, f"s{i}", i) for r in ("eu", "us") for i in range(50)])  # fmt: skip
    conn.close()
    job = build_job({
        "name": "lite", "source": {"url": f"sqlite:///{db}", "query": "SELECT * FROM t",
                                   "diff": {"key": ["region", "sku"]}},
        "target": {"url": endpoint.url + "/import"}, "batch": {"size": 30},
    })  # fmt: skip
    assert run_job(job).rows_posted == 100
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE t SET qty = 0 WHERE region = 'us' AND sku = 's7'")
    conn.close()
    endpoint.requests.clear()
    assert run_job(job).rows_posted == 1
    assert endpoint.rows() == [{"region": "us", "sku": "s7", "qty": 0}]


@pytest.mark.parametrize("state", ["sqlite", "postgres"])
def test_partitions_diff_each_range(
    schema: Schema, endpoint: Endpoint, state: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partitioned diff sync: each range sends its changes and deletes its vanished keys
    (with the state store in the source's database, the database compares each range)."""
    if state == "postgres":
        monkeypatch.setenv("LOADER_STATE_URL", schema.scoped_url)
    query = users(schema, 4000)
    job = build_job(make_job(
        schema, endpoint.url + "/import", query, concurrency=4,
        source={"partition": {"column": "id", "count": 4},
                "diff": {"key": "id", "deletes": {"url": endpoint.url + "/users/{id}"}}},
    ))  # fmt: skip
    assert run_job(job).rows_posted == 4000
    state = open_state()
    assert state.fingerprint_count("test_job") == 4000
    schema.execute("UPDATE users SET score = 99 WHERE id IN (10, 1500, 3999)")
    schema.execute("DELETE FROM users WHERE id IN (20, 2500)")
    endpoint.requests.clear()
    result = run_job(job)
    assert sorted(row["id"] for row in endpoint.rows("/import")) == [10, 1500, 3999]
    assert sorted(r.path for r in endpoint.requests if r.method == "DELETE") == [
        "/users/20", "/users/2500"]  # fmt: skip
    assert (result.rows_unchanged, result.rows_deleted) == (3995, 2)
    assert state.fingerprint_count("test_job") == 3998
    state.close()


def test_recipe_runs_as_shipped(tmp_path: Path, schema: Schema, endpoint: Endpoint) -> None:
    """jobs/customer_stats_diff.yml: all customers, then the changed one and a DELETE."""
    schema.execute(
        "CREATE TABLE customers AS SELECT g AS id, 'free' AS plan FROM generate_series(1, 30) g;"
        "CREATE TABLE orders AS SELECT g AS id, 1 + g % 30 AS customer_id, 10.5 AS total "
        "FROM generate_series(1, 90) g"
    )
    recipe = Path(__file__).resolve().parents[2] / "jobs" / "customer_stats_diff.yml"
    env = {**os.environ, "DATABASE_URL": schema.scoped_url, "CRM_URL": endpoint.url}

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "loader", "run", str(recipe)], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120)  # fmt: skip

    first = run()
    assert first.returncode == 0, first.stderr
    users = [u for r in endpoint.requests for u in r.json()["users"]]
    assert sorted(u["user_id"] for u in users) == list(range(1, 31))
    schema.execute(
        "UPDATE customers SET plan = 'pro' WHERE id = 4; DELETE FROM customers WHERE id = 9"
    )
    endpoint.requests.clear()
    second = run()
    assert second.returncode == 0, second.stderr
    assert [(r.method, r.path) for r in endpoint.requests] == [
        ("POST", "/v1/users/batch"), ("DELETE", "/v1/users/9")]  # fmt: skip
    assert endpoint.requests[0].json()["users"][0]["plan"] == "pro"
