"""Re-cutting the batches a crashed run left in flight, before cutting new ones.

A run of a job with a cursor records each batch's cut before sending it (see
:mod:`loader.state.cuts`). The next run reads its rows from the checkpoint as usual, but
first gives each recorded cut, in order, exactly the rows whose positions fall after its
start and at or before its last position; only then does it cut the remaining rows as
usual. A re-cut batch keeps the scope of its first key, so when its rows did not change
its body and Idempotency-Key are those of its first sending; a row updated since (moved
past the cut by its new cursor value) or inserted into the range changes the body, and
so the key.

Positions are compared in Python: for a text cursor or key under a collation other than
the code-point order, a re-cut may end elsewhere than the database's order would say;
such a batch gets a new key (nothing is skipped: the rows stay in read order and each
batch's checkpoint is still the end of what it holds).

A re-cut batch checkpoints at its cut's recorded last position only when the stream was
seen to go past that position and the position's values order in Python as in the
database (numbers, dates); otherwise, as when the stream ended inside the cut (a
``--limit``) or the cursor is text, at its own last row, so a checkpoint never claims a
row that was not sent.
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from loader.batching import Batch, Chunk
from loader.logs import event
from loader.state import Cut, decode_position

log = logging.getLogger("loader")

#: What cuts chunks of rows into batches (``batches`` or ``singles`` with their limits).
Cutter = Callable[[Iterable[Chunk]], Iterator[Batch]]


def recut(
    chunks: Iterable[Chunk], pending: list[Cut], cutter: Cutter
) -> Iterator[tuple[Batch, Cut | None]]:
    """The batches of ``chunks``: first one per cut of ``pending`` (a cut whose rows are
    all gone gives none), each with its cut and its cut's last position as its own; then
    the rest cut by ``cutter``, each with ``None``. Batches are numbered from 1 in order.

    A re-cut that no longer fits one batch (rows were inserted into its range) is cut by
    ``cutter`` and its batches come with ``None``.
    """
    stream = _Rows(iter(chunks))
    numbered = _Numbered()
    for cut in pending:
        last = decode_position(cut.last)
        taken, whole, passed = stream.take_to(last)
        made = list(cutter(taken))
        if not whole:  # positions of another type than recorded: cut the rest as usual
            event(
                log,
                "batch.recut_anew",
                reason="the batches in flight no longer compare with their rows",
            )
            yield from ((numbered(batch), None) for batch in made)
            break
        if len(made) == 1:
            batch = made[0]
            if passed and _ordered(last):
                batch = replace(batch, position=last)
            yield numbered(batch), cut
            continue
        for batch in made:
            yield numbered(batch), None
    for batch in cutter(stream.rest()):
        yield numbered(batch), None


class _Numbered:
    """Renumbers batches cut in several calls: 1, 2, 3... and their first rows."""

    def __init__(self) -> None:
        self.seq = 0
        self.rows = 0

    def __call__(self, batch: Batch) -> Batch:
        self.seq += 1
        first = self.rows + 1
        self.rows += len(batch.rows)
        if batch.seq == self.seq and batch.first_row == first:
            return batch
        return replace(batch, seq=self.seq, first_row=first)


class _Rows:
    """A stream of chunks consumed by position ranges, then as the rest."""

    def __init__(self, chunks: Iterator[Chunk]) -> None:
        self.chunks = chunks
        self.chunk: Chunk | None = None
        self.offset = 0

    def take_to(self, last: Any) -> tuple[list[Chunk], bool, bool]:
        """The next rows whose positions are at most ``last``, as chunk slices; then
        ``False`` when a position does not compare with ``last`` (the rows taken before
        it), else ``True``; then whether a row after ``last`` was seen (``False`` when
        the stream ended first)."""
        taken: list[Chunk] = []
        while True:
            chunk = self._current()
            if chunk is None:
                return taken, True, False
            size = len(chunk.rows)
            try:
                end = bisect_right(range(size), last, lo=self.offset, key=chunk.marker)
            except TypeError:
                return taken, False, False
            if end > self.offset:
                taken.append(_slice(chunk, self.offset, end))
            self.offset = end
            if end < size:
                return taken, True, True

    def rest(self) -> Iterator[Chunk]:
        """The rows not taken yet."""
        chunk = self._current()
        if chunk is not None:
            yield _slice(chunk, self.offset, len(chunk.rows))
            yield from self.chunks

    def _current(self) -> Chunk | None:
        """The chunk with rows left to take, fetching the next ones as needed."""
        while self.chunk is None or self.offset >= len(self.chunk.rows):
            self.chunk = next(self.chunks, None)
            self.offset = 0
            if self.chunk is None:
                return None
        return self.chunk


#: Types whose Python order is the database's order; text collations differ.
_ORDERED = (int, float, Decimal, datetime, date)


def _ordered(position: Any) -> bool:
    """True when every value of ``position`` orders in Python as in the database."""
    values = position if isinstance(position, tuple | list) else (position,)
    return all(isinstance(value, _ORDERED) and not isinstance(value, bool) for value in values)


def _slice(chunk: Chunk, start: int, end: int) -> Chunk:
    """Rows ``start`` to ``end`` of ``chunk``, with their markers, URLs and omitted
    columns."""
    if start == 0 and end == len(chunk.rows):
        return chunk
    marker, omitted = chunk.marker, chunk.omitted
    return replace(
        chunk,
        rows=chunk.rows[start:end],
        marker=lambda i: marker(start + i),
        urls=chunk.urls[start:end] if chunk.urls is not None else None,
        omitted=(lambda i: omitted(start + i)) if omitted is not None else None,
    )
