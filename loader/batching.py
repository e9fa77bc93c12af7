"""Encoded rows to request bodies, bounded by a row count and a byte size. Pure.

Rows arrive in chunks (one database fetch each); cut points are found per chunk with
running sums, so the per-row Python work is a ``len`` and nothing else.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import accumulate, repeat
from operator import add
from typing import Any

from loader.encoding import Framing
from loader.errors import EncodingError

#: The omitted columns of a row, by its index (see :class:`Chunk`).
Omitted = Callable[[int], bytes]


@dataclass(frozen=True)
class Batch:
    """One request body and the encoded rows in it.

    ``first_row`` is the 1-based number of its first row in the run; ``position`` is the
    marker of its last row (the cursor position, for checkpoints). ``url`` is where a
    single row goes when requests are per row (``None``: the target's URL). With
    ``target.omit``, ``omitted(i)`` gives the omitted columns of ``rows[i]`` (see
    :class:`Chunk`).
    """

    seq: int
    first_row: int
    rows: list[bytes]
    body: bytes
    position: Any = None
    url: str | None = None
    omitted: Omitted | None = None
    #: The idempotency key of ``body``, when it was computed before sending (a cursor
    #: job's cut records it), so it is not hashed again. It belongs to this exact body
    #: and scope: a batch whose body changes must not keep it.
    key: str | None = None


@dataclass(frozen=True)
class Chunk:
    """Encoded rows and, for any of them, its marker: ``marker(i)`` for ``rows[i]``;
    with per-row requests, ``urls[i]`` is where ``rows[i]`` goes. With ``target.omit``,
    ``omitted(i)`` encodes the columns left out of ``rows[i]`` as a JSON object, so that
    a rejected row can be kept whole. It is computed only when asked for (a rejection):
    no work per row, and only the chunk's fetched rows are kept meanwhile."""

    rows: list[bytes]
    marker: Callable[[int], Any] = lambda _index: None
    urls: list[str] | None = None
    omitted: Omitted | None = None


class Spans:
    """A batch's ``omitted``: each row's omitted columns, asked of the chunk it came
    from. One span per chunk the batch draws rows from."""

    __slots__ = ("starts", "sources")

    def __init__(self) -> None:
        self.starts: list[int] = []  # the batch index of each span's first row
        self.sources: list[tuple[Omitted, int]] = []  # its chunk's omitted, and its index

    def add(self, at: int, omitted: Omitted, offset: int) -> Spans:
        """Rows from index ``at`` of the batch are rows ``offset``... of a chunk."""
        self.starts.append(at)
        self.sources.append((omitted, offset))
        return self

    def __call__(self, index: int) -> bytes:
        span = bisect_right(self.starts, index) - 1
        omitted, offset = self.sources[span]
        return omitted(offset + index - self.starts[span])


def batches(
    chunks: Iterable[Chunk], framing: Framing, *, max_rows: int, max_bytes: int
) -> Iterator[Batch]:
    """Group the rows of ``chunks`` into bodies of at most ``max_rows`` rows and
    ``max_bytes`` bytes.

    Rows keep their order. A row that cannot fit in a body on its own raises
    :class:`EncodingError` naming its number; the rows before it were already yielded.
    """
    sep = len(framing.separator)
    overhead = framing.overhead()
    pending: list[bytes] = []
    left_out: Spans | None = None  # the pending rows' omitted columns
    size = overhead
    marker: Any = None
    seq = 0
    row_number = 0  # rows consumed before the current chunk position
    for chunk in chunks:
        rows = chunk.rows
        start = 0
        while start < len(rows):
            room = max_rows - len(pending)
            window = rows[start : start + room]
            limit = max_bytes - size + (0 if pending else sep)
            # What the body grows by with the whole window (each row brings its separator,
            # except the first row of an empty body); when over the limit, with each of
            # its first k rows.
            whole = sum(map(len, window)) + sep * len(window)
            if whole <= limit:
                fits, added = len(window), whole
            else:
                grown = list(accumulate(map(add, map(len, window), repeat(sep))))
                fits = bisect_right(grown, limit)
                added = grown[fits - 1] if fits else 0
            if fits == 0:
                if pending:
                    seq += 1
                    yield _batch(seq, row_number, pending, framing, marker, left_out)
                    pending, size, left_out = [], overhead, None
                    continue
                raise _too_large(rows[start], row_number + 1, overhead, max_bytes)
            pending.extend(window[:fits])
            if chunk.omitted is not None:
                left_out = (left_out or Spans()).add(len(pending) - fits, chunk.omitted, start)
            size += added - (0 if len(pending) > fits else sep)
            start += fits
            row_number += fits
            marker = chunk.marker(start - 1)
            if len(pending) >= max_rows or fits < len(window):
                seq += 1
                yield _batch(seq, row_number, pending, framing, marker, left_out)
                pending, size, left_out = [], overhead, None
    if pending:
        seq += 1
        yield _batch(seq, row_number, pending, framing, marker, left_out)


def singles(chunks: Iterable[Chunk], framing: Framing, *, max_bytes: int) -> Iterator[Batch]:
    """One body per row (per-row requests), with the row's URL; a row larger than
    ``max_bytes`` raises :class:`EncodingError` as in :func:`batches`."""
    overhead = framing.overhead()
    seq = 0
    for chunk in chunks:
        for index, row in enumerate(chunk.rows):
            seq += 1
            if len(row) + overhead > max_bytes:
                raise _too_large(row, seq, overhead, max_bytes)
            url = chunk.urls[index] if chunk.urls is not None else None
            left_out = Spans().add(0, chunk.omitted, index) if chunk.omitted else None
            yield Batch(seq, seq, [row], framing.body((row,)), chunk.marker(index), url, left_out)


def _too_large(row: bytes, number: int, overhead: int, max_bytes: int) -> EncodingError:
    return EncodingError(
        f"row {number} ({_first_field(row)}...) is {len(row) + overhead:,} bytes as a "
        f"request, more than batch.max_bytes ({max_bytes:,} bytes); raise batch.max_bytes "
        "or select fewer or smaller columns"
    )


def _batch(
    seq: int,
    last_row: int,
    rows: list[bytes],
    framing: Framing,
    marker: Any,
    omitted: Omitted | None = None,
) -> Batch:
    return Batch(seq, last_row - len(rows) + 1, rows, framing.body(rows), marker, None, omitted)


def _first_field(row: bytes) -> str:
    """The row's first ``"key":value`` pair, to name it in errors without dumping it."""
    head = row[:80].split(b",", 1)[0]
    return head.decode("utf-8", "replace")
