"""target.row_id: a stable id per row version, spliced into each encoded row."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from loader import JobConfigError, build_job
from loader.errors import EncodingError, QueryError
from loader.job import Job
from loader.rows import RowIds, row_id
from loader.source import RowStream

AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _job(row_id: str | None = "insert_id", **target: Any) -> Job:
    return build_job(
        {
            "name": "events",
            "source": {"url": "sqlite://", "query": "SELECT 1",
                       "cursor": {"column": "created_at", "key": "id"}},
            "target": {"url": "https://api.example.com/e", "row_id": row_id, **target},
        },
        env={},
    )  # fmt: skip


def _stream(*columns: str) -> RowStream:
    return RowStream(columns=columns, chunks=iter(()), utc_datetimes=True,
                     cursor_indexes=(columns.index("created_at"), columns.index("id")))  # fmt: skip


def test_the_id_is_the_documented_digest() -> None:
    """The first 32 hex digits of SHA-256 over the job, then each value's type and text,
    NUL-separated; a time stamp is its microseconds since 1970 in UTC, whatever its zone."""
    micros = 1714564800 * 10**6
    expected = hashlib.sha256(f"events\0datetime\0{micros}\0int\x007".encode()).hexdigest()
    expected = expected[:32]
    assert row_id("events", (AT, 7)) == expected
    paris = AT.astimezone(timezone(timedelta(hours=2)))
    assert row_id("events", (paris, 7)) == expected
    assert len(expected) == 32


def test_ids_differ_by_job_version_and_key_and_type() -> None:
    """Another job, another cursor value (the row updated), another key, or the same
    digits as another type give another id."""
    ids = {
        row_id("events", (AT, 7)),
        row_id("other", (AT, 7)),
        row_id("events", (AT + timedelta(seconds=1), 7)),
        row_id("events", (AT, 8)),
        row_id("events", (AT, "7")),
        row_id("events", (AT, Decimal(7))),
    }
    assert len(ids) == 6


@pytest.mark.parametrize(
    "value",
    [1, Decimal("1.5"), 1.5, date(2024, 5, 1), uuid.UUID(int=1), "a", AT.replace(tzinfo=None)],
)
def test_every_cursor_type_has_an_id(value: Any) -> None:
    """Each type a cursor column can hold gives an id."""
    assert len(row_id("events", (value,))) == 32


def test_the_id_is_added_to_each_row_and_to_an_empty_one() -> None:
    """``,"FIELD":"<id>"`` before the closing brace; an empty object gets no comma."""
    ids = RowIds(_job(), _stream("name", "created_at", "id"))
    rows = ids([b'{"name":"a"}', b"{}"], [("a", AT, 1), ("b", AT, 2)], 0)

    assert [json.loads(row) for row in rows] == [
        {"name": "a", "insert_id": row_id("events", (AT, 1))},
        {"insert_id": row_id("events", (AT, 2))},
    ]


def test_a_dotted_field_goes_inside_the_last_columns_object() -> None:
    """``properties.$insert_id`` goes inside the body's last column, after its keys."""
    job = _job("properties.$insert_id", omit=["created_at", "id"])
    ids = RowIds(job, _stream("event", "properties", "created_at", "id"))
    fetched = [("e", None, AT, 1), ("e", None, AT, 2)]
    rows = ids([b'{"event":"e","properties":{"a":{"b":1}}}', b'{"event":"e","properties":{}}'],
               fetched, 0)  # fmt: skip

    assert [json.loads(row)["properties"] for row in rows] == [
        {"a": {"b": 1}, "$insert_id": row_id("events", (AT, 1))},
        {"$insert_id": row_id("events", (AT, 2))},
    ]


def test_a_dotted_field_needs_an_object_in_the_last_column() -> None:
    """A dotted row_id whose column is not last, or a row whose value there is not an
    object, is an error naming the column and the row."""
    with pytest.raises(QueryError, match="must be the last column"):
        RowIds(_job("properties.$insert_id"), _stream("event", "properties", "created_at", "id"))
    ids = RowIds(_job("properties.x", omit=["created_at", "id"]),
                 _stream("properties", "created_at", "id"))  # fmt: skip
    with pytest.raises(EncodingError, match=r"row 5: .* is not a JSON object"):
        ids([b'{"properties":"{}"}'], [("{}", AT, 1)], 4)


def test_a_field_that_is_a_column_is_refused() -> None:
    """A top-level row_id that the body already has is refused; omitted, it is fine."""
    with pytest.raises(QueryError, match="also a column"):
        RowIds(_job("id"), _stream("name", "created_at", "id"))
    RowIds(_job("id", omit=["id"]), _stream("name", "created_at", "id"))


def test_row_id_needs_a_cursor_and_a_plain_name() -> None:
    """Without source.cursor, or with an empty or three-part name, the job is refused."""
    spec = {"name": "e", "source": {"url": "sqlite://", "query": "SELECT 1"},
            "target": {"url": "https://api.example.com/e", "row_id": "insert_id"}}  # fmt: skip
    with pytest.raises(JobConfigError, match="source.cursor"):
        build_job(spec, env={})
    for bad in ("", "a.b.c", "a."):
        with pytest.raises(JobConfigError, match="row_id"):
            _job(bad)
