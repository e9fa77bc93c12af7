"""Per-row requests (``target.per_row``): URLs filled from rows, order per URL,
rejections per row, and columns left out of the bodies, against a real HTTP server."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from loader import RejectedError, build_job, open_state, run_job
from loader.errors import EncodingError, QueryError
from loader.replay import replay_dead_letters
from tests.integration.conftest import Schema, make_job
from tests.support.server import Delay, Endpoint


def contacts(schema: Schema, rows: list[tuple[int, str | None, str]]) -> str:
    schema.execute("CREATE TABLE contacts (id int, email text, plan text, updated_at int)")
    for row in rows:
        schema.execute(
            "INSERT INTO contacts VALUES (%s, %s, %s, %s)", (row[0], row[1], row[2], row[0])
        )
    return f"SELECT id, email, plan, updated_at FROM {schema.table('contacts')}"


def upsert(schema: Schema, endpoint: Endpoint, query: str, **extra: Any) -> dict[str, Any]:
    target = {
        "url": endpoint.url + "/contacts/{email}",
        "method": "PUT",
        "per_row": True,
        "omit": ["id", "updated_at"],
        **extra.pop("target", {}),
    }
    return make_job(
        schema, endpoint.url, query, target=target,
        source={"cursor": {"column": "updated_at", "key": "id"}}, **extra,
    )  # fmt: skip


def test_each_row_goes_to_its_own_url_once(
    schema: Schema, endpoint: Endpoint, isolated_state: str
) -> None:
    """One PUT per row, to the URL built from the row (values URL-encoded, a slash too),
    its body the row without the omitted columns; the next run sends only new rows."""
    query = contacts(schema, [(1, "ann@example.com", "pro"), (2, "bob+x/y@example.com", "free")])
    job = build_job(upsert(schema, endpoint, query, concurrency=4))

    result = run_job(job)

    assert result.status == "succeeded" and result.requests == 2
    got = sorted((r.method, r.path, r.json()) for r in endpoint.requests)
    assert got == [
        ("PUT", "/contacts/ann%40example.com", {"email": "ann@example.com", "plan": "pro"}),
        ("PUT", "/contacts/bob%2Bx%2Fy%40example.com",
         {"email": "bob+x/y@example.com", "plan": "free"}),
    ]  # fmt: skip
    assert all(r.headers["Content-Type"] == "application/json" for r in endpoint.requests)

    schema.execute("INSERT INTO contacts VALUES (3, 'cy@example.com', 'pro', 3)")
    assert run_job(job).requests == 1
    assert endpoint.requests[-1].path == "/contacts/cy%40example.com"


def test_rows_for_one_url_keep_their_order_others_overlap(
    schema: Schema, endpoint: Endpoint, isolated_state: str
) -> None:
    """Three updates of one contact arrive in row order, each after the previous one was
    answered, while the other contacts' requests go out meanwhile."""
    rows = [(1, "a@x.io", "v1"), (2, "b@x.io", "v1"), (3, "a@x.io", "v2"),
            (4, "c@x.io", "v1"), (5, "a@x.io", "v3"), (6, "d@x.io", "v1")]  # fmt: skip
    query = contacts(schema, rows)
    endpoint.script("/contacts/a%40x.io", Delay(0.4), Delay(0.2))
    job = build_job(upsert(schema, endpoint, query, concurrency=4))

    assert run_job(job).status == "succeeded"

    to_a = [r for r in endpoint.requests if r.path == "/contacts/a%40x.io"]
    assert [r.json()["plan"] for r in to_a] == ["v1", "v2", "v3"]
    assert to_a[1].at - to_a[0].at >= 0.4 and to_a[2].at - to_a[1].at >= 0.2
    # b and c went out while a@x.io's first request was held (d waits for the window:
    # at most `concurrency` rows are between read and checkpointed).
    overlapping = [r.path for r in endpoint.requests if r.at < to_a[0].at + 0.4]
    assert sorted(overlapping) == ["/contacts/a%40x.io", "/contacts/b%40x.io", "/contacts/c%40x.io"]


def test_a_404_rejects_one_row_and_replay_uses_its_url(
    schema: Schema, endpoint: Endpoint, isolated_state: str
) -> None:
    """A 404 for one row's resource dead-letters that row (the others are delivered);
    replay sends it to the URL rebuilt from the row it keeps."""
    query = contacts(schema, [(1, "a@x.io", "p"), (2, "gone@x.io", "p"), (3, "c@x.io", "p")])
    endpoint.script("/contacts/gone%40x.io", (404, {}, b'{"error":"no such contact"}'))
    job = build_job(upsert(schema, endpoint, query, target={"omit": ["updated_at"]}))
    state = open_state(isolated_state)

    result = run_job(job, state=state)

    assert result.status == "partial" and (result.rows_posted, result.rows_rejected) == (2, 1)
    (letter,) = state.dead_letters(job.name)
    assert letter.status == 404 and "no such contact" in letter.excerpt
    replayed = replay_dead_letters(job, state=state)
    assert (replayed.delivered, replayed.rejected) == (1, 0)
    last = endpoint.requests[-1]
    assert (last.path, last.status, last.json()["id"]) == ("/contacts/gone%40x.io", 200, 2)
    state.close()


def test_a_null_url_value_stops_the_run_naming_the_column(
    schema: Schema, endpoint: Endpoint, isolated_state: str
) -> None:
    """A row whose URL cannot be built fails the run, naming the row and column."""
    query = contacts(schema, [(1, None, "p"), (2, "b@x.io", "p")])
    job = build_job(upsert(schema, endpoint, query))

    with pytest.raises(EncodingError, match=r"row 1: column 'email' is NULL.*IS NOT NULL"):
        run_job(job)
    assert endpoint.requests == []


def test_an_omitted_or_url_column_missing_from_the_query_sends_nothing(
    schema: Schema, endpoint: Endpoint, isolated_state: str
) -> None:
    """Columns named by target.omit or the URL must be in the query's result."""
    query = contacts(schema, [(1, "a@x.io", "p")])
    bad_omit = build_job(upsert(schema, endpoint, query, target={"omit": ["nope"]}))
    with pytest.raises(QueryError, match=r"target.omit names the column 'nope'"):
        run_job(bad_omit)
    bad_url = build_job(upsert(schema, endpoint, query, target={"url": endpoint.url + "/c/{mail}"}))
    with pytest.raises(QueryError, match=r"target.url names the column 'mail'.*columns: id, email"):
        run_job(bad_url)
    assert endpoint.requests == []


def test_delete_per_row_sends_no_body(
    schema: Schema, endpoint: Endpoint, isolated_state: str
) -> None:
    query = contacts(schema, [(1, "a@x.io", "p"), (2, "b@x.io", "p")])
    job = build_job(upsert(schema, endpoint, query, target={"method": "DELETE"}))

    run_job(job)

    assert sorted((r.method, r.path, r.body) for r in endpoint.requests) == [
        ("DELETE", "/contacts/a%40x.io", b""), ("DELETE", "/contacts/b%40x.io", b""),
    ]  # fmt: skip


def test_per_row_bodies_with_an_envelope_and_a_dry_run_preview(
    schema: Schema, endpoint: Endpoint, isolated_state: str
) -> None:
    """The envelope wraps the one object; a dry run shows each request's own URL."""
    query = contacts(schema, [(1, "a@x.io", "p")])
    job = build_job(
        upsert(schema, endpoint, query,
               target={"envelope": {"key": "contact", "fields": {"source": "app"}}})
    )  # fmt: skip

    preview = run_job(job, dry_run=True).preview
    assert [(p.url, json.loads(p.body)) for p in preview] == [
        (endpoint.url + "/contacts/a%40x.io",
         {"source": "app", "contact": {"email": "a@x.io", "plan": "p"}}),
    ]  # fmt: skip
    assert endpoint.requests == []
    run_job(job)
    assert endpoint.requests[0].json() == {
        "source": "app",
        "contact": {"email": "a@x.io", "plan": "p"},
    }


def test_per_row_on_the_generic_path(
    tmp_path: Path, endpoint: Endpoint, isolated_state: str
) -> None:
    """SQLite rows (no JSON built by the database): placeholders and omit work alike."""
    db = tmp_path / "s.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, secret TEXT)")
        conn.executemany("INSERT INTO users VALUES (?, ?, 'x')", [(1, "ann"), (2, "bob")])
    conn.close()
    job = build_job({
        "name": "users",
        "source": {"url": f"sqlite:///{db}", "query": "SELECT id, name, secret FROM users"},
        "target": {"url": endpoint.url + "/users/{id}?by={name}", "method": "PATCH",
                   "per_row": True, "omit": ["secret"]},
    })  # fmt: skip

    run_job(job)

    assert sorted((r.method, r.path, r.json()) for r in endpoint.requests) == [
        ("PATCH", "/users/1?by=ann", {"id": 1, "name": "ann"}),
        ("PATCH", "/users/2?by=bob", {"id": 2, "name": "bob"}),
    ]


def test_a_failed_request_stops_the_next_one_to_its_url(
    schema: Schema, endpoint: Endpoint, isolated_state: str
) -> None:
    """With on_reject: fail, a refused row stops the run before the next update of the
    same contact goes out (it would otherwise overtake the failed one)."""
    query = contacts(schema, [(1, "a@x.io", "v1"), (2, "a@x.io", "v2"), (3, "b@x.io", "v1")])
    endpoint.script("/contacts/a%40x.io", (400, {}, b"no"))
    job = build_job(upsert(schema, endpoint, query, concurrency=4, on_reject="fail"))

    with pytest.raises(RejectedError):
        run_job(job)

    assert [r.json()["plan"] for r in endpoint.requests if r.path == "/contacts/a%40x.io"] == ["v1"]
