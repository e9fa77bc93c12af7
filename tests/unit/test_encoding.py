"""Rows to JSON: exact numbers, UTC times, and clear errors for what cannot be sent."""

from __future__ import annotations

import ipaddress
import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal

import pytest

from loader.encoding import PgFloat, RowEncoder, Unsendable, UrlFiller, framing, iso_duration
from loader.errors import EncodingError


def encode(value: object, **options: object) -> bytes:
    return RowEncoder(["v"], **options).encode([value])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "json"),
    [
        (2**53 + 1, b"9007199254740993"),
        (2**70, b"1180591620717411303424"),
        (-(2**64), b"-18446744073709551616"),
        (Decimal("1.10"), b"1.10"),
        (Decimal("-0.000000000000000000001"), b"-1E-21"),
        (Decimal("123456789012345678901234567890.5"), b"123456789012345678901234567890.5"),
        (Decimal("NaN"), b"null"),
        (Decimal("-Infinity"), b"null"),
        (float("nan"), b"null"),
        (float("inf"), b"null"),
        (0.1, b"0.1"),
        (True, b"true"),
        (None, b"null"),
        ('é"\n', b'"\xc3\xa9\\"\\n"'),
        (date(2024, 3, 10), b'"2024-03-10"'),
        (time(7, 59, 58, 913402), b'"07:59:58.913402"'),
        (datetime(2024, 3, 10, 7, 59, 58, 913402), b'"2024-03-10T07:59:58.913402"'),
        (datetime(2024, 3, 10, 7, 59, 58, 913402, tzinfo=UTC), b'"2024-03-10T07:59:58.913402Z"'),
        (
            datetime(2024, 3, 10, 8, 59, 58, tzinfo=timezone(timedelta(hours=1))),
            b'"2024-03-10T07:59:58Z"',
        ),
        (
            uuid.UUID("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"),
            b'"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"',
        ),
        (b"\x00\xff", b'"AP8="'),
        (memoryview(b"ab"), b'"YWI="'),
        (timedelta(days=1, hours=2, seconds=4, microseconds=500000), b'"P1DT2H4.5S"'),
        ([1, None, [Decimal("2.50")]], b"[1,null,[2.50]]"),
        ({"a": Decimal("1.0")}, b'{"a":1.0}'),
        (ipaddress.ip_address("10.0.0.1"), b'"10.0.0.1"'),
        (time(1, 2, 3, tzinfo=UTC), b'"01:02:03+00:00"'),
        # Fractions as PostgreSQL writes them: no trailing zeros.
        (time(7, 59, 58, 500000), b'"07:59:58.5"'),
        (datetime(2024, 3, 10, 7, 59, 58, 120000), b'"2024-03-10T07:59:58.12"'),
        (datetime(2024, 3, 10, 7, 59, 58, 500000, tzinfo=UTC), b'"2024-03-10T07:59:58.5Z"'),
        (
            datetime(2024, 3, 10, 8, 59, 58, 100, tzinfo=timezone(timedelta(hours=1))),
            b'"2024-03-10T07:59:58.0001Z"',
        ),
        (time(7, 59, 58, 250000, tzinfo=timezone(timedelta(hours=-8))), b'"07:59:58.25-08:00"'),
        (PgFloat("2"), b"2"),
        (PgFloat("1e-07"), b"1e-07"),
        (PgFloat("NaN"), b"null"),
        ([PgFloat("-Infinity"), PgFloat("0.5")], b"[null,0.5]"),
        (Unsendable("24:00:00"), b'"24:00:00"'),
    ],
)
def test_exact_type_mapping(value: object, json: bytes) -> None:
    """Each value becomes the documented JSON, with every digit kept."""
    assert encode(value) == b'{"v":' + json + b"}"


@pytest.mark.parametrize(
    ("value", "fix"),
    [
        (Unsendable("infinity"), "NULLIF(v, 'infinity')"),
        (Unsendable("0044-03-15 BC"), "v::text"),
        ([date(2024, 1, 1), Unsendable("-infinity")], "array_replace(v, '-infinity', NULL)"),
    ],
)
def test_dates_json_cannot_carry_fail_naming_the_column_and_the_fix(
    value: object, fix: str
) -> None:
    """Infinity and years outside 1 to 9999 (read as Unsendable) are an EncodingError
    naming the column, the value and the fix."""
    with pytest.raises(EncodingError, match="column 'v' holds") as caught:
        encode(value)
    assert fix in str(caught.value)


def test_decimals_as_strings() -> None:
    """decimals=string sends numerics as strings; non-finite ones still become null."""
    assert encode(Decimal("1.10"), decimals="string") == b'{"v":"1.10"}'
    assert encode(Decimal("NaN"), decimals="string") == b'{"v":null}'


def test_utc_promise_keeps_fast_path_output_identical() -> None:
    """With utc_datetimes the encoder relies on the source's UTC and gives the same text."""
    value = datetime(2024, 3, 10, 7, 59, 58, tzinfo=UTC)
    assert encode(value, utc_datetimes=True) == encode(value) == b'{"v":"2024-03-10T07:59:58Z"}'


def test_columns_keep_query_order() -> None:
    """Keys come in the order of the query's columns."""
    assert RowEncoder(["z", "a", "m"]).encode([1, 2, 3]) == b'{"z":1,"a":2,"m":3}'


def test_an_unsupported_type_names_the_column() -> None:
    """A value of an unknown type fails with the column name and the cast to use."""
    with pytest.raises(EncodingError, match=r"column 'shape': cannot encode a value of type"):
        RowEncoder(["id", "shape"]).encode([1, object()])


def test_invalid_text_names_the_column() -> None:
    """A string that is not valid Unicode (lone surrogate) names its column."""
    with pytest.raises(EncodingError, match="column 'name'"):
        RowEncoder(["name"]).encode(["\ud800"])


def test_iso_durations() -> None:
    """Intervals use ISO 8601 durations, negative ones with a leading minus."""
    assert iso_duration(timedelta(0)) == "PT0S"
    assert iso_duration(timedelta(days=3)) == "P3D"
    assert iso_duration(timedelta(minutes=90)) == "PT1H30M"
    assert iso_duration(-timedelta(seconds=1, microseconds=250000)) == "-PT1.25S"


def test_framings() -> None:
    """Array, NDJSON and envelope framings, with content types."""
    array = framing("json")
    assert (array.prefix, array.separator, array.suffix) == (b"[", b",", b"]")
    assert framing("ndjson").content_type == "application/x-ndjson"
    wrapped = framing("json", "events", {"api_key": "k", "n": Decimal("1.5")})
    assert wrapped.prefix == b'{"api_key":"k","n":1.5,"events":['
    assert framing("json", "users").prefix == b'{"users":['


def test_json_text_with_line_breaks_stays_on_one_line() -> None:
    """json columns keep their text, minus raw line breaks (NDJSON needs one line)."""
    from loader.encoding import json_fragment

    row = RowEncoder(["j"]).encode([json_fragment(b'{\n  "a": 1\r\n}')])
    assert row == b'{"j":{   "a": 1  }}'


def test_envelope_fields_may_hold_big_integers() -> None:
    """Static envelope fields past 64 bits encode with every digit."""
    assert framing("json", "e", {"n": 2**70}).prefix == b'{"n":1180591620717411303424,"e":['


def test_url_filler_encodes_each_value_and_names_bad_ones() -> None:
    """Values are URL-encoded whole (a slash cannot change the path); NULL and types that
    have no URL form are errors naming the row and column."""
    filler = UrlFiller("https://x.io/c/{email}/{n}?d={day}", ["email", "n", "day"])
    assert filler.fill(["a/b+c@x.io", Decimal("1.50"), date(2024, 2, 29)], 1) == (
        "https://x.io/c/a%2Fb%2Bc%40x.io/1.50?d=2024-02-29"
    )
    assert filler.fill(["é", True, uuid.UUID(int=1)], 1).startswith("https://x.io/c/%C3%A9/true?")
    with pytest.raises(EncodingError, match=r"row 7: column 'n' is NULL"):
        filler.fill(["a", None, 1], 7)
    with pytest.raises(EncodingError, match=r"row 2: column 'email' is a bytes"):
        filler.fill([b"x", 1, 1], 2)


def test_single_row_framing() -> None:
    """Per-row bodies are the object itself, or inside the envelope."""
    assert framing("json", single=True).body([b'{"a":1}']) == b'{"a":1}'
    wrapped = framing("json", "contact", {"v": 2}, single=True)
    assert wrapped.body([b'{"a":1}']) == b'{"v":2,"contact":{"a":1}}'
