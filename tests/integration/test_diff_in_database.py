"""Diff syncs compared by the database: when the state store is in the source's
PostgreSQL, the query is joined with the stored fingerprints and only new and changed
rows (and the vanished keys) leave the database.

Real PostgreSQL for the source and the state store, a real HTTP server on loopback.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import yaml

from loader import build_job, open_state, run_job
from loader.dbdiff import Compare, sees_store
from loader.state import SqlStateStore
from tests.integration.conftest import Schema, make_job
from tests.integration.test_diff import deleted, posted, stats
from tests.integration.test_diff_sources import run_cli
from tests.support.server import Endpoint


def compared_by(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The ``by`` field of each ``diff.compare`` event logged."""
    return [r.fields["by"] for r in caplog.records if getattr(r, "event", None) == "diff.compare"]


def run_compared(
    job: Any, state: SqlStateStore, endpoint: Endpoint, caplog: pytest.LogCaptureFixture
) -> Any:
    """Run ``job`` again, the requests so far forgotten; check that the database compared."""
    endpoint.requests.clear()
    caplog.clear()
    with caplog.at_level("DEBUG", logger="loader"):
        result = run_job(job, state=state)
    assert compared_by(caplog) == ["database"]
    return result


def job_of(schema: Schema, endpoint: Endpoint, query: str, **sections: Any) -> Any:
    deletes = {"url": endpoint.url + "/users/{user_id}"}
    source = sections.pop("source", {"diff": {"key": "user_id", "deletes": deletes}})
    return build_job(make_job(schema, endpoint.url + "/import", query, source=source,
                              batch={"size": 100}, **sections))  # fmt: skip


@pytest.fixture
def pg_state(schema: Schema) -> Iterator[SqlStateStore]:
    """A PostgreSQL state store in the test's own schema of the source's database."""
    store = open_state(schema.scoped_url)
    yield store
    store.close()


def test_unchanged_rows_stay_in_the_database(
    schema: Schema, endpoint: Endpoint, pg_state: SqlStateStore, caplog: pytest.LogCaptureFixture
) -> None:
    """With the state store in the source's database, the database compares: updated and
    inserted rows exactly are sent, vanished keys get their delete, and the counts are
    those of a run that compared every row itself."""
    job = job_of(schema, endpoint, stats(schema, 2000))
    with caplog.at_level("DEBUG", logger="loader"):
        first = run_job(job, state=pg_state)
    assert compared_by(caplog) == ["database"] and first.rows_posted == 2000
    schema.execute("UPDATE customer_stats SET orders = -1 WHERE user_id % 100 = 3")
    schema.execute(
        "INSERT INTO customer_stats SELECT g, 'new', 0 FROM generate_series(3001, 3004) g"
    )
    schema.execute("DELETE FROM customer_stats WHERE user_id IN (50, 51, 1999)")
    result = run_compared(job, pg_state, endpoint, caplog)
    changed = [i for i in range(1, 2001) if i % 100 == 3]
    assert sorted(posted(endpoint)) == changed + [3001, 3002, 3003, 3004]
    assert sorted(deleted(endpoint)) == [50, 51, 1999]
    assert (result.rows_read, result.rows_posted, result.rows_unchanged, result.rows_deleted) == (
        2001, 24, 1977, 3)  # fmt: skip
    assert pg_state.fingerprint_count("test_job") == 2001
    endpoint.requests.clear()
    again = run_job(job, state=pg_state)
    assert endpoint.requests == [] and (again.rows_read, again.rows_unchanged) == (2001, 2001)


def test_without_deletes_the_counts_come_from_the_key_check(
    schema: Schema, endpoint: Endpoint, pg_state: SqlStateStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A job without deletes: the database returns only new and changed rows (no pass
    for vanished keys), and the run's counts still add up to the result."""
    job = build_job(make_job(schema, endpoint.url + "/import", stats(schema, 1000),
                             source={"diff": {"key": "user_id"}}, batch={"size": 100}))  # fmt: skip
    run_job(job, state=pg_state)
    schema.execute("UPDATE customer_stats SET plan = 'x' WHERE user_id IN (1, 500)")
    schema.execute("DELETE FROM customer_stats WHERE user_id BETWEEN 10 AND 19")
    schema.execute("INSERT INTO customer_stats VALUES (2000, 'new', 1)")
    result = run_compared(job, pg_state, endpoint, caplog)
    assert sorted(posted(endpoint)) == [1, 500, 2000] and deleted(endpoint) == []
    assert (result.rows_read, result.rows_posted, result.rows_unchanged) == (991, 3, 988)
    assert pg_state.fingerprint_count("test_job") == 1001  # the vanished keys stay known


def test_per_row_requests_with_omitted_columns_when_the_database_compares(
    schema: Schema, endpoint: Endpoint, pg_state: SqlStateStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Per-row requests whose URL names the key, with a column omitted from the body:
    the database compares the body as sent (without the omitted column)."""
    job = job_of(schema, endpoint, stats(schema, 50),
                 target={"url": endpoint.url + "/import/{user_id}", "per_row": True,
                         "omit": ["orders"]})  # fmt: skip
    run_job(job, state=pg_state)
    schema.execute("UPDATE customer_stats SET orders = 0 WHERE user_id < 10")  # omitted
    schema.execute("UPDATE customer_stats SET plan = 'vip' WHERE user_id = 20")
    result = run_compared(job, pg_state, endpoint, caplog)
    assert [(r.path, r.json()) for r in endpoint.requests] == [
        ("/import/20", {"user_id": 20, "plan": "vip"})]  # fmt: skip
    assert (result.rows_posted, result.rows_unchanged) == (1, 49)


def test_a_key_sent_by_a_run_is_never_deleted_by_it(
    schema: Schema, endpoint: Endpoint, pg_state: SqlStateStore
) -> None:
    """The vanished keys come from a second reading of the query (an anti-join in the
    same statement). A query that is not deterministic (here ``random()``) may return a
    key to the first and not to the second: the run sends it and must not delete it."""
    query = stats(schema, 1000)
    deletes = {"url": endpoint.url + "/users/{user_id}"}
    job = job_of(schema, endpoint, f"SELECT * FROM ({query}) q WHERE random() < 0.5",
                 source={"diff": {"key": "user_id", "max_deletes": "100%",
                                  "deletes": deletes}})  # fmt: skip
    run_job(job, state=pg_state)
    schema.execute("UPDATE customer_stats SET orders = orders + 1")  # every body changes
    endpoint.requests.clear()
    result = run_job(job, state=pg_state)
    sent, gone = set(posted(endpoint)), set(deleted(endpoint))
    assert sent and gone and result.rows_deleted == len(gone)
    assert sent.isdisjoint(gone), sorted(sent & gone)[:10]
    assert pg_state.fingerprint_count("test_job") >= len(sent)


def test_full_refresh_and_dry_run_when_the_database_compares(
    schema: Schema, endpoint: Endpoint, pg_state: SqlStateStore, caplog: pytest.LogCaptureFixture
) -> None:
    """--full-refresh gets every row back from the database; a dry run compares as a
    real run would, sends nothing and keeps the fingerprints as they were."""
    job = job_of(schema, endpoint, stats(schema, 300))
    run_job(job, state=pg_state)
    schema.execute("UPDATE customer_stats SET plan = 'gold' WHERE user_id IN (4, 5)")
    schema.execute("DELETE FROM customer_stats WHERE user_id = 6")
    endpoint.requests.clear()
    with caplog.at_level("DEBUG", logger="loader"):
        dry = run_job(job, state=pg_state, dry_run=True)
    assert compared_by(caplog) == ["database"] and endpoint.requests == []
    assert (dry.rows_unchanged, dry.rows_deleted) == (297, 1)
    refreshed = run_job(job, state=pg_state, full_refresh=True)
    assert sorted(posted(endpoint)) == [i for i in range(1, 301) if i != 6]
    assert (refreshed.rows_unchanged, refreshed.rows_deleted) == (0, 1)
    endpoint.requests.clear()
    assert run_job(job, state=pg_state).rows_posted == 0 and endpoint.requests == []


def test_bodies_loader_writes_and_char_keys_are_compared_by_loader(
    schema: Schema, endpoint: Endpoint, pg_state: SqlStateStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A body the database does not write (``target.body``: one column as the body), or
    a key of a type other than an integer or text (``char(n)``), leaves the comparison
    to loader, with the same result."""
    query = stats(schema, 200)
    schema.execute("ALTER TABLE customer_stats ADD COLUMN doc jsonb")
    schema.execute("UPDATE customer_stats SET doc = jsonb_build_object('id', user_id)")
    table = schema.table("customer_stats")
    with_body = job_of(schema, endpoint, f"SELECT user_id, doc FROM {table}",
                       target={"body": "doc"}, name="body_job")  # fmt: skip
    named = f"SELECT (plan || user_id)::char(12) AS name, orders FROM ({query}) q"
    char_key = build_job(make_job(schema, endpoint.url + "/import", named,
                                  source={"diff": {"key": "name"}}, name="char_key"))  # fmt: skip
    for job in (with_body, char_key):
        run_job(job, state=pg_state)
        caplog.clear()
        endpoint.requests.clear()
        with caplog.at_level("DEBUG", logger="loader"):
            assert run_job(job, state=pg_state).rows_unchanged == 200
        assert compared_by(caplog) == ["loader"] and endpoint.requests == []


@pytest.mark.parametrize("key", ["text", "composite"])
def test_text_and_composite_keys_are_compared_by_the_database(
    schema: Schema, endpoint: Endpoint, pg_state: SqlStateStore, caplog: pytest.LogCaptureFixture,
    key: str,
) -> None:  # fmt: skip
    """Text keys (with quotes, backslashes and non-ASCII letters) and composite keys
    (an integer and a text) join the stored keys as JSON: exactly the changed and new
    rows are sent, the vanished keys deleted, and the stored keys are the ones loader
    writes when it compares."""
    schema.execute(
        "CREATE TABLE accounts AS SELECT g % 7 AS region, 'acc-' || g || "
        "CASE WHEN g % 5 = 0 THEN E' \"q\" \\\\ é☃' ELSE '' END AS name, g AS score "
        "FROM generate_series(1, 300) AS g"
    )
    names = ("name",) if key == "text" else ("region", "name")
    url = endpoint.url + "/acc/" + "/".join(f"{{{n}}}" for n in names)
    job = build_job(make_job(
        schema, endpoint.url + "/import", f"SELECT * FROM {schema.table('accounts')}",
        source={"diff": {"key": list(names), "max_deletes": "100%",
                         "deletes": {"url": url, "method": "POST"}}},
        batch={"size": 50}))  # fmt: skip
    run_job(job, state=pg_state)
    schema.execute("UPDATE accounts SET score = -score WHERE score % 50 = 0")
    schema.execute("INSERT INTO accounts VALUES (1, 'new ünïcode', 1000)")
    schema.execute("DELETE FROM accounts WHERE score IN (7, 15)")
    result = run_compared(job, pg_state, endpoint, caplog)
    sent = sorted(row["score"] for row in endpoint.rows("/import"))
    assert sent == [-300, -250, -200, -150, -100, -50, 1000]
    gone = sorted(r.json()["name"] for r in endpoint.requests if r.path.startswith("/acc/"))
    assert gone == ['acc-15 "q" \\ é☃', "acc-7"]
    assert (result.rows_posted, result.rows_unchanged, result.rows_deleted) == (7, 292, 2)
    endpoint.requests.clear()
    assert run_job(job, state=pg_state).rows_posted == 0
    # The same keys when loader compares (other fingerprints, so every row goes once,
    # but no stored key looks vanished: nothing is deleted).
    loader_compares = run_job(job, state=pg_state, database_json=False)
    assert (loader_compares.rows_posted, loader_compares.rows_deleted) == (299, 0)


@pytest.fixture
def reader(schema: Schema) -> Iterator[str]:
    """A login role that may read the test's tables but not the state store's."""
    role = f"r_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(schema.url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT USAGE ON SCHEMA {schema.name} TO {role}")
    parts = urlsplit(schema.url)
    yield urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port or 5432}"))
    with psycopg.connect(schema.url, autocommit=True) as conn:
        conn.execute(f"DROP OWNED BY {role}")
        conn.execute(f"DROP ROLE {role}")


def test_a_source_that_cannot_read_the_state_store_leaves_the_comparison_to_loader(
    schema: Schema, endpoint: Endpoint, reader: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A read-only source role without access to the state store's tables: loader
    compares, and the run is as correct as ever (no error, no aborted transaction)."""
    query = stats(schema, 500)
    schema.execute(f"GRANT SELECT ON customer_stats TO {reader.split('//')[1].split('@')[0]}")
    spec = make_job(schema, endpoint.url + "/import", query, source={"diff": {"key": "user_id"}})
    spec["source"]["url"] = reader
    path = tmp_path / "job.yml"
    path.write_text(yaml.safe_dump(spec))
    monkeypatch.setenv("LOADER_STATE_URL", schema.scoped_url)
    monkeypatch.setenv("LOADER_LOG_LEVEL", "debug")
    monkeypatch.setenv("LOADER_LOG_FORMAT", "logfmt")
    outputs = []
    for _ in range(2):
        process = run_cli(path, tmp_path)
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, out + err
        outputs.append(err)
    assert all("event=diff.compare" in err and "by=loader" in err for err in outputs)
    assert sorted(posted(endpoint)) == list(range(1, 501))


def test_the_source_must_see_the_state_store_as_it_is(
    schema: Schema, endpoint: Endpoint, pg_state: SqlStateStore
) -> None:
    """The database compares only when the source's own snapshot holds the run's
    generation (a replica behind the store does not), can read both tables, and the
    check leaves the source's transaction usable whatever it finds."""
    run_job(job_of(schema, endpoint, stats(schema, 10)), state=pg_state)
    tables = pg_state.fingerprint_tables()
    assert tables is not None
    assert tables[:2] == (f"{schema.name}.loader_fingerprints", f"{schema.name}.loader_meta")
    assert tables[2].startswith(f"{urlsplit(schema.url).path.lstrip('/')}/")
    generation = pg_state.generation("test_job")
    assert generation is not None
    role = f"r_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(schema.url) as conn:
        conn.execute("BEGIN READ ONLY")
        assert sees_store(conn, Compare(*tables, "test_job", generation))
        assert not sees_store(conn, Compare(*tables, "test_job", generation + 1))
        assert not sees_store(conn, Compare(*tables, "other_job", generation))
        missing = (f"{schema.name}.nothing_here", *tables[1:])
        assert not sees_store(conn, Compare(*missing, "test_job", generation))
        elsewhere = (*tables[:2], "another_database/1")
        assert not sees_store(conn, Compare(*elsewhere, "test_job", generation))
        conn.rollback()
        conn.execute(f"CREATE ROLE {role}")
        conn.execute(f"GRANT USAGE ON SCHEMA {schema.name} TO {role}")
        conn.commit()
        try:
            conn.execute(f"SET ROLE {role}")
            assert not sees_store(conn, Compare(*tables, "test_job", generation))
            assert conn.execute("SELECT 1").fetchone() == (1,)
        finally:
            conn.rollback()
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")
            conn.commit()


def test_limit_counts_only_the_rows_taken_when_the_database_compares(
    schema: Schema, endpoint: Endpoint, pg_state: SqlStateStore
) -> None:
    """--limit stops the read after so many changed rows: the rows the database left
    out are not counted read or unchanged (it did not get to compare the rest)."""
    job = job_of(schema, endpoint, stats(schema, 300))
    run_job(job, state=pg_state)
    schema.execute("UPDATE customer_stats SET plan = 'gold' WHERE user_id IN (4, 5, 6, 7)")
    schema.execute("DELETE FROM customer_stats WHERE user_id = 9")
    endpoint.requests.clear()
    limited = run_job(job, state=pg_state, limit=2)
    assert len(posted(endpoint)) == 2 and deleted(endpoint) == []
    assert (limited.rows_read, limited.rows_posted, limited.rows_unchanged) == (2, 2, 0)
    dry = run_job(job, state=pg_state, limit=1, dry_run=True)
    assert (dry.rows_read, dry.rows_unchanged, dry.rows_deleted) == (1, 0, 0)
    rest = run_job(job, state=pg_state)
    assert (rest.rows_read, rest.rows_posted, rest.rows_unchanged) == (299, 2, 297)


@pytest.fixture
def other_database(schema: Schema) -> Iterator[str]:
    """A second database on the same server with a schema named as the test's: a
    state store URL there (its tables have the same qualified names as the test's)."""
    name = f"d_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(schema.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    parts = urlsplit(schema.url)
    url = urlunsplit(parts._replace(path=f"/{name}"))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema.name}")
    yield urlunsplit(urlsplit(schema.scoped_url)._replace(path=f"/{name}"))
    with psycopg.connect(schema.url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_a_state_store_in_another_database_is_never_joined_by_name(
    schema: Schema, endpoint: Endpoint, pg_state: SqlStateStore, other_database: str
) -> None:
    """Two state stores on one server, one in the source's database and one in another
    database, with the same schema and table names and the same job at the same
    generation: the job run with the other store must not compare with the fingerprints
    of the store in the source's database (they say nothing of what its endpoint got)."""
    job = job_of(schema, endpoint, stats(schema, 50))
    assert run_job(job, state=pg_state).rows_posted == 50
    endpoint.requests.clear()
    apart = open_state(other_database)
    try:
        first = run_job(job, state=apart)
    finally:
        apart.close()
    assert sorted(posted(endpoint)) == list(range(1, 51))
    assert (first.rows_posted, first.rows_unchanged) == (50, 0)


def test_a_job_no_longer_partitioned_counts_only_its_own_keys(
    schema: Schema, endpoint: Endpoint, pg_state: SqlStateStore, isolated_state: str
) -> None:
    """The keys its key ranges (``NAME#pN``) left in the store are not the job's own:
    once the job is no longer partitioned, its runs count only its own keys as known,
    whichever side compares (the database with ``pg_state``, loader with SQLite)."""
    query = stats(schema, 200)
    source = {
        "partition": {"column": "user_id", "count": 2},
        "diff": {"key": "user_id", "deletes": {"url": endpoint.url + "/users/{user_id}"}},
    }
    parted = build_job(make_job(schema, endpoint.url + "/import", query, source=source))
    plain = job_of(schema, endpoint, query)
    sqlite = open_state(isolated_state)
    try:
        for store in (pg_state, sqlite):
            assert run_job(parted, state=store).rows_posted == 200
            endpoint.requests.clear()
            result = run_job(plain, state=store)
            assert sorted(posted(endpoint)) == list(range(1, 201)) and deleted(endpoint) == []
            assert (result.rows_read, result.rows_posted, result.rows_unchanged,
                    result.rows_deleted) == (200, 200, 0, 0)  # fmt: skip
            endpoint.requests.clear()
    finally:
        sqlite.close()


def fingerprint_writes(store: SqlStateStore) -> list[str]:
    """Every statement ``store`` runs that writes ``loader_fingerprints`` from a JSON
    document (the saves), from now on, in order."""
    import sqlalchemy as sa

    writes: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("INSERT INTO loader_fingerprints") and "json_to" in statement:
            writes.append(statement)

    sa.event.listen(store._engine, "before_cursor_execute", seen)
    return writes


def test_a_first_run_inserts_its_fingerprints_without_the_conflict_check(
    schema: Schema, endpoint: Endpoint, pg_state: SqlStateStore
) -> None:
    """A job's first run has no key stored: its fingerprints are inserted without ON
    CONFLICT (a quarter of the database's time on a first run). Later runs upsert."""
    job = job_of(schema, endpoint, stats(schema, 500))
    writes = fingerprint_writes(pg_state)
    run_job(job, state=pg_state)
    assert len(writes) >= 1 and not any("ON CONFLICT" in w for w in writes)
    assert pg_state.fingerprint_count("test_job") == 500
    schema.execute("UPDATE customer_stats SET orders = -1 WHERE user_id IN (7, 8)")
    writes.clear()
    endpoint.requests.clear()
    run_job(job, state=pg_state)
    assert sorted(posted(endpoint)) == [7, 8]
    assert len(writes) == 1 and "ON CONFLICT" in writes[0]


def test_a_fresh_run_finding_a_key_stored_after_all_upserts_it(pg_state: SqlStateStore) -> None:
    """If a first run records a key twice (it read the row twice), the insert of the
    second group is undone and upserted instead: the last fingerprint wins, the
    transaction goes on, and the rest of the run upserts without trying to insert."""
    generation = pg_state.next_generation("twice")
    writes = fingerprint_writes(pg_state)
    for fingerprint, keys in ((b"1" * 8, ["[1]", "[2]"]), (b"2" * 8, ["[2]", "[3]"])):
        lease = pg_state.acquire("twice", "test")
        diffed = (generation, [(k, fingerprint) for k in keys], ())
        pg_state.record_batch(lease, "run-1", fingerprint="f", position=None, diffed=diffed)
        pg_state.release(lease)
    assert pg_state.seen_fingerprints("twice", ["[1]", "[2]", "[3]"]) == {
        "[1]": b"1" * 8, "[2]": b"2" * 8, "[3]": b"2" * 8}  # fmt: skip
    assert ["ON CONFLICT" in w for w in writes] == [False, False, True]
    lease = pg_state.acquire("twice", "test")
    pg_state.record_batch(lease, "run-1", fingerprint="f", position=None,
                          diffed=(generation, [("[4]", b"3" * 8)], ()))  # fmt: skip
    assert ["ON CONFLICT" in w for w in writes] == [False, False, True, True]
    assert pg_state.fingerprint_count("twice") == 4
