"""The database side: connect, run the query in a read-only transaction, stream rows.

Rows come from a server-side cursor (``stream_results``), ``fetch_size`` at a time, so
memory is bounded by the fetch size whatever the size of the result. On PostgreSQL the
database may write each row's JSON itself (:mod:`loader.pgjson`); those rows are
streamed by psycopg and read a chunk ahead, under a watchdog for the statement timeout.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from loader import job as jobmodel
from loader.cursor import (
    Described,
    cursor_indexes,
    cursor_query,
    inner_query,
    named_columns,
    quoter,
    refuse_duplicates,
)
from loader.database import (
    abandon_unread,
    begin_read_only,
    closing,
    connect,
    create_engine,
    driver_message,
    execute_query,
    failure,
    refuse_types,
)
from loader.dbdiff import Compare, compared_query, key_ordered, sees_store
from loader.errors import ConnectionLostError, CursorOrderError, SourceError
from loader.pgjson import fast_query, unsendable_error
from loader.redact import Redactor


@dataclass
class RowStream:
    """An open query result: its column names and an iterator over chunks of rows.

    ``cursor_indexes`` are the positions of the cursor's column and key in each row
    (empty without a cursor). When ``json_rows`` is true (the PostgreSQL fast path), each
    row's first item is the row already encoded as a JSON object (bytes, without the
    omitted columns) and the cursor values follow it. ``value_indexes`` are the positions
    of the columns asked for as ``values`` (for URL placeholders). On the fast path with
    omitted columns, ``omitted_index`` is the position of their JSON object (bytes).
    ``known_index``: the database compared a diff sync (see :mod:`loader.dbdiff`); the
    JSON's hash is just before it.
    """

    columns: tuple[str, ...]
    chunks: Iterator[Sequence[Sequence[Any]]]
    utc_datetimes: bool
    cursor_indexes: tuple[int, ...] = ()
    json_rows: bool = False
    utc_columns: tuple[int, ...] = ()
    json_columns: tuple[int, ...] = ()
    value_indexes: tuple[int, ...] = ()
    omitted_index: int | None = None
    known_index: int | None = None


@contextmanager
def open_stream(
    config: jobmodel.Source,
    redactor: Redactor,
    *,
    position: tuple[Any, ...] | None = None,
    decimals: str = "number",
    fast: bool = True,
    omit: Sequence[str] = (),
    values: Sequence[str] = (),
    compare: Compare | None = None,
) -> Iterator[RowStream]:
    """Connect, start a read-only transaction and execute the query; with a cursor,
    only the rows after ``position`` (see :func:`loader.cursor.cursor_query`). ``omit``
    and ``values`` name columns to leave out of the rows' JSON and to hand over as they
    are (``RowStream.value_indexes``); :class:`QueryError` if the query lacks one.

    On PostgreSQL (psycopg), when every column has a type it can write exactly, the
    database builds each row's JSON (:func:`loader.pgjson.fast_query`); ``fast=False``
    forbids that. With ``compare`` (a diff sync), the database compares the rows with
    the stored fingerprints when it can (:mod:`loader.dbdiff`; ``RowStream.known_index``
    is set); otherwise the rows come in order of the diff key.

    Raises :class:`SourceError` (connection or query failed) or :class:`QueryError`
    (two columns share a name) before any row is yielded; while rows are read,
    :class:`ConnectionLostError` when the connection drops (a failover, a restart, a
    network cut) and :class:`SourceError` for other failures.
    """
    engine = create_engine(config, redactor)
    where = redactor.url(engine.url.render_as_string(hide_password=True))
    try:
        connection = connect(engine, where, redactor)
        with closing(connection):
            described = _start(connection, config, where, redactor, omit)
            if fast and described is not None and connection.dialect.driver == "psycopg":
                fast_stream = _open_fast(
                    connection, config, position, decimals, described, where, redactor,
                    omit, values, compare,
                )  # fmt: skip
                if fast_stream is not None:
                    with fast_stream as stream:
                        yield stream
                    return
            config = key_ordered(config) if compare is not None else config
            with _open_generic(
                connection, config, position, described, where, redactor, omit, values
            ) as stream:
                yield stream
    finally:
        engine.dispose()


def _start(connection: Connection, config: jobmodel.Source, where: str, redactor: Redactor,
           omit: Sequence[str]) -> Described | None:  # fmt: skip
    """Start the read-only transaction and check the query before it runs: on PostgreSQL,
    what it returns (:class:`Described`, else ``None``); NULL cursor values (``on_null``)."""
    try:
        zone = begin_read_only(connection, config)
    except SQLAlchemyError as exc:
        raise failure(f"cannot start a read-only transaction on {where}: "
                      f"{driver_message(exc, redactor)}", exc) from exc  # fmt: skip
    described = None
    if connection.dialect.name == "postgresql":
        described = _describe(connection, config, zone or "UTC", where, redactor, omit)
    _refuse_nulls(connection, config, where, redactor)
    return described


@contextmanager
def _open_generic(
    connection: Connection,
    config: jobmodel.Source,
    position: tuple[Any, ...] | None,
    described: Described | None,
    where: str,
    redactor: Redactor,
    omit: Sequence[str],
    values: Sequence[str],
) -> Iterator[RowStream]:
    """Execute the query (wrapped for the cursor, if any) with a server-side cursor and
    stream its rows as the driver hands them over."""
    query, params = config.query, dict(config.params)
    if config.cursor is not None:
        query, extra = cursor_query(config, connection.dialect, position, described)
        params.update(extra)
    try:
        result = execute_query(connection, query, params, config.fetch_size)
    except SQLAlchemyError as exc:
        raise failure(
            f"query failed on {where}: {driver_message(exc, redactor)}; check source.query", exc
        ) from exc
    try:
        columns = tuple(result.keys())
        refuse_duplicates(columns)
        named_columns(columns, omit, "target.omit")
        value_indexes = named_columns(columns, values, "target.url")
        utc_columns, json_columns = _mysql_types(connection.dialect, result)
        yield RowStream(
            columns=columns,
            chunks=_chunks(result, config.fetch_size, where, redactor),
            utc_datetimes=connection.dialect.name == "postgresql",
            cursor_indexes=cursor_indexes(config, columns),
            utc_columns=utc_columns,
            json_columns=json_columns,
            value_indexes=value_indexes,
        )
    finally:
        with contextlib.suppress(SQLAlchemyError):  # a lost connection cannot close it
            result.close()


def _describe(connection: Connection, config: jobmodel.Source, zone: str, where: str,
              redactor: Redactor, omit: Sequence[str]) -> Described:  # fmt: skip
    """The query's columns and types (``LIMIT 0``); refuse types ``omit`` does not drop."""
    inner = inner_query(config)
    try:
        sql = f"SELECT * FROM (\n{inner}\n) AS s LIMIT 0"
        probe = execute_query(connection, sql, dict(config.params))
        description = probe.cursor.description or []
        probe.close()
    except SQLAlchemyError as exc:
        raise failure(
            f"query failed on {where}: {driver_message(exc, redactor)}; check source.query", exc
        ) from exc
    columns = tuple(column[0] for column in description)
    refuse_duplicates(columns)
    cursor_indexes(config, columns)
    types = {column[0]: cast(int, column[1]) for column in description}
    refuse_types(connection, tuple(c for c in columns if c not in omit), types, where, redactor)
    return Described(columns, types, zone)


def _refuse_nulls(
    connection: Connection, config: jobmodel.Source, where: str, redactor: Redactor
) -> None:
    """With ``on_null: fail``, stop before anything is sent if any row of the query has a
    NULL cursor column or key (such a row could never be placed after a checkpoint)."""
    cursor = config.cursor
    if cursor is None or cursor.on_null != "fail":
        return
    quote = quoter(connection.dialect)
    names = [cursor.column] + ([cursor.key] if cursor.key else [])
    inner = inner_query(config)
    test = " OR ".join(f"s.{quote(name)} IS NULL" for name in names)
    try:
        found = execute_query(
            connection,
            f"SELECT {', '.join('s.' + quote(n) for n in names)} "
            f"FROM (\n{inner}\n) AS s WHERE {test} LIMIT 1",
            dict(config.params),
        ).first()  # first() closes the cursor
    except SQLAlchemyError as exc:
        raise failure(
            f"query failed on {where}: {driver_message(exc, redactor)}; check source.query", exc
        ) from exc
    if found is not None:
        name = next(n for n, value in zip(names, found, strict=True) if value is None)
        raise CursorOrderError(
            f"the query returns rows whose cursor column {name!r} is NULL; loader cannot "
            "place them after a checkpoint, so nothing was sent. Give them a value (later "
            "than the checkpoint, or run once with --full-refresh), filter them out in the "
            "query, or set source.cursor.on_null: skip to leave them out"
        )


def _open_fast(
    connection: Connection,
    config: jobmodel.Source,
    position: tuple[Any, ...] | None,
    decimals: str,
    described: Described,
    where: str,
    redactor: Redactor,
    omit: Sequence[str],
    values: Sequence[str],
    compare: Compare | None,
) -> contextlib.AbstractContextManager[RowStream] | None:
    """When the database can write the rows' JSON, run :func:`loader.pgjson.fast_query`,
    streamed (with ``compare``, joined with the stored fingerprints when the database
    can compare). ``None`` when the generic path must be used."""
    params = dict(config.params)
    named_columns(described.columns, omit, "target.omit")
    named_columns(described.columns, values, "target.url")
    built = fast_query(config, connection.dialect, position, described, decimals, omit, values,
                       hashed=compare is not None)  # fmt: skip
    if built is None:
        return None
    sql, extra = built
    raw = connection.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    cursor_count = 1 + (1 if config.cursor and config.cursor.key else 0) if config.cursor else 0
    width = 2 + cursor_count + len(values) + (1 if omit else 0)  # the JSON, ..., its hash
    known = None
    if compare is not None:
        joined = compared_query(sql, width, cursor_count + len(values), described, config, compare)
        if joined is not None and sees_store(raw, compare):
            sql, known, extra = joined, width, {**extra, "loader_diff_job": compare.job}
            # A hash join: a merge join sorts every stored key, in each worker.
            raw.execute("SET LOCAL enable_mergejoin = off")
        else:
            return _open_fast(connection, key_ordered(config), position, decimals, described,
                              where, redactor, omit, values, None)  # fmt: skip
    statement = sa.text(sql).bindparams(**params, **extra).compile(dialect=connection.dialect)
    return _fast_stream(
        raw, str(statement), statement.params, config, described.columns,
        tuple(range(1, 1 + cursor_count)),
        tuple(range(1 + cursor_count, 1 + cursor_count + len(values))),
        1 + cursor_count + len(values) if omit else None,
        where, redactor, known,
    )  # fmt: skip


@contextmanager
def _fast_stream(
    raw: psycopg.Connection[Any],
    sql: str,
    params: dict[str, Any],
    config: jobmodel.Source,
    columns: tuple[str, ...],
    cursor_indexes: tuple[int, ...],
    value_indexes: tuple[int, ...],
    omitted_index: int | None,
    where: str,
    redactor: Redactor,
    known_index: int | None = None,
) -> Iterator[RowStream]:
    """Stream ``sql``, whose rows are each row's JSON (bytes) then the cursor's and the
    ``values`` columns, through psycopg in binary, read a chunk ahead."""
    # Streamed (not a DECLAREd cursor) so PostgreSQL may use a parallel plan, and
    # asked to: writing the JSON is the costly part, and workers share it. The statement
    # timeout is then watched here, per chunk, as it is per FETCH on the other path.
    try:
        raw.execute("SET LOCAL statement_timeout = 0")
        raw.execute("SET LOCAL IntervalStyle = 'iso_8601'")  # ISO 8601 durations in JSON
        raw.execute("SET LOCAL parallel_setup_cost = 0")
        raw.execute("SET LOCAL parallel_tuple_cost = 0")
    except psycopg.Error as exc:
        reason = redactor.text(" ".join(str(exc).split()))
        raise failure(f"cannot start reading rows from {where}: {reason}", exc) from exc
    cursor = raw.cursor(binary=True)
    rows = cursor.stream(sql, params, size=config.fetch_size)
    chunks = _streamed_chunks(
        raw, rows, config.fetch_size, config.statement_timeout, where, redactor, columns
    )
    try:
        yield RowStream(
            columns=columns,
            chunks=chunks,
            utc_datetimes=True,
            cursor_indexes=cursor_indexes,
            json_rows=True,
            value_indexes=value_indexes,
            omitted_index=omitted_index,
            known_index=known_index,
        )
    finally:
        chunks.close()
        with contextlib.suppress(psycopg.Error):  # a lost connection cannot close it
            cursor.close()


class _ReadAhead:
    """Reads chunks of rows in a thread of its own into a queue of two, while a watchdog
    thread cancels the query when reading one chunk takes longer than ``timeout``
    (``0``: no watchdog). :meth:`start` starts both; :meth:`stop` ends them."""

    def __init__(
        self, connection: psycopg.Connection[Any], rows: Iterator[Any], size: int, timeout: float
    ) -> None:
        self.connection, self.rows, self.size, self.timeout = connection, rows, size, timeout
        self.ready: queue.Queue[Any] = queue.Queue(maxsize=2)  # chunks, or the read's error
        self.done, self.timed_out = threading.Event(), threading.Event()
        # When the chunk being read is overdue (None between reads); written under `lock`
        # with no wake-up, so a chunk costs two lock round trips, not two thread switches.
        self.deadline: float | None = None
        self.lock = threading.Lock()
        self.fetcher = threading.Thread(target=self._fetch, name="loader-fetch", daemon=True)

    def start(self) -> None:
        """Start reading (and watching, with a timeout)."""
        self.fetcher.start()
        if self.timeout:
            threading.Thread(target=self._watch, name="loader-fetch-timeout", daemon=True).start()

    def stop(self) -> None:
        """End both threads; a read still waiting for rows nobody wants is cancelled."""
        self.done.set()
        self.fetcher.join(timeout=1)
        if self.fetcher.is_alive():  # still waiting for rows nobody wants: stop the query
            with contextlib.suppress(psycopg.Error):  # nothing to stop on a lost connection
                self.connection.cancel_safe()
            self.fetcher.join()

    def _watch(self) -> None:
        """Cancel the query when a chunk is overdue (one thread for the whole read). The
        deadline only moves later, so it sleeps until the one it saw (at most a timeout)
        and looks again: a read that begins meanwhile is still caught on time."""
        while not self.done.is_set():
            deadline = self.deadline
            left = self.timeout if deadline is None else deadline - time.monotonic()
            if left > 0:
                self.done.wait(left)
                continue
            with self.lock:  # overdue, unless that read just ended: check under the lock
                if self.deadline is not None and self.deadline <= time.monotonic():
                    self.timed_out.set()
                    self.connection.cancel_safe()
                    return

    def _overdue_at(self, when: float | None) -> None:
        with self.lock:
            self.deadline = when

    def _put(self, item: Any) -> None:
        while not self.done.is_set():
            try:
                self.ready.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _fetch(self) -> None:
        try:
            while not self.done.is_set():
                if self.timeout:
                    self._overdue_at(time.monotonic() + self.timeout)
                try:
                    chunk = list(itertools.islice(self.rows, self.size))
                finally:
                    if self.timeout:
                        self._overdue_at(None)
                self._put(chunk)
                if not chunk:
                    return
        except psycopg.Error as exc:
            self._put(exc)
        finally:
            with contextlib.suppress(psycopg.Error):
                self.rows.close()  # type: ignore[attr-defined]  # cancels an unfinished query


def _streamed_chunks(
    connection: psycopg.Connection[Any],
    rows: Iterator[Any],
    size: int,
    timeout: float,
    where: str,
    redactor: Redactor,
    columns: Sequence[str] = (),
) -> Generator[list[Any], None, None]:
    """Chunks of ``size`` rows, the next one read in a thread while this one is
    processed, so the database never waits for Python; at most two chunks wait in
    memory. Waiting longer than ``timeout`` for a chunk cancels the query. A date the
    query refuses in one of ``columns`` is an :class:`EncodingError`."""
    reader = _ReadAhead(connection, rows, size, timeout)
    reader.start()
    try:
        while True:
            item = reader.ready.get()
            if isinstance(item, psycopg.Error):
                if reader.timed_out.is_set():
                    raise SourceError(
                        f"reading rows from {where} failed: canceling statement due to "
                        f"statement timeout (no rows for {timeout:g}s; source.statement_timeout)"
                    ) from item
                refused = unsendable_error(item, columns)
                if refused is not None:
                    raise refused from item
                reason = redactor.text(" ".join(str(item).split()))
                message = f"reading rows from {where} failed: {reason}"
                raise failure(message, item) from item
            if not item:
                return
            yield item
    finally:
        reader.stop()


def _mysql_types(
    dialect: sa.Dialect, result: sa.CursorResult[Any]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """On MySQL/MariaDB: the TIMESTAMP columns (instants, read in UTC, which the driver
    hands over naive) and the JSON columns (text the driver does not parse)."""
    if dialect.name != "mysql" or result.cursor is None:
        return (), ()
    description = result.cursor.description or []
    timestamps = tuple(i for i, column in enumerate(description) if column[1] == 7)
    documents = tuple(i for i, column in enumerate(description) if column[1] == 245)
    return timestamps, documents


def _chunks(
    result: sa.CursorResult[Any], size: int, where: str, redactor: Redactor
) -> Iterator[Sequence[Any]]:
    try:
        # An explicit size: without one, partitions() may fetch the whole result at once.
        yield from result.partitions(size)
    except SQLAlchemyError as exc:
        error = failure(f"reading rows from {where} failed: {driver_message(exc, redactor)}", exc)
        if isinstance(error, ConnectionLostError):
            abandon_unread(result)
        raise error from exc
