"""Incremental loads and durable state: nothing skipped, nothing lost, little sent twice.

Each test runs against both state backends (SQLite file, PostgreSQL) unless it says.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from loader import (
    CursorOrderError,
    JobLockedError,
    LoaderError,
    RejectedError,
    StateError,
    TooManyRejectionsError,
    build_job,
    defaults,
    open_state,
    run_job,
)
from loader.replay import replay_dead_letters
from tests.integration.conftest import Schema, make_job
from tests.support.server import Delay, Endpoint


@pytest.fixture(params=["sqlite", "postgres"])
def state_url(
    request: pytest.FixtureRequest, schema: Schema, isolated_state: str,
    monkeypatch: pytest.MonkeyPatch,
) -> str:  # fmt: skip
    """The state store URL for this test, also exported for the CLI it starts."""
    if request.param == "sqlite":
        return isolated_state
    url = schema.scoped_url
    monkeypatch.setenv("LOADER_STATE_URL", url)
    return url


def events(schema: Schema, count: int, *, same_time: bool = False) -> str:
    """An events table; with ``same_time`` every row shares one updated_at."""
    updated = "timestamptz '2024-05-01 12:00:00+00'"
    if not same_time:
        updated += " + (g / 7) * interval '1 second'"
    schema.execute(
        f"CREATE TABLE events AS SELECT g AS id, 'e' || g AS name, {updated} AS updated_at "
        f"FROM generate_series(1, {count}) AS g"
    )
    return f"SELECT id, name, updated_at FROM {schema.table('events')}"


def incremental(schema: Schema, endpoint: Endpoint, query: str, **extra: Any) -> dict[str, Any]:
    cursor = {"column": "updated_at", "key": "id", **extra.pop("cursor", {})}
    return make_job(schema, endpoint.url, query, source={"cursor": cursor}, **extra)


def job_file(tmp_path: Path, job: dict[str, Any]) -> Path:
    """Write ``job`` as a YAML job file (the CLI tests start real processes)."""
    import yaml

    path = tmp_path / "job.yml"
    path.write_text(yaml.safe_dump(job))
    return path


def cli(path: Path, *args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "loader", "run", str(path), *args],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.parametrize("concurrency", [1, 4])
def test_rows_sharing_a_cursor_value_are_neither_skipped_nor_resent(
    schema: Schema, endpoint: Endpoint, state_url: str, concurrency: int
) -> None:
    """1,000 rows with one updated_at cross batch and run boundaries exactly once; rows
    added later with that same timestamp and a higher key go in the next run."""
    query = events(schema, 1000, same_time=True)
    job = build_job(
        incremental(schema, endpoint, query, batch={"size": 64}, concurrency=concurrency)
    )
    state = open_state(state_url)

    first = run_job(job, state=state, limit=550)
    second = run_job(job, state=state)
    assert (first.rows_posted, second.rows_posted) == (550, 450)
    assert sorted(endpoint.accepted_ids()) == list(range(1, 1001))

    schema.execute(
        "INSERT INTO events SELECT g, 'late', timestamptz '2024-05-01 12:00:00+00' "
        "FROM generate_series(1001, 1010) g"
    )
    third = run_job(job, state=state)
    fourth = run_job(job, state=state)
    state.close()

    assert third.rows_posted == 10
    assert (fourth.rows_read, fourth.requests) == (0, 0)
    assert sorted(endpoint.accepted_ids()) == list(range(1, 1011))
    assert third.checkpoint is not None and third.checkpoint[1] == 1010


def test_start_and_full_refresh(schema: Schema, endpoint: Endpoint, state_url: str) -> None:
    """cursor.start skips older rows; --full-refresh sends everything once more."""
    query = events(schema, 70)  # updated_at = 12:00:00 + id/7 seconds
    job = build_job(incremental(schema, endpoint, query, cursor={"start": "2024-05-01T12:00:05Z"}))
    state = open_state(state_url)

    run_job(job, state=state)
    assert sorted(endpoint.accepted_ids()) == list(range(35, 71))

    refreshed = run_job(job, state=state, full_refresh=True)
    state.close()
    assert refreshed.rows_posted == 36  # start still applies; the checkpoint does not


def test_a_changed_query_asks_for_a_full_refresh(
    schema: Schema, endpoint: Endpoint, state_url: str
) -> None:
    """A checkpoint saved for another query is not resumed from."""
    query = events(schema, 10)
    state = open_state(state_url)
    run_job(build_job(incremental(schema, endpoint, query)), state=state)

    changed = build_job(incremental(schema, endpoint, query + " WHERE id > 0"))
    with pytest.raises(StateError, match="--full-refresh"):
        run_job(changed, state=state)
    assert run_job(changed, state=state, full_refresh=True).rows_posted == 10
    assert run_job(changed, state=state).rows_read == 0
    state.close()


def test_a_late_commit_within_lag_is_delivered(
    schema: Schema, endpoint: Endpoint, state_url: str
) -> None:
    """A row stamped before, but committed after, a later row is still sent with lag;
    the same job without lag checkpoints past it and never sends it (the control)."""
    schema.execute("CREATE TABLE events (id int PRIMARY KEY, updated_at timestamptz NOT NULL)")
    query = f"SELECT * FROM {schema.table('events')}"
    lagged = incremental(schema, endpoint, query, cursor={"lag": "3s"})
    lagged["target"]["url"] = endpoint.url + "/lag"
    unlagged = incremental(schema, endpoint, query)
    unlagged.update(name="no_lag", target={"url": endpoint.url + "/nolag"})
    jobs = [build_job(lagged), build_job(unlagged)]
    state = open_state(state_url)
    with psycopg.connect(schema.url) as slow:
        slow.execute(f"INSERT INTO {schema.table('events')} VALUES (1, now())")  # not committed
        time.sleep(0.3)
        schema.execute(f"INSERT INTO {schema.table('events')} VALUES (2, now())")
        first = [run_job(job, state=state) for job in jobs]
        slow.commit()
    time.sleep(3.5)
    second = [run_job(job, state=state) for job in jobs]
    state.close()

    assert [r.rows_read for r in first] == [0, 1]  # with lag, row 2 waits for row 1
    assert [r.rows_posted for r in second] == [2, 0]
    assert sorted(row["id"] for row in endpoint.rows("/lag")) == [1, 2]
    assert [row["id"] for row in endpoint.rows("/nolag")] == [2]  # row 1 was skipped


def test_null_cursor_values_fail_unless_skipped(
    schema: Schema, endpoint: Endpoint, state_url: str
) -> None:
    """A NULL cursor value stops the run naming the column; on_null: skip leaves it out."""
    query = events(schema, 5)
    schema.execute("UPDATE events SET updated_at = NULL WHERE id = 3")
    state = open_state(state_url)

    with pytest.raises(CursorOrderError, match="cursor column 'updated_at' is NULL"):
        run_job(build_job(incremental(schema, endpoint, query)), state=state)

    skipping = build_job(incremental(schema, endpoint, query, cursor={"on_null": "skip"}))
    run_job(skipping, state=state, full_refresh=True)
    state.close()
    assert sorted(set(endpoint.accepted_ids())) == [1, 2, 4, 5]


def test_one_poison_row_is_dead_lettered_and_replayed(
    schema: Schema, endpoint: Endpoint, state_url: str
) -> None:
    """In a batch of 500, only the rejected row is dead-lettered; the other 499 arrive;
    replay sends it once the endpoint accepts it."""
    query = events(schema, 500)
    endpoint.reject_when(lambda body: b'"id":250,' in body, (422, {}, b'{"error":"bad name"}'))
    job = build_job(incremental(schema, endpoint, query, batch={"size": 500}))
    state = open_state(state_url)

    result = run_job(job, state=state)

    assert result.status == "partial"
    assert (result.rows_posted, result.rows_rejected) == (499, 1)
    assert sorted(endpoint.accepted_ids()) == [i for i in range(1, 501) if i != 250]
    assert result.requests <= 1 + 2 * 9  # bisection: about two requests per level
    (letter,) = state.dead_letters(job.name)
    assert letter.status == 422 and '"id":250' in letter.row.decode()
    assert "bad name" in letter.excerpt
    assert state.checkpoint(job.name) is not None

    endpoint.clear_rejections()
    replayed = replay_dead_letters(job, state=state)
    assert (replayed.delivered, replayed.rejected) == (1, 0)
    assert state.dead_letters(job.name) == []
    assert endpoint.accepted_ids().count(250) == 1
    state.close()


def test_the_circuit_breaker_stops_a_broken_mapping(
    schema: Schema, endpoint: Endpoint, state_url: str
) -> None:
    """When every row is rejected, the run stops after max_rejected rows."""
    query = events(schema, 200)
    endpoint.reject_when(lambda body: True, 422)
    job = build_job(incremental(schema, endpoint, query, batch={"size": 50}, max_rejected=5))
    state = open_state(state_url)

    with pytest.raises(TooManyRejectionsError, match="6 rows rejected"):
        run_job(job, state=state)
    assert len(endpoint.requests) < 20
    assert state.checkpoint(job.name) is None  # the failed batch is not passed
    state.close()


def test_auth_failures_are_not_bisected(schema: Schema, endpoint: Endpoint) -> None:
    """A 401 is about the request, not a row: the run fails at once."""
    endpoint.reject_when(lambda body: True, 401)
    job = build_job(incremental(schema, endpoint, events(schema, 100)))

    with pytest.raises(RejectedError) as caught:
        run_job(job)
    assert caught.value.status == 401 and len(endpoint.requests) == 1


def test_two_concurrent_runs_one_is_locked_out(
    tmp_path: Path, schema: Schema, endpoint: Endpoint, state_url: str
) -> None:
    """While one run holds the job, a second exits with the locked code and sends nothing."""
    query = events(schema, 50)
    # One request at a time, each taking a second: the first run holds the job for 5 s,
    # long enough for the second process to start even on a busy machine.
    endpoint.reject_when(lambda body: True, Delay(1.0, 200))
    spec = incremental(schema, endpoint, query, batch={"size": 10}, concurrency=1)
    first = threading.Thread(target=run_job, args=(build_job(spec),))
    first.start()
    while not endpoint.requests:
        time.sleep(0.01)

    second = cli(job_file(tmp_path, spec), cwd=tmp_path)
    out, err = second.communicate(timeout=60)
    first.join()

    assert second.returncode == defaults.EXIT_LOCKED, out + err
    assert "is locked by run" in err
    assert len(endpoint.requests) == 5
    assert sorted(endpoint.accepted_ids()) == list(range(1, 51))


def test_the_lock_of_a_live_run_is_not_taken(schema: Schema, state_url: str) -> None:
    """In one process, a second acquisition of a held lock fails; after release it works."""
    state = open_state(state_url)
    lease = state.acquire("job", "run-1")
    with pytest.raises(JobLockedError):
        state.acquire("job", "run-2")
    state.release(lease)
    assert state.acquire("job", "run-3").token == lease.token + 1
    state.close()


def test_sigterm_checkpoints_and_exits_within_the_grace_period(
    tmp_path: Path, schema: Schema, endpoint: Endpoint, state_url: str
) -> None:
    """SIGTERM mid-run: exit 130 quickly, the rerun completes, nothing lost, at most the
    batches in flight (concurrency 4) sent twice."""
    query = events(schema, 2000)
    endpoint.reject_when(lambda body: True, Delay(0.1, 200))
    spec = incremental(schema, endpoint, query, batch={"size": 50}, concurrency=4)
    path = job_file(tmp_path, spec)

    process = cli(path, cwd=tmp_path)
    while len(endpoint.requests) < 5:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    out, err = process.communicate(timeout=30)
    stopped_in = time.monotonic() - started

    assert process.returncode == defaults.EXIT_INTERRUPTED, out + err
    assert stopped_in < 5
    assert "interrupted" in out and "SIGTERM" in err
    sent_before = len(endpoint.requests)
    assert sent_before < 40
    assert "checkpoint" in out

    endpoint.clear_rejections()
    rerun = cli(path, cwd=tmp_path)
    out, err = rerun.communicate(timeout=60)
    assert rerun.returncode == 0, out + err
    ids = endpoint.accepted_ids()
    assert sorted(set(ids)) == list(range(1, 2001))
    assert len(ids) - 2000 <= 4 * 50  # at most the batches in flight


@pytest.mark.parametrize("concurrency", [1, 4])
def test_kill_9_loop_loses_nothing(
    tmp_path: Path, schema: Schema, endpoint: Endpoint, state_url: str, concurrency: int
) -> None:
    """Five kill -9 at random moments over a 20,000-row load, then a final run: every row
    arrives, duplicates stay within `concurrency` batches per kill, the next run sends
    nothing."""
    batch = 200
    query = events(schema, 20_000)
    endpoint.reject_when(lambda body: True, Delay(0.005 * concurrency, 200))
    spec = incremental(schema, endpoint, query, batch={"size": batch}, concurrency=concurrency)
    path = job_file(tmp_path, spec)
    rng = random.Random(20_000 + concurrency)
    # Kill mid-load, at random points of the delivery, each later than the last.
    targets = sorted(rng.sample(range(1_000, 19_000), 5))
    for target in targets:
        time.sleep(0.05)  # the killed run's last request, if any, is recorded by now
        before = len(endpoint.requests)
        process = cli(path, cwd=tmp_path)
        deadline = time.monotonic() + 60
        # Kill once the target is reached and this run has sent something (the previous
        # run's last request may already have passed the target).
        while (
            len(set(endpoint.accepted_ids())) < target or len(endpoint.requests) == before
        ) and process.poll() is None:
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.002)
        process.kill()
        process.communicate()
        assert process.returncode == -signal.SIGKILL, "the run ended before it was killed"
        assert len(set(endpoint.accepted_ids())) < 20_000

    final = cli(path, cwd=tmp_path)
    out, err = final.communicate(timeout=120)
    assert final.returncode == 0, out + err
    again = cli(path, cwd=tmp_path)
    out, err = again.communicate(timeout=60)
    assert again.returncode == 0 and "requests                0" in out, out + err

    ids = endpoint.accepted_ids()
    counts = collections.Counter(ids)
    assert sorted(counts) == list(range(1, 20_001))
    assert len(ids) - 20_000 <= 5 * concurrency * batch, len(ids) - 20_000
    state = open_state(state_url)
    history = state.history("test_job", limit=10)
    state.close()
    assert [r.status for r in history][:2] == ["succeeded", "succeeded"]
    assert [r.status for r in history][2:7] == ["abandoned"] * 5


def test_history_state_and_deadletter_commands(
    tmp_path: Path, schema: Schema, endpoint: Endpoint, state_url: str
) -> None:
    """The CLI shows runs, the checkpoint and dead letters, and resets and purges them."""
    query = events(schema, 20)
    endpoint.reject_when(lambda body: b'"id":7,' in body, (422, {}, b"no"))
    path = job_file(tmp_path, incremental(schema, endpoint, query))

    def loader(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "loader", *args], cwd=tmp_path,
            capture_output=True, text=True, timeout=60, env=os.environ,
        )  # fmt: skip

    ran = loader("run", str(path))
    assert ran.returncode == defaults.EXIT_REJECTED_ROWS, ran.stdout + ran.stderr
    assert "rejected                1" in ran.stdout

    shown = loader("state", "show", str(path))
    assert "checkpoint:   2024-05-01T12:00:02.857142+00:00, 20" in shown.stdout or (
        ", 20" in shown.stdout
    )
    assert "fits the job: yes" in shown.stdout and "dead letters: 1" in shown.stdout

    listed = loader("deadletter", "list", str(path))
    assert '"id":7' in listed.stdout and "status 422" in listed.stdout

    history = loader("history", str(path))
    assert "partial" in history.stdout

    assert loader("deadletter", "replay", str(path)).returncode == defaults.EXIT_REJECTED_ROWS
    assert loader("deadletter", "purge", str(path), "--yes").returncode == 0
    assert "0 dead letters" in loader("deadletter", "list", str(path)).stdout

    assert loader("state", "reset", str(path), "--yes").returncode == 0
    assert "checkpoint:   none" in loader("state", "show", str(path)).stdout
    rerun = loader("run", str(path))
    assert "rows posted            19" in rerun.stdout


def test_lag_needs_postgresql(tmp_path: Path, endpoint: Endpoint) -> None:
    """A lag on a SQLite source is refused with the reason, before anything is sent."""
    db = tmp_path / "s.db"
    import sqlite3

    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (id INTEGER, at TEXT)")
    conn.close()
    job = build_job(
        {
            "name": "s",
            "source": {"url": f"sqlite:///{db}", "query": "SELECT * FROM t",
                       "cursor": {"column": "at", "key": "id", "lag": "5s"}},
            "target": {"url": endpoint.url},
        }
    )  # fmt: skip
    with pytest.raises(Exception, match="lag: needs PostgreSQL"):
        run_job(job)


def test_sqlite_sources_are_incremental_too(tmp_path: Path, endpoint: Endpoint) -> None:
    """The cursor works on SQLite (row values), integer column without a key."""
    import sqlite3

    db = tmp_path / "s.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"v{i}") for i in range(1, 11)])
    conn.close()
    job = build_job(
        {
            "name": "s",
            "source": {"url": f"sqlite:///{db}", "query": "SELECT * FROM t;",
                       "cursor": {"column": "id"}},
            "target": {"url": endpoint.url},
            "batch": {"size": 3},
        }
    )  # fmt: skip
    assert run_job(job, limit=5).rows_posted == 5
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO t VALUES (11, 'v11')")
    conn.close()
    assert run_job(job).rows_posted == 6
    assert sorted(endpoint.accepted_ids()) == list(range(1, 12))


def test_poison_rows_with_concurrent_requests(
    schema: Schema, endpoint: Endpoint, state_url: str
) -> None:
    """With four requests in flight, two poison rows in different batches are isolated
    and every other row is delivered; the checkpoint ends after the last row."""
    query = events(schema, 1000)
    endpoint.reject_when(lambda body: b'"id":250,' in body or b'"id":777,' in body, 422)
    job = build_job(incremental(schema, endpoint, query, batch={"size": 100}, concurrency=4))
    state = open_state(state_url)

    result = run_job(job, state=state)

    assert (result.rows_posted, result.rows_rejected) == (998, 2)
    assert sorted(endpoint.accepted_ids()) == [i for i in range(1, 1001) if i not in (250, 777)]
    assert sorted(int(d.row.split(b",")[0][6:]) for d in state.dead_letters(job.name)) == [
        250, 777,
    ]  # fmt: skip
    checkpoint = state.checkpoint(job.name)
    assert checkpoint is not None and checkpoint.position[1] == 1000
    state.close()


def test_a_null_cursor_value_stops_the_run_before_anything_is_sent(
    schema: Schema, endpoint: Endpoint
) -> None:
    """With on_null: fail, one NULL anywhere in the result means nothing is sent (rows
    after it would otherwise move the checkpoint past where its fix would land)."""
    query = events(schema, 20)
    schema.execute("UPDATE events SET updated_at = NULL WHERE id = 3")

    with pytest.raises(CursorOrderError, match="nothing was sent"):
        run_job(build_job(incremental(schema, endpoint, query)))
    assert endpoint.requests == []


def test_cursor_columns_and_keys_must_make_checkpoints_safe(
    schema: Schema, endpoint: Endpoint
) -> None:
    """Refused before sending: a text cursor column; a uuid key without lag (a later row
    of a tie may get a lower key); lag on an integer column; a repeated value without a
    key; a key type the state store cannot keep."""
    schema.execute(
        "CREATE TABLE t AS SELECT g AS id, 'x' || g AS name, gen_random_uuid() AS uid, "
        "now() - interval '1 hour' AS at, (g / 2) AS bucket, '10.0.0.1'::inet AS addr "
        "FROM generate_series(1, 6) g"
    )
    table = f"SELECT * FROM {schema.table('t')}"
    cases = [
        ({"column": "name"}, "must be a timestamp, a date or an integer"),
        ({"column": "at", "key": "uid"}, "Use an increasing key"),
        ({"column": "id", "lag": "5s"}, "lag: applies to timestamp and date"),
        ({"column": "bucket"}, "repeats the value"),
        ({"column": "at", "key": "addr", "lag": "1s"}, "cannot be stored"),
    ]
    for cursor, message in cases:
        job = build_job(make_job(schema, endpoint.url, table, source={"cursor": cursor}))
        with pytest.raises(LoaderError, match=message):
            run_job(job)
    assert endpoint.requests == []

    uuid_with_lag = {"column": "at", "key": "uid", "lag": "1s"}
    job = build_job(make_job(schema, endpoint.url, table, source={"cursor": uuid_with_lag}))
    assert run_job(job).rows_posted == 6


def test_rows_stamped_in_the_future_wait_for_their_time(schema: Schema, endpoint: Endpoint) -> None:
    """A future timestamp does not move the checkpoint past rows written meanwhile."""
    schema.execute(
        "CREATE TABLE t (id int, at timestamptz);"
        "INSERT INTO t VALUES (1, now() - interval '1 minute'), (2, '2099-01-01')"
    )
    job = build_job(incremental(schema, endpoint, f"SELECT * FROM {schema.table('t')}",
                                cursor={"column": "at"}))  # fmt: skip
    run_job(job)
    schema.execute("INSERT INTO t VALUES (3, now() - interval '1 second')")
    run_job(job)

    assert sorted(endpoint.accepted_ids()) == [1, 3]


def test_date_cursors_send_only_days_that_have_ended(schema: Schema, endpoint: Endpoint) -> None:
    """With a date column, today's rows wait for tomorrow: a row added later today can
    never fall behind the checkpoint."""
    schema.execute(
        "CREATE TABLE t (id int, day date);"
        "INSERT INTO t VALUES (1, current_date - 2), (2, current_date - 1), (3, current_date)"
    )
    job = build_job(incremental(schema, endpoint, f"SELECT * FROM {schema.table('t')}",
                                cursor={"column": "day", "key": "id"}))  # fmt: skip

    assert run_job(job).rows_posted == 2
    assert sorted(endpoint.accepted_ids()) == [1, 2]


def test_lag_on_local_timestamps_uses_the_database_time_zone(
    schema: Schema, endpoint: Endpoint
) -> None:
    """A timestamp without time zone is read in the database session's zone: a row
    written a moment ago in New York time is held by a one-hour lag."""
    url = (
        schema.url
        + ("&" if "?" in schema.url else "?")
        + "options=-c%20timezone%3DAmerica/New_York"
    )
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {schema.table('t')} (id int, at timestamp)")
        conn.execute(f"INSERT INTO {schema.table('t')} VALUES (1, localtimestamp - interval "
                     "'2 hours'), (2, localtimestamp)")  # fmt: skip
    cursor = {"column": "at", "key": "id", "lag": "1h"}
    spec = make_job(schema, endpoint.url, f"SELECT * FROM {schema.table('t')}",
                    source={"url": url, "cursor": cursor})  # fmt: skip
    run_job(build_job(spec))

    assert endpoint.accepted_ids() == [1]


@pytest.mark.parametrize("generic", [False, True])
def test_cursor_columns_with_a_percent_sign(
    schema: Schema, endpoint: Endpoint, state_url: str, generic: bool
) -> None:
    """Column names with ``%`` (quoted as they are, never escaped twice for the driver)
    work as the cursor's column and key, on the fast path and the generic one."""
    schema.execute(
        'CREATE TABLE pct AS SELECT g AS "n%", g * 10 AS "50% off" FROM generate_series(1, 5) g'
    )
    extra = ", ARRAY[now()] AS forces_generic" if generic else ""
    query = f'SELECT "n%", "50% off"{extra} FROM {schema.table("pct")}'
    job = build_job(
        make_job(schema, endpoint.url, query, source={"cursor": {"column": "50% off", "key": "n%"}})
    )
    state = open_state(state_url)

    first = run_job(job, state=state)
    schema.execute(f"INSERT INTO {schema.table('pct')} VALUES (6, 60)")
    second = run_job(job, state=state)
    state.close()

    assert (first.rows_posted, second.rows_posted) == (5, 1)
    assert [row["n%"] for row in endpoint.rows()] == [1, 2, 3, 4, 5, 6]
    assert endpoint.rows()[0]["50% off"] == 10
