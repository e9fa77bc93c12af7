"""From fetched rows to encoded chunks: encode, check the cursor, cut at a limit.

The per-row work is one encode call, or none on the PostgreSQL fast path (the database
already wrote each row's JSON). Cursor values are checked chunk by chunk: a NULL, a
column that goes backwards or a tie without a key would make a checkpoint skip rows.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from loader.batching import Chunk
from loader.cursor import named_columns
from loader.delivery import Counters
from loader.encoding import PgFloat, RowEncoder, UrlFiller
from loader.errors import CursorOrderError
from loader.job import Cursor, Job
from loader.source import RowStream
from loader.state import encode_position

#: Types whose Python order is the database's order; text collations differ.
_ORDERED_TYPES = frozenset({int, float, PgFloat, Decimal, datetime, date})
_json_of = operator.itemgetter(0)  # a fast-path row's JSON


def encoded_chunks(
    job: Job, stream: RowStream, counters: Counters, limit: int | None
) -> Iterator[Chunk]:
    """Each fetched chunk of ``stream``, encoded, checked (cursor NULLs and order) and
    cut at ``limit`` rows in all; ``counters.rows_read`` counts the rows taken.

    Lazy: a chunk is fetched, checked and encoded only when the consumer asks for it, so
    memory holds one chunk at a time. Raises :class:`CursorOrderError` at the first
    chunk that breaks the cursor's rules (no row of that chunk is yielded), and the
    stream's own errors.
    """
    target = job.target
    for key, names in (("target.body", (target.body,)), ("target.lines", target.lines)):
        named_columns(stream.columns, [name for name in names if name], key)
    encode = _encoder(job, stream)
    filler = UrlFiller(target.url, target.placeholders) if target.per_row else None
    values, indexes = stream.value_indexes, stream.cursor_indexes
    omitted = _omitted_encoder(job, stream) if target.omit else None
    check = CursorCheck(job.source.cursor) if indexes else None
    for raw in stream.chunks:
        if limit is not None:
            room = limit - counters.rows_read
            if room <= 0:
                return
            raw = raw[:room]
        # Checked before anything is encoded or counted: a bad chunk must not reach a
        # batch, whose position would then become a checkpoint.
        if check is not None:
            check(raw, indexes, counters.rows_read)
        rows = list(map(_json_of, raw)) if stream.json_rows else list(map(encode, raw))
        urls = None
        if filler is not None:
            first = counters.rows_read + 1
            urls = [filler.fill([row[i] for i in values], first + n) for n, row in enumerate(raw)]
        counters.rows_read += len(raw)
        yield Chunk(
            rows,
            _position_of(raw, indexes) if indexes else _no_position,
            urls,
            omitted(raw) if omitted is not None else None,
        )


def _encoder(job: Job, stream: RowStream) -> Callable[[Sequence[Any]], bytes]:
    return RowEncoder(
        stream.columns,
        decimals=job.target.decimals,
        utc_datetimes=stream.utc_datetimes,
        utc_columns=stream.utc_columns,
        json_columns=stream.json_columns,
        omit=job.target.omit,
        shape=job.target.shape,
    ).encode


def _omitted_encoder(
    job: Job, stream: RowStream
) -> Callable[[Sequence[Sequence[Any]]], Callable[[int], bytes]]:
    """What makes a fetched chunk's :attr:`Chunk.omitted`: its rows' omitted columns as a
    JSON object (``{"id":7}``), only when asked for. On the fast path the database wrote
    it beside the row's JSON; on the generic path it is encoded from the fetched row."""
    at_json = stream.omitted_index
    if at_json is not None:
        return lambda raw: lambda n: bytes(raw[n][at_json])
    at = [stream.columns.index(name) for name in job.target.omit]
    encoder = RowEncoder(
        job.target.omit,
        decimals=job.target.decimals,
        utc_datetimes=stream.utc_datetimes,
        utc_columns=[n for n, i in enumerate(at) if i in stream.utc_columns],
        json_columns=[n for n, i in enumerate(at) if i in stream.json_columns],
    )
    return lambda raw: lambda n: encoder.encode([raw[n][i] for i in at])


def _position_of(raw: Sequence[Sequence[Any]], indexes: tuple[int, ...]) -> Callable[[int], Any]:
    return lambda i: tuple(raw[i][j] for j in indexes)


def _no_position(_index: int) -> None:
    return None


class CursorCheck:
    """Refuses NULL cursor values, a column that goes backwards, repeated values of a
    column without a key, and values the state store cannot keep. Called on each chunk
    in turn; it remembers the last column value for the next chunk's check.

    Only values whose Python order is the database's are checked for going backwards;
    text may sort differently under the database's collation. Not thread-safe: one
    instance per stream.
    """

    def __init__(self, cursor: Cursor | None) -> None:
        assert cursor is not None
        self.cursor = cursor
        self.names = [cursor.column] + ([cursor.key] if cursor.key else [])
        self.previous: Any = None

    def __call__(self, raw: Sequence[Sequence[Any]], indexes: tuple[int, ...], before: int) -> None:
        """Check ``raw`` (rows ``before + 1`` onwards), whose cursor columns are at
        ``indexes`` (the column, then the key); raise :class:`CursorOrderError`, or
        :class:`StateError` when the first position cannot be stored."""
        if self.previous is None and raw:
            # A checkpoint that cannot be saved would make every run re-send this batch.
            encode_position(tuple(raw[0][i] for i in indexes))
        last = self.previous
        for name, index in zip(self.names, indexes, strict=True):
            values = [row[index] for row in raw]
            if None in values:
                raise CursorOrderError(
                    f"row {before + values.index(None) + 1}: cursor column {name!r} is NULL; "
                    "loader cannot place it after a checkpoint. Give it a value (later than "
                    "the checkpoint, or run once with --full-refresh), or set "
                    "source.cursor.on_null: skip to leave such rows out"
                )
            if index != indexes[0] or not values:
                continue
            last = values[-1]
            self._in_order(name, values, before)
        self.previous = last

    def _in_order(self, name: str, values: list[Any], before: int) -> None:
        previous = self.previous
        series = values if previous is None else [previous, *values]
        if not self.cursor.key and any(map(operator.eq, series, series[1:])):
            at = next(i for i in range(1, len(series)) if series[i] == series[i - 1])
            raise CursorOrderError(
                f"cursor column {name!r} repeats the value {series[at]!r}: without a "
                "key, a run that stops inside such a tie would skip the rest of it. "
                "Set source.cursor.key to a unique column"
            )
        if type(values[0]) not in _ORDERED_TYPES:
            return
        if not all(map(operator.le, series, series[1:])):
            at = next(i for i in range(1, len(series)) if series[i] < series[i - 1])
            row_number = before + at + (1 if previous is None else 0)
            raise CursorOrderError(
                f"row {row_number}: cursor column {name!r} went backwards "
                f"({series[at - 1]!r} then {series[at]!r}); is it non-decreasing?"
            )
