"""One encoding contract on both paths: each PostgreSQL type is sent as README's "Rows
to JSON" table says, byte for byte, whether the database writes the JSON (the fast
path) or loader encodes what psycopg read (the generic path), or fails the same way."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from loader import EncodingError, build_job, run_job
from loader.cli.options import exit_code
from tests.integration.conftest import Schema, make_job
from tests.support.server import Endpoint

README = Path(__file__).resolve().parents[2] / "README.md"


@dataclass(frozen=True)
class Fails:
    """The run fails (exit 4) with a message naming the column and holding ``fix``."""

    fix: str


# (SQL for the value, the JSON sent for it or how it fails). Every example of README's
# table is here (see test_the_readme_table_is_this_contract), and more edge values.
CONTRACT: list[tuple[str, str | Fails]] = [
    ("true", "true"),
    ("NULL::int", "null"),
    ("9007199254740993::bigint", "9007199254740993"),
    ("'-32768'::smallint", "-32768"),
    ("12::oid", "12"),
    ("1.10::numeric", "1.10"),
    ("123456789012345678901234567890.000000001", "123456789012345678901234567890.000000001"),
    ("'NaN'::numeric", "null"),
    ("'-Infinity'::numeric", "null"),
    ("2::float8", "2"),
    ("0.1::float4", "0.1"),
    ("1e-7::float8", "1e-07"),
    ("1e20::float8", "1e+20"),
    ("-0::float8", "-0"),
    ("'-Infinity'::float8", "null"),
    ("'NaN'::float4", "null"),
    ("12.5::money", Fails("col::numeric")),
    ("ARRAY[12.5::money]", Fails("col::numeric[]")),
    ("'ab'::char(4)", '"ab  "'),
    ("E'tab\\t \"q\" \\\\ \\u00e9'::text", '"tab\\t \\"q\\" \\\\ é"'),
    ("'x'::name", '"x"'),
    ("'a'::\"char\"", '"a"'),
    ("'happy'::mood", '"happy"'),
    ("5::positive", "5"),
    ("'2024-03-10'::due", '"2024-03-10"'),
    ("'infinity'::due", Fails("NULLIF(col, 'infinity')")),
    ("'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'::uuid", '"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"'),
    ("'\\xdeadbeef'::bytea", '"3q2+7w=="'),
    ("'{\"a\": 1.10}'::jsonb", '{"a": 1.10}'),
    ("'[1, 2.50]'::json", "[1, 2.50]"),
    ("'2024-03-10 16:59:58.5+09'::timestamptz", '"2024-03-10T07:59:58.5Z"'),
    ("'2024-03-10 07:59:58+00'::timestamptz", '"2024-03-10T07:59:58Z"'),
    ("'0001-01-01 00:00:00+00'::timestamptz", '"0001-01-01T00:00:00Z"'),
    ("'9999-12-31 23:59:59.999999+00'::timestamptz", '"9999-12-31T23:59:59.999999Z"'),
    ("'2024-03-10 07:59:58.913402'::timestamp", '"2024-03-10T07:59:58.913402"'),
    ("'2024-03-10 07:59:58.10'::timestamp", '"2024-03-10T07:59:58.1"'),
    ("'2024-03-10'::date", '"2024-03-10"'),
    ("'0044-03-15'::date", '"0044-03-15"'),
    ("'07:59:58.5'::time", '"07:59:58.5"'),
    ("'24:00:00'::time", '"24:00:00"'),
    ("'07:59:58+05:30'::timetz", '"07:59:58+05:30"'),
    ("'07:59:58.250-08'::timetz", '"07:59:58.25-08:00"'),
    ("'infinity'::timestamptz", Fails("NULLIF(col, 'infinity')")),
    ("'-infinity'::timestamp", Fails("NULLIF(col, '-infinity')")),
    ("'infinity'::date", Fails("NULLIF(col, 'infinity')")),
    ("'0044-03-15 12:00:00+00 BC'::timestamptz", Fails("col::text")),
    ("'0044-03-15 12:00:00 BC'::timestamp", Fails("col::text")),
    ("'0044-03-15 BC'::date", Fails("col::text")),
    ("'10000-01-01'::date", Fails("col::text")),
    ("'10000-01-01 00:00:00+00'::timestamptz", Fails("col::text")),
    ("ARRAY['infinity'::date]", Fails("col::text")),
    ("ARRAY['2024-03-10 00:00:00+00', '-infinity']::timestamptz[]", Fails("col::text")),
    ("'1 year 2 mons 3 days 04:05:06.5'::interval", '"P1Y2M3DT4H5M6.5S"'),
    ("'-1 year -2 days +3 hours'::interval", '"P-1Y-2DT3H"'),
    ("'178000000 years'::interval", '"P178000000Y"'),
    ("'1 mon'::interval", '"P1M"'),
    ("'-1 second'::interval", '"PT-1S"'),
    ("'0'::interval", '"PT0S"'),
    ("'10.0.0.1/8'::inet", '"10.0.0.1/8"'),
    ("'10.0.0.1'::inet", '"10.0.0.1"'),
    ("'2001:db8::ffff:1.2.3.4'::inet", '"2001:db8::ffff:102:304"'),
    ("'10.0.0.0/8'::cidr", '"10.0.0.0/8"'),
    ("'08:00:2b:01:02:03'::macaddr", '"08:00:2b:01:02:03"'),
    ("'08:00:2b:01:02:03:04:05'::macaddr8", '"08:00:2b:01:02:03:04:05"'),
    ("B'101'::varbit", '"101"'),
    ("B'0011'::bit(4)", '"0011"'),
    ("'<a>x</a>'::xml", '"<a>x</a>"'),
    ("'a fat cat'::tsvector", "\"'a' 'cat' 'fat'\""),
    ("'fat & cat'::tsquery", "\"'fat' & 'cat'\""),
    ("'0/16B3748'::pg_lsn", '"0/16B3748"'),
    ("ARRAY[[1.5, 'NaN'], [NULL, 4]]::numeric[]", "[[1.5,null],[null,4]]"),
    ("ARRAY['Infinity', 2, 0.5]::float8[]", "[null,2,0.5]"),
    ("ARRAY[1, NULL, 3]::int[]", "[1,null,3]"),
    ("'{}'::int[]", "[]"),
    ("ARRAY['2024-03-10 16:59:58.5+09']::timestamptz[]", '["2024-03-10T07:59:58.5Z"]'),
    ("ARRAY['1 mon']::interval[]", '["P1M"]'),
    ("ARRAY['\\xde']::bytea[]", '["3g=="]'),
    ("ARRAY['{\"k\": 1.0}']::jsonb[]", '[{"k": 1.0}]'),
    ("ARRAY['10.0.0.1/32']::inet[]", '["10.0.0.1"]'),
    ("ARRAY['2024-03-10']::date[]", '["2024-03-10"]'),
    ("ARRAY['happy'::mood]", Fails("col::text[]")),
    ("ARRAY[5::positive]", Fails("col::text[]")),
    ("ROW(1, 'x')::pair", Fails("to_jsonb(col)")),
    ("ROW(1, 'x')", Fails("to_jsonb(col)")),
    ("ARRAY[ROW(1, 'x')::pair]", Fails("to_jsonb(col)")),
    ("int4range(1, 10)", Fails("col::text")),
    ("tstzrange('2024-01-01', '2024-02-01')", Fails("lower(col)")),
    ("'{[1,3]}'::int4multirange", Fails("col::text")),
    ("point(1, 2)", Fails("col::text")),
    ("'((0,0),(1,1))'::box", Fails("col::text")),
    ("ARRAY[point(1, 2)]", Fails("col::text[]")),
]


def _run(schema: Schema, endpoint: Endpoint, sql: str, *, fast: bool) -> bytes | EncodingError:
    """The body the endpoint received for ``SELECT sql AS col``, or the run's error."""
    path = "/fast" if fast else "/generic"
    job = build_job(
        make_job(schema, endpoint.url + path, f"SELECT {sql} AS col",
                 source={"url": schema.scoped_url})
    )  # fmt: skip
    try:
        run_job(job, database_json=fast)
    except EncodingError as exc:
        return exc
    (request,) = [r for r in endpoint.requests if r.path == path]
    return request.body


@pytest.fixture
def typed_schema(schema: Schema) -> Schema:
    """The test's schema with the enum, composite and domains the examples use."""
    schema.execute(
        "CREATE TYPE mood AS ENUM ('happy', 'sad'); CREATE TYPE pair AS (a int, b text); "
        "CREATE DOMAIN positive AS int CHECK (VALUE > 0); CREATE DOMAIN due AS date"
    )
    return schema


@pytest.mark.parametrize(("sql", "expected"), CONTRACT, ids=[sql for sql, _ in CONTRACT])
def test_each_type_is_sent_as_the_contract_says_on_both_paths(
    typed_schema: Schema, endpoint: Endpoint, sql: str, expected: str | Fails
) -> None:
    """The fast path and the generic path send the contract's bytes for the value, or
    both fail with exit code 4, nothing sent, the same message naming the column and
    the fix."""
    fast = _run(typed_schema, endpoint, sql, fast=True)
    generic = _run(typed_schema, endpoint, sql, fast=False)

    if isinstance(expected, Fails):
        assert isinstance(fast, EncodingError), fast
        assert isinstance(generic, EncodingError), generic
        assert str(fast) == str(generic)
        assert "column 'col'" in str(fast) and expected.fix in str(fast), str(fast)
        assert exit_code(fast) == exit_code(generic) == 4
        assert endpoint.requests == []
    else:
        body = b'[{"col":' + expected.encode() + b"}]"
        assert (fast, generic) == (body, body)


def _readme_examples() -> list[tuple[str, str | Fails]]:
    """README's type table as ``(example, JSON or Fails(fix))``: the JSON is the cell's
    first code span; a cell that starts with "fails" names the fix in its last one."""
    text = README.read_text()
    section = text[text.index("## Rows to JSON") : text.index("MySQL and MariaDB stream")]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        if len(cells) != 3 or not cells[1].startswith("`"):
            continue
        example = cells[1].strip("`")
        spans = re.findall(r"`([^`]+)`", cells[2])
        rows.append((example, Fails(spans[-1]) if cells[2].startswith("fails") else spans[0]))
    return rows


def test_the_readme_table_is_this_contract() -> None:
    """Every example in README's type table is tested here with the JSON it shows."""
    examples = _readme_examples()
    assert len(examples) >= 30
    contract = dict(CONTRACT) | {sql.replace("{ns}.", ""): json for sql, json in EXTENSIONS}
    for example, shown in examples:
        assert example in contract, f"README example {example!r} is not tested"
        assert contract[example] == shown, example


def test_a_refused_value_mid_stream_fails_both_paths_alike(
    schema: Schema, endpoint: Endpoint
) -> None:
    """A refused date among many rows fails the run the same way on both paths, and
    no row after it is sent."""
    query = (
        "SELECT g AS id, CASE WHEN g = 7000 THEN 'infinity' ELSE '2024-01-01' END::date "
        "AS due FROM generate_series(1, 10000) AS g ORDER BY g"
    )
    errors = []
    for fast in (True, False):
        job = build_job(make_job(schema, endpoint.url, query))
        with pytest.raises(EncodingError) as caught:
            run_job(job, database_json=fast)
        errors.append(str(caught.value))
    assert errors[0] == errors[1]
    assert "column 'due' holds infinity" in errors[0]
    assert all(row["id"] < 7000 for row in endpoint.rows())


def test_check_reports_a_refused_type_before_any_run(schema: Schema, endpoint: Endpoint) -> None:
    """`loader check` names a column whose type is refused, and its cast."""
    from loader.check import check_job

    job = build_job(make_job(schema, endpoint.url, "SELECT 1 AS id, 12.5::money AS price"))
    source = next(check for check in check_job(job) if check.name == "source")

    assert not source.ok
    assert "column 'price' is money" in source.detail and "price::numeric" in source.detail


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "generic-path"])
def test_a_refused_type_left_out_by_omit_does_not_fail_the_run(
    schema: Schema, endpoint: Endpoint, fast: bool
) -> None:
    """A money or composite column the job never sends (``target.omit``) is not refused:
    the rows go out without it."""
    query = "SELECT 1 AS id, 12.5::money AS price, ROW(1, 'a') AS pair"
    job = build_job(make_job(schema, endpoint.url, query, target={"omit": ["price", "pair"]}))

    result = run_job(job, database_json=fast)

    assert result.status == "succeeded" and endpoint.rows() == [{"id": 1}]


# Types from extensions, installed for the test; {ns} is the schema that holds them.
EXTENSIONS: list[tuple[str, str | Fails]] = [
    ("'Ab'::{ns}.citext", '"Ab"'),
    ("'a=>1, b=>NULL'::{ns}.hstore", '{"a":"1","b":null}'),
    ("ARRAY['Ab'::{ns}.citext]", Fails("col::text[]")),
]


@pytest.mark.parametrize(("sql", "expected"), EXTENSIONS)
def test_extension_types_are_sent_as_their_text(
    schema: Schema, endpoint: Endpoint, sql: str, expected: str | Fails
) -> None:
    """A type from an extension is its text on both paths (citext), hstore an object of
    strings; an array of one fails with the cast, as the driver reads it as one text."""
    with psycopg.connect(schema.url, autocommit=True) as conn:
        for name in ("citext", "hstore"):
            conn.execute(f"CREATE EXTENSION IF NOT EXISTS {name} SCHEMA {schema.name}")
        # Installed in another schema already: use it there.
        (ns,) = conn.execute(
            "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'citext'"
        ).fetchone() or ("",)
    query = sql.format(ns=ns)
    fast = _run(schema, endpoint, query, fast=True)
    generic = _run(schema, endpoint, query, fast=False)

    if isinstance(expected, Fails):
        assert isinstance(fast, EncodingError) and str(fast) == str(generic)
        assert expected.fix in str(fast)
    else:
        body = b'[{"col":' + expected.encode() + b"}]"
        assert (fast, generic) == (body, body)
