"""From fetched rows to encoded chunks: encode, check the cursor, cut at a limit.

The per-row work is one encode call, or none on the PostgreSQL fast path (the database
already wrote each row's JSON). Cursor values are checked chunk by chunk: a NULL, a
column that goes backwards or a tie without a key would make a checkpoint skip rows.
"""

from __future__ import annotations

import hashlib
import json
import operator
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from loader.batching import Chunk
from loader.cursor import named_columns
from loader.delivery import Counters
from loader.encoding import PgFloat, RowEncoder, UrlFiller
from loader.errors import CursorOrderError, EncodingError, QueryError, StateError
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
    # A diff sync's key columns follow the URL's placeholders among the values.
    values = stream.value_indexes[: len(target.placeholders)]
    indexes = stream.cursor_indexes
    omitted = _omitted_encoder(job, stream) if target.omit else None
    check = CursorCheck(job.source.cursor) if indexes else None
    add_ids = RowIds(job, stream) if target.row_id is not None else None
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
        if add_ids is not None:
            rows = add_ids(rows, raw, counters.rows_read)
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


def row_id(job: str, position: Sequence[Any]) -> str:
    """The ``target.row_id`` of the row at ``position`` (its cursor value, then its key)
    in ``job``: the first 32 hex digits of the SHA-256 of the job's name and each value's
    type and text, joined by NUL characters (see the README). A time stamp counts as
    microseconds since 1970-01-01 (UTC when it has a zone), so the id depends neither on
    the session's time zone nor on how the time is written."""
    text = "\0".join([job, *map(_typed, position)])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _typed(value: Any) -> str:
    """``TYPE\0TEXT`` of one cursor value."""
    entry = _TYPED.get(type(value))
    if entry is None:  # a subclass (bool is refused, as it is as a cursor value)
        kinds = (kind for kind in _TYPED if isinstance(value, kind))
        kind = next(kinds, None)
        if kind is None or isinstance(value, bool):
            raise StateError(f"a cursor value of type {type(value).__name__} has no row id")
        entry = _TYPED[kind]
    name, text = entry
    return f"{name}\0{text(value)}"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LOCAL_EPOCH = datetime(1970, 1, 1)
_MICROSECOND = timedelta(microseconds=1)


def _micros(value: datetime) -> str:
    return str((value - (_EPOCH if value.tzinfo is not None else _LOCAL_EPOCH)) // _MICROSECOND)


# Looked up by exact type first; datetime before date, its base class. The base types'
# own methods: a subclass (PgFloat) is written as its base type is.
_TYPED: dict[type, tuple[str, Callable[[Any], str]]] = {
    int: ("int", int.__repr__),
    Decimal: ("decimal", Decimal.__str__),
    float: ("float", float.__repr__),
    datetime: ("datetime", _micros),
    date: ("date", date.isoformat),
    uuid.UUID: ("uuid", uuid.UUID.__str__),
    str: ("str", str.__str__),
}


class RowIds:
    """Adds ``target.row_id`` to each encoded row: ``,"FIELD":"<row_id>"`` before the
    object's closing brace or, for ``COLUMN.FIELD``, before that of the object in the
    body's last column, ``COLUMN``. Works on the encoded bytes, so both encoding paths
    give the same body.

    Raises :class:`QueryError` when ``FIELD`` is already a column of the body, or
    ``COLUMN`` is not its last column.
    """

    def __init__(self, job: Job, stream: RowStream) -> None:
        field = job.target.row_id
        assert field is not None
        body = [name for name in stream.columns if name not in job.target.omit]
        outer, dot, inner = field.partition(".")
        if dot and body[-1:] != [outer]:
            raise QueryError(
                f"target.row_id {field!r} goes inside column {outer!r}, which must be the "
                f"last column of the body (columns: {', '.join(body)}); move it last in "
                "the query's SELECT list"
            )
        if not dot and field in body:
            raise QueryError(
                f"target.row_id {field!r} is also a column of the query; rename one, or "
                "add the column to target.omit"
            )
        self.job, self.field, self.nested = job.name, field, bool(dot)
        self.key = json.dumps(inner if dot else field).encode() + b':"'
        self.indexes = stream.cursor_indexes

    def __call__(self, rows: list[bytes], raw: Sequence[Sequence[Any]], before: int) -> list[bytes]:
        """``rows`` (rows ``before + 1``... of the run, fetched as ``raw``) with their ids."""
        out = []
        tail, job, indexes = 2 if self.nested else 1, self.job, self.indexes
        for number, (row, fetched) in enumerate(zip(rows, raw, strict=True), before + 1):
            value = row_id(job, [fetched[i] for i in indexes]).encode()
            if self.nested and not row.endswith(b"}}"):
                raise EncodingError(
                    f"row {number}: target.row_id {self.field!r} goes inside column "
                    f"{self.field.split('.')[0]!r}, whose value is not a JSON object; "
                    "build an object there (jsonb_build_object), or name a top-level field"
                )
            cut = len(row) - tail
            comma = b"" if row[cut - 1] == 0x7B else b","  # after "{": the object is empty
            out.append(row[:cut] + comma + self.key + value + b'"' + row[cut:])
        return out


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
