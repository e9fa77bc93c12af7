"""Encoded rows to bodies bounded by rows and bytes."""

from __future__ import annotations

import json

import pytest

from loader.batching import Chunk, batches
from loader.encoding import framing
from loader.errors import EncodingError

ARRAY = framing("json")


def rows(n: int, width: int = 10) -> list[bytes]:
    """Encoded rows with ids 1..n."""
    return [
        json.dumps({"id": i, "p": "x" * width}, separators=(",", ":")).encode()
        for i in range(1, n + 1)
    ]


def chunked(data: list[bytes], size: int = 7) -> list[Chunk]:
    """``data`` in chunks of ``size``, each row's marker being its id (1-based index)."""
    return [Chunk(data[i : i + size], lambda j, i=i: i + j + 1) for i in range(0, len(data), size)]


def test_rows_are_split_by_count_in_order() -> None:
    """Each body holds at most max_rows rows; rows keep their order; bodies are JSON."""
    out = list(batches(chunked(rows(25)), ARRAY, max_rows=10, max_bytes=10**6))

    assert [len(b.rows) for b in out] == [10, 10, 5]
    assert [b.first_row for b in out] == [1, 11, 21]
    assert [b.position for b in out] == [10, 20, 25]
    assert [b.seq for b in out] == [1, 2, 3]
    ids = [row["id"] for b in out for row in json.loads(b.body)]
    assert ids == list(range(1, 26))


def test_bodies_never_exceed_max_bytes() -> None:
    """A body is closed before the row that would push it past max_bytes."""
    data = rows(100, width=50)
    out = list(batches(chunked(data, 13), ARRAY, max_rows=1000, max_bytes=500))

    assert all(len(b.body) <= 500 for b in out)
    assert sum(len(b.rows) for b in out) == 100
    for first, second in zip(out, out[1:], strict=False):
        assert len(first.body) + len(data[second.first_row - 1]) + 1 > 500
    assert [row["id"] for b in out for row in json.loads(b.body)] == list(range(1, 101))
    assert [b.position for b in out] == [b.first_row + len(b.rows) - 1 for b in out]


def test_a_row_exactly_at_the_limit_fits() -> None:
    """A single row whose body is exactly max_bytes is sent."""
    (row,) = rows(1)
    (out,) = batches([Chunk([row])], ARRAY, max_rows=10, max_bytes=len(row) + 2)
    assert out.body == b"[" + row + b"]"


def test_an_oversized_row_is_named() -> None:
    """A row that cannot fit alone fails with its number and first field."""
    data = rows(3)
    data[1] = b'{"id":2,"p":"' + b"y" * 1000 + b'"}'

    out = batches([Chunk(data)], ARRAY, max_rows=10, max_bytes=200)
    with pytest.raises(EncodingError, match=r'row 2 \(\{"id":2\.\.\.\) is 1,017 bytes'):
        list(out)


def test_ndjson_bodies_end_with_a_newline() -> None:
    """NDJSON bodies are one object per line, newline-terminated."""
    (out,) = batches([Chunk([b"{}", b"{}"])], framing("ndjson"), max_rows=5, max_bytes=100)
    assert out.body == b"{}\n{}\n"


def test_no_rows_no_batches() -> None:
    """An empty input yields nothing (and so nothing is sent)."""
    assert list(batches([], ARRAY, max_rows=5, max_bytes=100)) == []


@pytest.mark.parametrize("fmt", ["json", "ndjson"])
def test_random_cuts_are_exact(fmt: str) -> None:
    """Across random row sizes, limits and chunkings: bodies stay within both limits,
    are filled as far as the next row allows, and keep every row once, in order."""
    import random

    rng = random.Random(7)
    frame = framing(fmt)
    for _ in range(300):
        data = [b"x" * rng.randint(1, 40) for _ in range(rng.randint(0, 60))]
        max_rows, max_bytes = rng.randint(1, 12), rng.randint(45, 200)
        out = list(batches(chunked(data, rng.randint(1, 9)), frame,
                           max_rows=max_rows, max_bytes=max_bytes))  # fmt: skip
        assert [row for b in out for row in b.rows] == data
        for b, following in zip(out, [*out[1:], None], strict=False):
            assert b.body == frame.body(b.rows) and len(b.body) <= max_bytes
            assert len(b.rows) <= max_rows
            if following is not None and len(b.rows) < max_rows:
                assert len(frame.body([*b.rows, following.rows[0]])) > max_bytes
