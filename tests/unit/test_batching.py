"""Encoded rows to bodies bounded by rows and bytes."""

from __future__ import annotations

import json

import pytest

from loader.batching import batches
from loader.encoding import framing
from loader.errors import EncodingError

ARRAY = framing("json")


def rows(n: int, width: int = 10) -> list[tuple[bytes, int]]:
    """Encoded rows, each with its id as the marker."""
    return [
        (json.dumps({"id": i, "p": "x" * width}, separators=(",", ":")).encode(), i)
        for i in range(1, n + 1)
    ]


def test_rows_are_split_by_count_in_order() -> None:
    """Each body holds at most max_rows rows; rows keep their order; bodies are JSON."""
    out = list(batches(rows(25), ARRAY, max_rows=10, max_bytes=10**6))

    assert [len(b.rows) for b in out] == [10, 10, 5]
    assert [b.first_row for b in out] == [1, 11, 21]
    assert [b.position for b in out] == [10, 20, 25]
    assert [b.seq for b in out] == [1, 2, 3]
    ids = [row["id"] for b in out for row in json.loads(b.body)]
    assert ids == list(range(1, 26))


def test_bodies_never_exceed_max_bytes() -> None:
    """A body is closed before the row that would push it past max_bytes."""
    data = rows(100, width=50)
    out = list(batches(data, ARRAY, max_rows=1000, max_bytes=500))

    assert all(len(b.body) <= 500 for b in out)
    assert sum(len(b.rows) for b in out) == 100
    for first, second in zip(out, out[1:], strict=False):
        assert len(first.body) + len(data[second.first_row - 1][0]) + 1 > 500


def test_a_row_exactly_at_the_limit_fits() -> None:
    """A single row whose body is exactly max_bytes is sent."""
    (row,) = rows(1)
    (out,) = batches([row], ARRAY, max_rows=10, max_bytes=len(row[0]) + 2)
    assert out.body == b"[" + row[0] + b"]"


def test_an_oversized_row_is_named() -> None:
    """A row that cannot fit alone fails with its number and first field."""
    data = rows(3)
    data[1] = (b'{"id":2,"p":"' + b"y" * 1000 + b'"}', 2)

    out = batches(data, ARRAY, max_rows=10, max_bytes=200)
    with pytest.raises(EncodingError, match=r'row 2 \(\{"id":2\.\.\.\) is 1,017 bytes'):
        list(out)


def test_ndjson_bodies_end_with_a_newline() -> None:
    """NDJSON bodies are one object per line, newline-terminated."""
    (out,) = batches([(b"{}", 1), (b"{}", 2)], framing("ndjson"), max_rows=5, max_bytes=100)
    assert out.body == b"{}\n{}\n"


def test_no_rows_no_batches() -> None:
    """An empty input yields nothing (and so nothing is sent)."""
    assert list(batches([], ARRAY, max_rows=5, max_bytes=100)) == []
