"""Dead letters that name their row and replay as the job now stands: the row kept as
read (before ``target.omit``) with its URL, listed by key, replayed with the current
omit, URL template and envelope; old letters still replay where they can; the lock held
by a replay and by a purge. Against the real PostgreSQL, a real HTTP server and Kinto."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from loader import JobLockedError, build_job, open_state, run_job
from loader.errors import LockLostError
from loader.redact import Redactor
from loader.replay import replay_dead_letters
from loader.source import open_stream
from loader.state import NewDeadLetter
from tests.integration.conftest import Schema, make_job
from tests.support.kinto import PASSWORD, USER, Kinto
from tests.support.server import Delay, Endpoint


def products(schema: Schema, prices: list[int], *, generic: bool = False) -> str:
    """A products table (id, name, price, updated_at); ``generic`` adds a column only the
    generic path can encode, so the rows' JSON is not written by the database."""
    schema.execute("CREATE TABLE products (id int, name text, price int, updated_at int)")
    for n, price in enumerate(prices, start=1):
        schema.execute("INSERT INTO products VALUES (%s, %s, %s, %s)", (n, f"p{n}", price, n))
    extra = ", ARRAY[now()] AS forces_generic" if generic else ""
    return f"SELECT id, name, price, updated_at{extra} FROM {schema.table('products')}"


def loader_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loader", *args], cwd=tmp_path,
        capture_output=True, text=True, timeout=60, env=os.environ,
    )  # fmt: skip


def job_file(tmp_path: Path, job: dict[str, Any]) -> Path:
    import yaml

    path = tmp_path / "job.yml"
    path.write_text(yaml.safe_dump(job))
    return path


@pytest.mark.parametrize("generic", [False, True], ids=["fast-path", "generic-path"])
def test_a_letter_keeps_the_row_as_read_and_its_url(
    schema: Schema, endpoint: Endpoint, isolated_state: str, generic: bool
) -> None:
    """With ``omit: [id]`` a rejected row is kept whole (id included, in column order)
    with the URL it was sent to, on both the fast and the generic path; the body sent
    and the row kept for the old readers stay without the omitted column."""
    query = products(schema, [5, -1, 7, -2], generic=generic)
    endpoint.reject_when(lambda body: b'"price":-' in body, (400, {}, b"price below 0"))
    job = build_job(make_job(
        schema, endpoint.url + "/items?token=s3cret", query, batch={"size": 4},
        target={"omit": ["id", "forces_generic"] if generic else ["id"]},
        source={"cursor": {"column": "updated_at", "key": "id"}},
    ))  # fmt: skip
    state = open_state(isolated_state)

    result = run_job(job, state=state)

    assert (result.rows_posted, result.rows_rejected) == (2, 2)
    letters = state.dead_letters(job.name)
    assert all(b'"id"' not in r.body for r in endpoint.requests)
    assert [json.loads(letter.row) for letter in letters] == [
        {"name": "p2", "price": -1, "updated_at": 2}, {"name": "p4", "price": -2, "updated_at": 4}
    ]  # fmt: skip
    full = [json.loads(letter.full_row or b"") for letter in letters]
    assert [list(row)[:4] for row in full] == [["id", "name", "price", "updated_at"]] * 2
    assert [(row["id"], row["price"]) for row in full] == [(2, -1), (4, -2)]
    assert {letter.url for letter in letters} == {endpoint.url + "/items?token=***"}
    state.close()


def test_omitted_columns_with_any_name_and_type_are_kept_as_the_row_would_have_them(
    schema: Schema, endpoint: Endpoint, isolated_state: str
) -> None:
    """On the fast path, omitted columns whose names need quoting and whose values are
    time stamps or decimals are kept as loader's JSON would write them; a date loader
    would refuse to send is kept as null (it is not sent, so the run goes on)."""
    schema.execute(
        "CREATE TABLE t AS SELECT 1 AS id, numeric '1.50' AS \"Price €\", "
        "timestamptz '2024-05-01 12:00:00.5+02' AS \"it's at\", date 'infinity' AS until"
    )
    query = f'SELECT id, "Price €", "it\'s at", until FROM {schema.table("t")}'
    endpoint.script("/", (400, {}, b"no"))
    job = build_job(make_job(schema, endpoint.url, query,
                             target={"omit": ["Price €", "it's at", "until"]}))  # fmt: skip
    state = open_state(isolated_state)
    with open_stream(job.source, Redactor(), omit=job.target.omit) as stream:
        assert stream.json_rows and stream.omitted_index == 1

    assert run_job(job, state=state).rows_rejected == 1

    (letter,) = state.dead_letters(job.name)
    assert json.loads(letter.full_row or b"", parse_float=Decimal) == {
        "id": 1, "Price €": Decimal("1.50"), "it's at": "2024-05-01T10:00:00.5Z", "until": None
    }  # fmt: skip
    assert b'"Price \xe2\x82\xac":1.50' in (letter.full_row or b"")
    state.close()


def test_list_names_the_row_and_replay_applies_the_current_omit(
    tmp_path: Path, schema: Schema, endpoint: Endpoint, isolated_state: str
) -> None:
    """``deadletter list`` shows each letter's cursor key, status, reason and masked URL;
    replay sends the row kept whole under the job's current omit (here no longer
    leaving ``updated_at`` out), and the delivered letters leave the table."""
    query = products(schema, [5, -1, 7])
    endpoint.reject_when(lambda body: b'"price":-' in body, (422, {}, b"price must be >= 0"))
    job = make_job(
        schema, endpoint.url + "/items?token=s3cret", query,
        target={"omit": ["id", "updated_at"]},
        source={"cursor": {"column": "updated_at", "key": "id"}},
    )  # fmt: skip
    path = job_file(tmp_path, job)
    assert loader_cli(tmp_path, "run", str(path)).returncode == 6

    listed = loader_cli(tmp_path, "deadletter", "list", str(path))

    assert listed.returncode == 0, listed.stderr
    assert "updated_at=2 id=2: status 422: price must be >= 0" in listed.stdout
    assert "sent to " + endpoint.url + "/items?token=***" in listed.stdout
    assert '{"id":2,"name":"p2","price":-1,"updated_at":2}' in listed.stdout
    assert "s3cret" not in listed.stdout + listed.stderr

    endpoint.clear_rejections()
    job["target"]["omit"] = ["id"]
    job_file(tmp_path, job)
    replayed = loader_cli(tmp_path, "deadletter", "replay", str(path))

    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "1 delivered, 0 rejected again" in replayed.stdout
    assert endpoint.requests[-1].json() == [{"name": "p2", "price": -1, "updated_at": 2}]
    assert "0 dead letters" in loader_cli(tmp_path, "deadletter", "list", str(path)).stdout


def test_letters_kept_the_old_way_replay_where_they_can(
    schema: Schema, endpoint: Endpoint, isolated_state: str
) -> None:
    """A letter kept before loader stored whole rows (the body only) is replayed when
    its URL can be rebuilt from it; one without the URL's column stays, with a reason,
    and counts as not sent."""
    query = products(schema, [])
    job = build_job(make_job(
        schema, endpoint.url + "/items/{name}", query,
        target={"per_row": True, "method": "PUT", "omit": ["id", "name"]},
    ))  # fmt: skip
    state = open_state(isolated_state)
    lease = state.acquire(job.name, "old-run")
    state.record_batch(lease, "old-run", fingerprint="f", position=None, dead_letters=[
        (b'{"name":"p1","price":-1}', 400, "no"),
        (b'{"price":-2}', 400, "no"),
    ])  # fmt: skip
    state.release(lease)

    replayed = replay_dead_letters(job, state=state)

    assert (replayed.delivered, replayed.rejected, replayed.unsendable) == (1, 0, 1)
    (sent,) = endpoint.requests
    assert (sent.method, sent.path, sent.json()) == ("PUT", "/items/p1", {"price": -1})
    (left,) = state.dead_letters(job.name)
    assert left.row == b'{"price":-2}'
    state.close()


def test_per_row_letters_replay_to_the_url_rebuilt_from_the_whole_row(
    schema: Schema, endpoint: Endpoint, isolated_state: str
) -> None:
    """With the URL's own column omitted from the body, a letter still replays: its URL
    is rebuilt from the row kept whole, under the job's current URL template."""
    query = products(schema, [5, -1])
    endpoint.script("/items/p2", (404, {}, b"no such item"))
    job = make_job(
        schema, endpoint.url + "/items/{name}", query,
        target={"per_row": True, "method": "PUT", "omit": ["id", "name"]},
    )  # fmt: skip
    state = open_state(isolated_state)
    assert run_job(build_job(job), state=state).rows_rejected == 1
    (letter,) = state.dead_letters("test_job")
    assert letter.url == endpoint.url + "/items/p2"

    job["target"]["url"] = endpoint.url + "/v2/items/{name}"
    replayed = replay_dead_letters(build_job(job), state=state)

    assert (replayed.delivered, replayed.rejected) == (1, 0)
    last = endpoint.requests[-1]
    assert (last.path, last.json()) == ("/v2/items/p2", {"price": -1, "updated_at": 2})
    state.close()


def test_an_old_state_store_gains_the_new_columns_and_keeps_its_letters(
    tmp_path: Path, endpoint: Endpoint, schema: Schema
) -> None:
    """A SQLite state store made before letters kept whole rows is upgraded on open:
    its old letters are still listed and replayed, and new ones keep the whole row."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE loader_dead_letters (id INTEGER PRIMARY KEY, job VARCHAR(200) NOT "
            "NULL, run_id VARCHAR(64) NOT NULL, row TEXT NOT NULL, status INTEGER, excerpt "
            "TEXT NOT NULL, attempts INTEGER NOT NULL, created_at FLOAT NOT NULL, "
            "updated_at FLOAT NOT NULL)"
        )
        db.execute(
            "INSERT INTO loader_dead_letters VALUES "
            """(1, 'test_job', 'r1', '{"name":"p9"}', 400, 'no', 1, 0, 0)"""
        )
    state = open_state(f"sqlite:///{path}")
    (old,) = state.dead_letters("test_job")
    assert (old.row, old.full_row, old.url) == (b'{"name":"p9"}', None, None)

    job = build_job(make_job(schema, endpoint.url, products(schema, [1])))
    assert replay_dead_letters(job, state=state).delivered == 1
    assert endpoint.requests[-1].json() == [{"name": "p9"}]
    state.close()


def test_a_postgresql_state_store_gains_the_new_columns(schema: Schema) -> None:
    """The same upgrade on a PostgreSQL state store: old rows stay readable."""
    engine = sa.create_engine(
        schema.scoped_url.replace("postgresql://", "postgresql+psycopg://", 1)
    )
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE loader_dead_letters (id SERIAL PRIMARY KEY, job VARCHAR(200) NOT "
            "NULL, run_id VARCHAR(64) NOT NULL, row TEXT NOT NULL, status INTEGER, excerpt "
            "TEXT NOT NULL, attempts INTEGER NOT NULL, created_at FLOAT NOT NULL, "
            "updated_at FLOAT NOT NULL)"
        )
        conn.exec_driver_sql(
            "INSERT INTO loader_dead_letters (job, run_id, row, status, excerpt, attempts, "
            """created_at, updated_at) VALUES ('j', 'r1', '{"a":1}', 400, 'no', 1, 0, 0)"""
        )
    engine.dispose()
    state = open_state(schema.scoped_url)
    lease = state.acquire("j", "r2")
    state.record_batch(
        lease,
        "r2",
        fingerprint="f",
        position=None,
        dead_letters=[NewDeadLetter(b"{}", 400, "no", b'{"a":2}', "u")],
    )
    state.release(lease)

    old, new = state.dead_letters("j")

    assert (old.row, old.full_row, old.url) == (b'{"a":1}', None, None)
    assert (new.full_row, new.url) == (b'{"a":2}', "u")
    state.close()


def test_a_replay_longer_than_the_lock_ttl_keeps_the_lock(
    schema: Schema, endpoint: Endpoint, isolated_state: str
) -> None:
    """A replay that outlasts the lock's expiry renews it: a second replay and a run
    started meanwhile are refused (locked), and no letter is sent twice."""
    query = products(schema, [-1, -2, -3, -4, -5])
    endpoint.reject_when(lambda body: b'"price":-' in body, (400, {}, b"no"))
    job = build_job(make_job(
        schema, endpoint.url, query, target={"omit": ["id"]},
        source={"cursor": {"column": "updated_at", "key": "id"}}, max_rejected=10,
    ))  # fmt: skip
    assert run_job(job).rows_rejected == 5
    endpoint.clear_rejections()
    endpoint.script("/", *[Delay(0.4)] * 5)
    outcome: dict[str, Any] = {}

    def first() -> None:
        outcome["first"] = replay_dead_letters(job, state=open_state(isolated_state),
                                               lock_ttl=0.6)  # fmt: skip

    thread = threading.Thread(target=first)
    thread.start()
    time.sleep(1.2)  # twice the lock's ttl: without renewals it would have expired
    with pytest.raises(JobLockedError):
        replay_dead_letters(job, state=open_state(isolated_state))
    with pytest.raises(JobLockedError):
        run_job(job, state=open_state(isolated_state))
    thread.join()

    assert outcome["first"].delivered == 5
    sent = [r.json()[0]["name"] for r in endpoint.requests if r.ok]
    assert sorted(sent) == ["p1", "p2", "p3", "p4", "p5"]


def test_a_replay_whose_lock_is_taken_over_stops(
    schema: Schema, endpoint: Endpoint, isolated_state: str
) -> None:
    """When another process takes the lock over, the replay stops after the letter in
    flight and fails with the lost lock; the letters it did not send stay."""
    query = products(schema, [-1, -2, -3, -4, -5])
    endpoint.reject_when(lambda body: b'"price":-' in body, (400, {}, b"no"))
    job = build_job(make_job(schema, endpoint.url, query, max_rejected=10))
    assert run_job(job).rows_rejected == 5
    endpoint.clear_rejections()
    endpoint.script("/", *[Delay(0.4)] * 5)
    before = len(endpoint.requests)
    failure: list[BaseException] = []

    def replay() -> None:
        try:
            replay_dead_letters(job, state=open_state(isolated_state), lock_ttl=0.9)
        except LockLostError as exc:
            failure.append(exc)

    thread = threading.Thread(target=replay)
    thread.start()
    time.sleep(0.5)
    other = open_state(isolated_state)
    with sqlite3.connect(isolated_state.removeprefix("sqlite:///")) as db:
        (owner,) = db.execute("SELECT owner FROM loader_locks").fetchone()
    assert other.break_lock("test_job", owner)
    other.acquire("test_job", "intruder", ttl=30)
    thread.join()

    sent = len(endpoint.requests) - before
    assert len(failure) == 1 and 1 <= sent < 5
    assert other.dead_letter_count("test_job") == 5 - sent
    other.close()


def test_purge_takes_the_lock(
    tmp_path: Path, schema: Schema, endpoint: Endpoint, isolated_state: str
) -> None:
    """``deadletter purge`` while a run holds the job's lock exits 5 and deletes nothing."""
    query = products(schema, [-1])
    endpoint.reject_when(lambda body: b'"price":-' in body, (400, {}, b"no"))
    job = make_job(schema, endpoint.url, query, target={"omit": ["id"]})
    path = job_file(tmp_path, job)
    assert loader_cli(tmp_path, "run", str(path)).returncode == 6
    state = open_state(isolated_state)
    lease = state.acquire("test_job", "a-run")

    purged = loader_cli(tmp_path, "deadletter", "purge", str(path), "--yes")

    assert purged.returncode == 5, purged.stdout + purged.stderr
    assert state.dead_letter_count("test_job") == 1
    state.release(lease)
    assert loader_cli(tmp_path, "deadletter", "purge", str(path), "--yes").returncode == 0
    assert state.dead_letter_count("test_job") == 0
    state.close()


def test_kinto_records_refused_by_the_schema_are_listed_and_replayed(
    tmp_path: Path, schema: Schema, kinto: Kinto, isolated_state: str
) -> None:
    """A per-row Kinto job (PUT each record to its id, ``omit: [id]`` as Kinto refuses a
    numeric id in the body): the records the collection's schema refuses are dead
    letters that name their row; once the schema allows them, replay stores them."""
    rules = {
        "type": "object",
        "required": ["name", "price"],
        "properties": {"name": {"type": "string"}, "price": {"type": "integer"}},
    }
    collection = kinto.collection("shop", "products", {**rules, "properties": {
        **rules["properties"], "price": {"type": "integer", "minimum": 0}}})  # fmt: skip
    query = products(schema, [5, -1, 7, -2, 9])
    job = make_job(
        schema, kinto.url + collection + "/records/product-{id}", query,
        target={"per_row": True, "method": "PUT", "omit": ["id"], "envelope": "data",
                "auth": {"basic": {"username": USER, "password": PASSWORD}}},
        source={"cursor": {"column": "updated_at", "key": "id"}},
    )  # fmt: skip
    path = job_file(tmp_path, job)

    ran = loader_cli(tmp_path, "run", str(path))

    assert ran.returncode == 6, ran.stdout + ran.stderr
    stored = {r["id"]: r for r in kinto.records(collection)}
    assert sorted(stored) == ["product-1", "product-3", "product-5"]
    listed = loader_cli(tmp_path, "deadletter", "list", str(path)).stdout
    assert "updated_at=2 id=2: status 400" in listed and "updated_at=4 id=4: status 400" in listed
    assert f"sent to {kinto.url}{collection}/records/product-2" in listed
    assert PASSWORD not in listed

    kinto.call("PUT", collection, {"data": {"schema": rules}})
    replayed = loader_cli(tmp_path, "deadletter", "replay", str(path))

    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    stored = {r["id"]: r for r in kinto.records(collection)}
    assert sorted(stored) == [f"product-{n}" for n in range(1, 6)]
    assert (stored["product-2"]["name"], stored["product-2"]["price"]) == ("p2", -1)
    assert "0 dead letters" in loader_cli(tmp_path, "deadletter", "list", str(path)).stdout


@pytest.mark.parametrize("generic", [False, True], ids=["fast-path", "generic-path"])
def test_an_omitted_secret_column_is_not_kept_and_list_masks_secret_fields(
    tmp_path: Path, schema: Schema, endpoint: Endpoint, isolated_state: str, generic: bool
) -> None:
    """A column named like a secret and left out of the body is not kept in the state
    store (no replay needs it: the URL does not name it); one that is sent (``password``)
    is kept as sent, and ``deadletter list`` masks it."""
    query = products(schema, [5, -1]).replace(
        "SELECT id,", "SELECT 'tok-4f9a1c' AS api_token, 'pw-77e2' AS password, id,"
    )
    if generic:
        query = query.replace(" FROM ", ", ARRAY[now()] AS forces_generic FROM ")
    endpoint.reject_when(lambda body: b'"price":-' in body, (422, {}, b"price must be >= 0"))
    job = make_job(schema, endpoint.url + "/items", query,
                   target={"omit": ["api_token"] + (["forces_generic"] if generic else [])},
                   source={"cursor": {"column": "updated_at", "key": "id"}})  # fmt: skip
    path = job_file(tmp_path, job)
    assert loader_cli(tmp_path, "run", str(path)).returncode == 6

    (letter,) = open_state(isolated_state).dead_letters("test_job", 10)
    assert letter.full_row is not None and b"tok-4f9a1c" not in letter.full_row
    assert json.loads(letter.full_row)["id"] == 2
    listed = loader_cli(tmp_path, "deadletter", "list", str(path))
    assert listed.returncode == 0, listed.stderr
    assert "updated_at=2 id=2" in listed.stdout and '"password":"***"' in listed.stdout
    assert "tok-4f9a1c" not in listed.stdout and "pw-77e2" not in listed.stdout
