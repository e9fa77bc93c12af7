"""Every PostgreSQL type arrives with its exact value (see loader.encoding)."""

from __future__ import annotations

import base64
import re
import uuid
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from hashlib import md5
from typing import Any

import pytest

from loader import SourceError, build_job, run_job
from loader.encoding import iso_duration
from tests.integration.conftest import Schema, make_job
from tests.support.server import Endpoint

ROWS = 10_000
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$")
NAIVE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?$")

EVERY_TYPE = f"""
CREATE TABLE every_type AS
SELECT g AS id,
       g::bigint * 1000000000007 AS big,
       g::int AS small,
       (g::numeric * 1.0000000001 + 0.1)::numeric(30, 10) AS amount,
       g::float8 / 3 AS ratio,
       'user ' || g || ' "quoted" \\ ✓' || E'\\n' AS label,
       g % 2 = 0 AS flag,
       timestamptz '2024-03-10 07:59:58.913402+00' + g * interval '1.000001 second' AS at_tz,
       timestamp '2024-01-01 00:00:00' + g * interval '1 minute' AS at_local,
       date '2024-01-01' + g AS day,
       time '00:00:00' + g * interval '1 second' AS clock,
       md5(g::text)::uuid AS uid,
       jsonb_build_object('n', g, 'price', 1.10, 'big', 12345678901234567890,
                          'tags', jsonb_build_array('a', null)) AS doc,
       ('{{"k": ' || g || '}}')::json AS raw,
       ARRAY[g, NULL, g + 1]::int[] AS ints,
       ARRAY[(g::numeric / 4)::numeric(10, 2), NULL] AS amounts,
       decode(lpad(to_hex(g), 8, '0'), 'hex') AS blob,
       g * interval '1 second' AS span,
       CASE WHEN g % 10 = 0 THEN NULL ELSE g END AS maybe
FROM generate_series(1, {ROWS}) AS g
"""


def test_every_type_arrives_exactly_once_with_exact_values(
    schema: Schema, endpoint: Endpoint
) -> None:
    """10,000 rows of every supported type arrive once each, with their exact values."""
    schema.execute(EVERY_TYPE)
    job = build_job(
        make_job(schema, endpoint.url, f"SELECT * FROM {schema.table('every_type')} ORDER BY id")
    )

    result = run_job(job)

    assert result.status == "succeeded"
    assert (result.rows_read, result.rows_posted) == (ROWS, ROWS)
    rows = endpoint.rows()
    assert sorted(row["id"] for row in rows) == list(range(1, ROWS + 1))
    start_tz = datetime(2024, 3, 10, 7, 59, 58, 913402, tzinfo=UTC)
    for row in rows:
        g = row["id"]
        assert list(row) == [
            "id", "big", "small", "amount", "ratio", "label", "flag", "at_tz", "at_local",
            "day", "clock", "uid", "doc", "raw", "ints", "amounts", "blob", "span", "maybe",
        ]  # fmt: skip
        assert row["big"] == g * 1_000_000_000_007
        assert row["small"] == g
        expected_amount = (Decimal(g) * Decimal("1.0000000001") + Decimal("0.1")).quantize(
            Decimal("1E-10")
        )
        assert str(row["amount"]) == str(expected_amount)
        assert float(row["ratio"]) == g / 3
        assert row["label"] == f'user {g} "quoted" \\ ✓\n'
        assert row["flag"] is (g % 2 == 0)
        assert RFC3339_UTC.match(row["at_tz"]), row["at_tz"]
        expected_tz = start_tz + g * timedelta(seconds=1, microseconds=1)
        assert datetime.fromisoformat(row["at_tz"]) == expected_tz
        assert NAIVE.match(row["at_local"]), row["at_local"]
        assert datetime.fromisoformat(row["at_local"]) == datetime(2024, 1, 1) + timedelta(
            minutes=g
        )
        assert row["day"] == (date(2024, 1, 1) + timedelta(days=g)).isoformat()
        assert (
            time.fromisoformat(row["clock"]) == (datetime(2024, 1, 1) + timedelta(seconds=g)).time()
        )
        assert row["uid"] == str(uuid.UUID(md5(str(g).encode()).hexdigest()))
        assert row["doc"] == {
            "n": g, "price": Decimal("1.10"), "big": 12345678901234567890, "tags": ["a", None],
        }  # fmt: skip
        assert row["raw"] == {"k": g}
        assert row["ints"] == [g, None, g + 1]
        assert [str(a) if a is not None else None for a in row["amounts"]] == [
            str((Decimal(g) / 4).quantize(Decimal("0.01"))),
            None,
        ]
        assert base64.b64decode(row["blob"]) == bytes.fromhex(f"{g:08x}")
        assert row["span"] == iso_duration(timedelta(seconds=g))
        assert row["maybe"] == (None if g % 10 == 0 else g)


def test_exact_digits_are_kept_in_the_body_text(schema: Schema, endpoint: Endpoint) -> None:
    """Numerics keep trailing zeros and every digit; jsonb keeps its numbers as written."""
    query = (
        "SELECT 1.10::numeric AS a, 123456789012345678901234567890.000000001::numeric AS b, "
        "9007199254740993::bigint AS c, '{\"p\": 0.10}'::jsonb AS d"
    )
    run_job(build_job(make_job(schema, endpoint.url, query)))

    (request,) = endpoint.requests
    assert request.body == (
        b'[{"a":1.10,"b":123456789012345678901234567890.000000001,'
        b'"c":9007199254740993,"d":{"p": 0.10}}]'
    )


def test_non_finite_numbers_become_null(schema: Schema, endpoint: Endpoint) -> None:
    """NaN and +-Infinity (numeric and float) are sent as null, never as invalid JSON."""
    query = (
        "SELECT 'NaN'::numeric AS a, 'Infinity'::float8 AS b, '-Infinity'::float8 AS c, "
        "'NaN'::float4 AS d"
    )
    run_job(build_job(make_job(schema, endpoint.url, query)))

    assert endpoint.rows() == [{"a": None, "b": None, "c": None, "d": None}]


def test_decimals_as_strings(schema: Schema, endpoint: Endpoint) -> None:
    """target.decimals: string sends numerics as JSON strings with their exact digits."""
    job = build_job(
        make_job(schema, endpoint.url, "SELECT 1.10::numeric AS a", target={"decimals": "string"})
    )
    run_job(job)

    assert endpoint.requests[0].body == b'[{"a":"1.10"}]'


def test_timestamps_are_utc_whatever_the_session_time_zone(
    schema: Schema, endpoint: Endpoint, database_url: str
) -> None:
    """timestamptz is sent in UTC even when the database's default time zone is not UTC."""
    url = (
        database_url + ("&" if "?" in database_url else "?") + "options=-c%20timezone%3DAsia/Tokyo"
    )
    job = build_job(
        make_job(schema, endpoint.url, "SELECT timestamptz '2024-03-10 16:59:58+09' AS t",
                 source={"url": url})
    )  # fmt: skip
    run_job(job)

    assert endpoint.rows() == [{"t": "2024-03-10T07:59:58Z"}]


@pytest.mark.parametrize("decimals", ["number", "string"])
def test_the_fast_path_and_the_generic_path_agree(
    schema: Schema, endpoint: Endpoint, decimals: str
) -> None:
    """PostgreSQL's own JSON (the fast path) equals, byte for byte, loader's encoder
    (the generic path, forced with ``database_json=False``), for every type, a row of
    NULLs and edge values."""
    from loader.redact import Redactor
    from loader.source import open_stream

    schema.execute(EVERY_TYPE.replace(f"generate_series(1, {ROWS})", "generate_series(1, 500)"))
    table = schema.table("every_type")
    schema.execute(f"INSERT INTO {table} (id) VALUES (0)")
    schema.execute(
        f"INSERT INTO {table} (id, amount, ratio, at_tz, at_local, day, clock, amounts) VALUES "
        "(-1, 'NaN', '-Infinity', '0001-01-01 00:00:00.5+00', '9999-12-31 23:59:59.999999', "
        "'0001-01-01', '24:00:00', '{NaN,Infinity,1.50}')"
    )
    job = make_job(schema, endpoint.url, f"SELECT * FROM {table} ORDER BY id",
                   target={"decimals": decimals})  # fmt: skip
    with open_stream(build_job(job).source, Redactor()) as stream:
        assert stream.json_rows
    with open_stream(build_job(job).source, Redactor(), fast=False) as stream:
        assert not stream.json_rows

    run_job(build_job({**job, "target": {**job["target"], "url": endpoint.url + "/fast"}}))
    run_job(
        build_job({**job, "target": {**job["target"], "url": endpoint.url + "/generic"}}),
        database_json=False,
    )

    fast = b"".join(r.body for r in endpoint.requests if r.path == "/fast")
    generic = b"".join(r.body for r in endpoint.requests if r.path == "/generic")
    assert fast == generic
    assert len(endpoint.rows("/fast")) == 502


@pytest.mark.parametrize("decimals", ["number", "string"])
def test_the_concatenated_json_is_row_to_json_byte_for_byte(
    schema: Schema, endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch, decimals: str
) -> None:
    """The fast path builds each object by concatenating each value's JSON; the bodies
    equal, byte for byte, those of row_to_json (which it takes for a name JSON would have
    to escape), for every type, a row of NULLs and the edge values."""
    import loader.pgjson

    schema.execute(EVERY_TYPE.replace(f"generate_series(1, {ROWS})", "generate_series(1, 300)"))
    table = schema.table("every_type")
    schema.execute(f"INSERT INTO {table} (id) VALUES (0)")
    schema.execute(
        f"INSERT INTO {table} (id, amount, ratio, label, at_tz, doc, ints) VALUES "
        """(-1, 'NaN', '-Infinity', E'tab\\t ctrl \\x01 é "q" \\\\ /', '0001-01-01', """
        "'{}', '{}')"
    )
    built: list[str | None] = []
    concatenate = loader.pgjson._json_object

    def recorded(fields: Any) -> str | None:
        built.append(concatenate(fields))
        return built[-1]

    monkeypatch.setattr(loader.pgjson, "_json_object", recorded)
    query = f"SELECT * FROM {table} ORDER BY id"
    run_job(build_job(make_job(schema, endpoint.url + "/a", query, target={"decimals": decimals})))
    monkeypatch.setattr(loader.pgjson, "_json_object", lambda fields: None)
    run_job(build_job(make_job(schema, endpoint.url + "/b", query, target={"decimals": decimals})))

    assert built and all(sql is not None and "row_to_json" not in sql for sql in built)
    concatenated = b"".join(r.body for r in endpoint.requests if r.path == "/a")
    by_record = b"".join(r.body for r in endpoint.requests if r.path == "/b")
    assert concatenated == by_record
    assert len(endpoint.rows("/a")) == 302


def test_names_json_would_escape_take_row_to_json(schema: Schema, endpoint: Endpoint) -> None:
    """Column names with a quote, a backslash or a letter outside ASCII arrive as they are."""
    query = 'SELECT 1 AS "say ""hi""", 2 AS "back\\slash", 3 AS "ünï"'
    run_job(build_job(make_job(schema, endpoint.url, query)))

    (request,) = endpoint.requests
    assert request.body == b'[{"say \\"hi\\"":1,"back\\\\slash":2,"\xc3\xbcn\xc3\xaf":3}]'


def test_fast_path_edge_values(schema: Schema, endpoint: Endpoint) -> None:
    """Long bytea stays on one base64 line; json with line breaks stays on one NDJSON line;
    non-finite numbers are null."""
    query = (
        "SELECT decode(repeat('ab', 200), 'hex') AS blob, "
        "E'{\\n  \"a\": [1,\\n 2]\\n}'::json AS doc, "
        "'NaN'::numeric AS n, '-Infinity'::float8 AS f"
    )
    job = build_job(make_job(schema, endpoint.url, query, target={"format": "ndjson"}))
    run_job(job)

    (request,) = endpoint.requests
    assert request.body.count(b"\n") == 1
    (row,) = request.rows()
    assert base64.b64decode(row["blob"]) == bytes.fromhex("ab" * 200)
    assert row["doc"] == {"a": [1, 2]}
    assert (row["n"], row["f"]) == (None, None)


def test_fast_path_statement_timeout(schema: Schema, endpoint: Endpoint) -> None:
    """On the fast path, waiting longer than statement_timeout for rows cancels the query."""
    job = build_job(
        make_job(schema, endpoint.url, "SELECT 1 AS x FROM pg_sleep(3)",
                 source={"statement_timeout": "300ms"})
    )  # fmt: skip
    import time

    started = time.monotonic()
    with pytest.raises(SourceError, match="statement timeout"):
        run_job(job)
    assert time.monotonic() - started < 2.5
    assert endpoint.requests == []
