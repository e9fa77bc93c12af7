"""The database side: connect, run the query in a read-only transaction, stream rows.

Rows come from a server-side cursor (``stream_results``), ``fetch_size`` at a time, so
memory is bounded by the fetch size whatever the size of the result.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import re
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from loader import job as jobmodel
from loader.database import DRIVER_HINTS, driver_message, engine_url
from loader.encoding import json_fragment
from loader.errors import CursorOrderError, JobConfigError, QueryError, SourceError
from loader.redact import Redactor


@dataclass
class RowStream:
    """An open query result: its column names and an iterator over chunks of rows.

    ``cursor_indexes`` are the positions of the cursor's column and key in each row
    (empty without a cursor). When ``json_rows`` is true (the PostgreSQL fast path), each
    row's first item is the row already encoded as a JSON object (bytes, without the
    omitted columns) and the cursor values follow it. ``value_indexes`` are the positions
    of the columns asked for as ``values`` (for URL placeholders).
    """

    columns: tuple[str, ...]
    chunks: Iterator[Sequence[Sequence[Any]]]
    utc_datetimes: bool
    cursor_indexes: tuple[int, ...] = ()
    json_rows: bool = False
    utc_columns: tuple[int, ...] = ()
    json_columns: tuple[int, ...] = ()
    value_indexes: tuple[int, ...] = ()


# PostgreSQL types whose JSON the database can write itself, exactly as loader's encoding
# table says (with the expression below where its own JSON differs). Any other type in
# a result (timestamptz[], bytea[], money, geometric types...) takes the generic path.
_FAST_TYPES = {
    16: "bool", 17: "bytea", 19: "name", 20: "int8", 21: "int2", 23: "int4", 25: "text",
    26: "oid", 114: "json", 650: "cidr", 700: "float4", 701: "float8", 869: "inet",
    1042: "bpchar", 1043: "varchar", 1082: "date", 1083: "time", 1114: "timestamp",
    1184: "timestamptz", 1186: "interval", 1700: "numeric", 2950: "uuid", 3802: "jsonb",
    1000: "bool[]", 1005: "int2[]", 1007: "int4[]", 1009: "text[]", 1015: "varchar[]",
    1016: "int8[]", 1182: "date[]", 1231: "numeric[]", 1022: "float8[]", 2951: "uuid[]",
    3807: "jsonb[]",
}  # fmt: skip


def _quoter(dialect: sa.Dialect) -> Callable[[str], str]:
    """Quotes identifiers in SQL that goes through ``sa.text()``: as the dialect does,
    but without doubling ``%`` for the driver, which ``text()`` does itself."""
    preparer = dialect.identifier_preparer

    def quote(name: str) -> str:
        escaped = name.replace(preparer.escape_quote, preparer.escape_to_quote)
        return f"{preparer.initial_quote}{escaped}{preparer.final_quote}"

    return quote


def _fast_expression(column: str, type_name: str, decimals: str) -> str:
    """SQL for one column's value, such that its JSON (``to_json``) is loader's JSON."""
    if type_name == "timestamptz":
        # The session is in UTC; the text form trims trailing zeros of the fraction.
        return (
            f"CASE WHEN isfinite({column}) THEN "
            f"replace(({column} AT TIME ZONE 'UTC')::text, ' ', 'T') || 'Z' END"
        )
    if type_name == "numeric":
        # x * 0 = 0 holds for every finite value and fails for NaN and ±Infinity.
        value = f"{column}::text" if decimals == "string" else column
        return f"CASE WHEN {column} * 0 = 0 THEN {value} END"
    if type_name in ("float4", "float8"):
        return f"CASE WHEN {column} * 0 = 0 THEN {column} END"
    if type_name == "bytea":
        return f"translate(encode({column}, 'base64'), E'\\n', '')"
    if type_name == "json":
        return f"translate({column}::text, E'\\r\\n', '  ')::json"
    return column


# Types whose JSON is their text form (the finite-number checks are in the expression).
_BARE_JSON = {"bool", "int2", "int4", "int8", "float4", "float8", "json", "jsonb"}
# Types whose text form never needs escaping inside a JSON string.
_PLAIN_STRINGS = {"uuid", "timestamptz"}
# Column names written into the SQL as JSON keys as they are; any other name (one that
# JSON or SQL would have to escape) takes row_to_json.
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_ $.-]*")


def _value_text(value: str, type_name: str, decimals: str) -> str:
    """SQL for the JSON text of one value (NULL for null), as ``to_json`` writes it."""
    if type_name in _BARE_JSON or (type_name == "numeric" and decimals != "string"):
        return f"({value})::text"
    if type_name in _PLAIN_STRINGS:
        return f"""'"' || ({value})::text || '"'"""
    return f"to_json({value})::text"


def _json_object(fields: Sequence[tuple[str, str]]) -> str | None:
    """SQL for one row's JSON object from ``(name, SQL for the value's JSON text)``: the
    same text as ``row_to_json`` writes, as both convert each value the same way
    (``to_json``), built by concatenation, which costs PostgreSQL about a quarter less
    CPU than forming a record and converting it. ``None`` for a name that needs escaping."""
    if not all(_PLAIN_NAME.fullmatch(name) for name, _ in fields):
        return None
    parts = [
        f"""'{"," if i else "{"}"{name}":' || coalesce({text}, 'null')"""
        for i, (name, text) in enumerate(fields)
    ]
    return " || ".join([*parts, "'}'"]) if parts else "'{}'"


def fast_query(
    config: jobmodel.Source,
    dialect: sa.Dialect,
    position: tuple[Any, ...] | None,
    described: Described,
    decimals: str,
    omit: Sequence[str] = (),
    values: Sequence[str] = (),
) -> tuple[str, dict[str, Any]] | None:
    """The query rewritten so PostgreSQL writes each row's JSON object itself (without the
    ``omit`` columns), followed by the cursor's values and then the ``values`` columns;
    ``None`` when a column's type is not one it can write exactly."""
    quote = _quoter(dialect)
    fields = []
    for name in described.columns:
        if name in omit:
            continue
        type_name = _FAST_TYPES.get(described.types[name])
        if type_name is None:
            return None
        value = _fast_expression("s." + quote(name), type_name, decimals)
        fields.append((name, value, _value_text(value, type_name, decimals)))
    where, order, params = _cursor_clauses(config, dialect, position, "s", described)
    keys = "".join(f", {column}" for column in [*order, *(f"s.{quote(v)}" for v in values)])
    inner = config.query.strip().rstrip(";").strip()
    # UTF-8 bytes, fetched in binary: psycopg hands them over without a Python call per row.
    built = _json_object([(name, text) for name, _, text in fields])
    if built is not None:
        sql = f"SELECT convert_to({built}, 'UTF8') AS loader_json{keys}\nFROM (\n{inner}\n) AS s"
    else:
        projection = ", ".join(f"{value} AS {quote(name)}" for name, value, _ in fields)
        sql = (
            f"SELECT convert_to(row_to_json(loader_row)::text, 'UTF8') AS loader_json{keys}\n"
            f"FROM (\n{inner}\n) AS s\n"
            f"CROSS JOIN LATERAL (SELECT {projection}) AS loader_row"
        )
    if where:
        sql += f"\nWHERE {where}"
    if order:
        sql += f"\nORDER BY {', '.join(order)}"
    return sql, params


def cursor_query(
    config: jobmodel.Source,
    dialect: sa.Dialect,
    position: tuple[Any, ...] | None,
    described: Described | None = None,
) -> tuple[str, dict[str, Any]]:
    """The job's query wrapped so rows come in ``(column, key)`` order, strictly after
    ``position`` (or from ``cursor.start``), within the lag horizon.

    Keyset pagination: no OFFSET, and rows sharing the column's value are told apart by
    the key, so none is skipped or re-sent at a boundary.
    """
    where, order, params = _cursor_clauses(config, dialect, position, "loader_source", described)
    inner = config.query.strip().rstrip(";").strip()
    sql = f"SELECT * FROM (\n{inner}\n) AS loader_source"
    if where:
        sql += f"\nWHERE {where}"
    return sql + f"\nORDER BY {', '.join(order)}", params


@dataclass(frozen=True)
class Described:
    """What PostgreSQL says about the query before it runs: its columns, their type
    OIDs, and the session's own time zone (loader reads in UTC)."""

    columns: tuple[str, ...]
    types: dict[str, int]
    zone: str


_INTEGER_TYPES = {20: "bigint", 21: "smallint", 23: "integer", 1700: "numeric"}
_TIME_TYPES = {1184: "timestamptz", 1114: "timestamp", 1082: "date"}


def _type_name(oid: int | None) -> str:
    if oid is None:
        return "unknown"
    return _INTEGER_TYPES.get(oid) or _TIME_TYPES.get(oid) or _FAST_TYPES.get(oid) or f"oid {oid}"


def _cursor_clauses(
    config: jobmodel.Source,
    dialect: sa.Dialect,
    position: tuple[Any, ...] | None,
    alias: str,
    described: Described | None = None,
) -> tuple[str, list[str], dict[str, Any]]:
    """The cursor's WHERE condition, ORDER BY columns and parameters (all empty without
    a cursor), over the query aliased as ``alias``.

    On PostgreSQL (``described``), timestamp and date columns also get an upper bound,
    the database's ``now() - lag`` (a date column: days that ended before it), so rows
    stamped later, or in the future, wait for a later run instead of moving the
    checkpoint past rows that have not committed yet.
    """
    cursor = config.cursor
    if cursor is None:
        return "", [], {}
    quote = _quoter(dialect)
    columns = [f"{alias}.{quote(cursor.column)}"]
    if cursor.key:
        columns.append(f"{alias}.{quote(cursor.key)}")
    params: dict[str, Any] = {}
    conditions: list[str] = []
    if position is not None:
        names = [f":loader_after_{i}" for i in range(len(columns))]
        params.update({name[1:]: value for name, value in zip(names, position, strict=True)})
        if len(columns) == 1:
            conditions.append(f"{columns[0]} > {names[0]}")
        else:
            conditions.append(f"({', '.join(columns)}) > ({', '.join(names)})")
    elif cursor.start is not None:
        conditions.append(f"{columns[0]} >= :loader_start")
        params["loader_start"] = cursor.start
    if described is not None:
        bound = _upper_bound(config, described, columns[0])
        if bound:
            conditions.append(bound)
            params["loader_lag"] = cursor.lag
            if ":loader_zone" in bound:
                params["loader_zone"] = described.zone
    elif cursor.lag:
        raise JobConfigError(
            [f"source.cursor.lag: needs PostgreSQL (the database's clock); {dialect.name} "
             "has none loader can use. Remove lag or use a PostgreSQL source"]
        )  # fmt: skip
    # NULL cursor values never compare: with on_null: fail, open_stream refuses the
    # query before anything is sent; with skip, they are simply left out.
    conditions += [f"{column} IS NOT NULL" for column in columns]
    return " AND ".join(conditions), columns, params


def _upper_bound(config: jobmodel.Source, described: Described, column: str) -> str:
    """The upper-bound condition for the cursor column's type; refuses cursor columns and
    keys whose order cannot make a checkpoint safe."""
    cursor = config.cursor
    assert cursor is not None
    column_type = described.types.get(cursor.column)
    key_type = described.types.get(cursor.key) if cursor.key else None
    if column_type in _INTEGER_TYPES and cursor.lag:
        raise JobConfigError(
            [f"source.cursor.lag: applies to timestamp and date cursor columns; "
             f"{cursor.column!r} is {_type_name(column_type)}. Remove lag"]
        )  # fmt: skip
    if column_type not in _INTEGER_TYPES and column_type not in _TIME_TYPES:
        raise QueryError(
            f"source.cursor.column {cursor.column!r} is {_type_name(column_type)}; a cursor "
            "column must be a timestamp, a date or an integer that never decreases"
        )
    if cursor.key and key_type not in _INTEGER_TYPES and not cursor.lag:
        raise QueryError(
            f"source.cursor.key {cursor.key!r} is {_type_name(key_type)}: among rows that "
            f"share a {cursor.column!r}, one committed later may get a lower key and be "
            "skipped. Use an increasing key (a sequence or identity column), or set "
            "source.cursor.lag (e.g. 30s) so rows are read only once they have settled"
        )
    now = "now()" if column_type == 1184 else "(now() AT TIME ZONE :loader_zone)"
    horizon = f"{now} - make_interval(secs => :loader_lag)"
    if column_type == 1082:
        return f"{column} < ({horizon})::date"
    if column_type in _TIME_TYPES:
        return f"{column} <= {horizon}"
    return ""


def create_engine(config: jobmodel.Source, redactor: Redactor) -> sa.Engine:
    """An engine for one run: no pool, json/jsonb kept as exact text on PostgreSQL."""
    url = engine_url(config.url)
    try:
        # The rows are read in a thread other than the one that connects (one at a time).
        connect_args = {"check_same_thread": False} if url.get_backend_name() == "sqlite" else {}
        engine = sa.create_engine(url, poolclass=NullPool, connect_args=connect_args)
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        missing = getattr(exc, "name", None) or url.drivername
        hint = DRIVER_HINTS.get(str(missing), str(missing))
        raise SourceError(
            f"source.url: no driver for {url.drivername!r} ({exc}); "
            f"install it with: pip install {hint}"
        ) from exc
    if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
        from psycopg.types.json import set_json_loads

        @sa.event.listens_for(engine, "connect")
        def _exact_json(dbapi_connection: Any, _record: Any) -> None:
            set_json_loads(json_fragment, dbapi_connection)

    return engine


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
) -> Iterator[RowStream]:
    """Connect, start a read-only transaction and execute the query; with a cursor,
    only the rows after ``position`` (see :func:`cursor_query`). ``omit`` and ``values``
    name columns to leave out of the rows' JSON and to hand over as they are
    (``RowStream.value_indexes``); :class:`QueryError` if the query lacks one.

    On PostgreSQL (psycopg), when every column has a type it can write exactly, the
    database builds each row's JSON (:func:`fast_query`); ``fast=False`` forbids that.

    Raises :class:`SourceError` (connection or query failed) or :class:`QueryError`
    (two columns share a name) before any row is yielded.
    """
    engine = create_engine(config, redactor)
    where = redactor.url(engine.url.render_as_string(hide_password=True))
    try:
        try:
            connection = engine.connect()
        except SQLAlchemyError as exc:
            raise SourceError(
                f"cannot connect to {where}: {driver_message(exc, redactor)}; check source.url "
                "and that the database is up"
            ) from exc
        with connection:
            try:
                zone = _begin_read_only(connection, config)
            except SQLAlchemyError as exc:
                raise SourceError(f"cannot start a read-only transaction on {where}: "
                                  f"{driver_message(exc, redactor)}") from exc  # fmt: skip
            described = None
            if connection.dialect.name == "postgresql":
                described = _describe(connection, config, zone or "UTC", where, redactor)
            _refuse_nulls(connection, config, where, redactor)
            if fast and described is not None and connection.dialect.driver == "psycopg":
                fast_stream = _open_fast(
                    connection, config, position, decimals, described, where, redactor,
                    omit, values,
                )  # fmt: skip
                if fast_stream is not None:
                    with fast_stream as stream:
                        yield stream
                    return
            query, params = config.query, dict(config.params)
            if config.cursor is not None:
                query, extra = cursor_query(config, connection.dialect, position, described)
                params.update(extra)
            try:
                result = connection.execution_options(
                    stream_results=True, yield_per=config.fetch_size
                ).execute(sa.text(query), params)
            except SQLAlchemyError as exc:
                raise SourceError(
                    f"query failed on {where}: {driver_message(exc, redactor)}; check source.query"
                ) from exc
            try:
                columns = tuple(result.keys())
                _refuse_duplicates(columns)
                _named_columns(columns, omit, "target.omit")
                value_indexes = _named_columns(columns, values, "target.url")
                utc_columns, json_columns = _mysql_types(engine.dialect, result)
                yield RowStream(
                    columns=columns,
                    chunks=_chunks(result, config.fetch_size, where, redactor),
                    utc_datetimes=engine.dialect.name == "postgresql",
                    cursor_indexes=_cursor_indexes(config, columns),
                    utc_columns=utc_columns,
                    json_columns=json_columns,
                    value_indexes=value_indexes,
                )
            finally:
                result.close()
    finally:
        engine.dispose()


def _describe(
    connection: Connection, config: jobmodel.Source, zone: str, where: str, redactor: Redactor
) -> Described:
    """Ask PostgreSQL for the query's columns and types (``LIMIT 0``: nothing runs)."""
    inner = config.query.strip().rstrip(";").strip()
    try:
        probe = connection.execute(
            sa.text(f"SELECT * FROM (\n{inner}\n) AS s LIMIT 0"), dict(config.params)
        )
        description = probe.cursor.description or []
        probe.close()
    except SQLAlchemyError as exc:
        raise SourceError(
            f"query failed on {where}: {driver_message(exc, redactor)}; check source.query"
        ) from exc
    columns = tuple(column[0] for column in description)
    _refuse_duplicates(columns)
    _cursor_indexes(config, columns)
    types = {column[0]: cast(int, column[1]) for column in description}
    return Described(columns, types, zone)


def _refuse_nulls(
    connection: Connection, config: jobmodel.Source, where: str, redactor: Redactor
) -> None:
    """With ``on_null: fail``, stop before anything is sent if any row of the query has a
    NULL cursor column or key (such a row could never be placed after a checkpoint)."""
    cursor = config.cursor
    if cursor is None or cursor.on_null != "fail":
        return
    quote = _quoter(connection.dialect)
    names = [cursor.column] + ([cursor.key] if cursor.key else [])
    inner = config.query.strip().rstrip(";").strip()
    test = " OR ".join(f"s.{quote(name)} IS NULL" for name in names)
    try:
        found = connection.execute(
            sa.text(f"SELECT {', '.join('s.' + quote(n) for n in names)} "
                    f"FROM (\n{inner}\n) AS s WHERE {test} LIMIT 1"),
            dict(config.params),
        ).first()  # fmt: skip
    except SQLAlchemyError as exc:
        raise SourceError(
            f"query failed on {where}: {driver_message(exc, redactor)}; check source.query"
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
) -> contextlib.AbstractContextManager[RowStream] | None:
    """When the database can write the rows' JSON, run :func:`fast_query`, streamed.
    ``None`` when the generic path must be used."""
    params = dict(config.params)
    columns = described.columns
    _named_columns(columns, omit, "target.omit")
    _named_columns(columns, values, "target.url")
    built = fast_query(config, connection.dialect, position, described, decimals, omit, values)
    if built is None:
        return None
    sql, extra = built
    statement = sa.text(sql).bindparams(**params, **extra).compile(dialect=connection.dialect)
    raw = connection.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    cursor_count = 1 + (1 if config.cursor and config.cursor.key else 0) if config.cursor else 0

    @contextlib.contextmanager
    def stream() -> Iterator[RowStream]:
        # Streamed (not a DECLAREd cursor) so PostgreSQL may use a parallel plan, and
        # asked to: writing the JSON is the costly part, and workers share it. The statement
        # timeout is then watched here, per chunk, as it is per FETCH on the other path.
        raw.execute("SET LOCAL statement_timeout = 0")
        raw.execute("SET LOCAL IntervalStyle = 'iso_8601'")  # ISO 8601 durations in JSON
        raw.execute("SET LOCAL parallel_setup_cost = 0")
        raw.execute("SET LOCAL parallel_tuple_cost = 0")
        cursor = raw.cursor(binary=True)
        rows = cursor.stream(str(statement), statement.params, size=config.fetch_size)
        chunks = _streamed_chunks(
            raw, rows, config.fetch_size, config.statement_timeout, where, redactor
        )
        try:
            yield RowStream(
                columns=columns,
                chunks=chunks,
                utc_datetimes=True,
                cursor_indexes=tuple(range(1, 1 + cursor_count)),
                json_rows=True,
                value_indexes=tuple(range(1 + cursor_count, 1 + cursor_count + len(values))),
            )
        finally:
            chunks.close()
            cursor.close()

    return stream()


def _streamed_chunks(
    connection: psycopg.Connection[Any],
    rows: Iterator[Any],
    size: int,
    timeout: float,
    where: str,
    redactor: Redactor,
) -> Generator[list[Any], None, None]:
    """Chunks of ``size`` rows, the next one read in a thread while this one is
    processed, so the database never waits for Python; at most two chunks wait in
    memory. Waiting longer than ``timeout`` for a chunk cancels the query."""
    ready: queue.Queue[Any] = queue.Queue(maxsize=2)
    done, timed_out = threading.Event(), threading.Event()
    deadline: float | None = None  # when the chunk being read is overdue
    watching = threading.Condition()  # guards `deadline`; notified when it changes

    def watch() -> None:
        """Cancel the query when a chunk is overdue (one thread for the whole read)."""
        with watching:
            while not done.is_set():
                if deadline is None:
                    watching.wait()
                elif (left := deadline - time.monotonic()) > 0:
                    watching.wait(left)
                else:
                    timed_out.set()
                    connection.cancel_safe()
                    return

    def overdue_at(when: float | None) -> None:
        nonlocal deadline
        with watching:
            deadline = when
            watching.notify()

    def put(item: Any) -> None:
        while not done.is_set():
            try:
                ready.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def fetch() -> None:
        try:
            while not done.is_set():
                if timeout:
                    overdue_at(time.monotonic() + timeout)
                try:
                    chunk = list(itertools.islice(rows, size))
                finally:
                    if timeout:
                        overdue_at(None)
                put(chunk)
                if not chunk:
                    return
        except psycopg.Error as exc:
            put(exc)
        finally:
            with contextlib.suppress(psycopg.Error):
                rows.close()  # type: ignore[attr-defined]  # cancels an unfinished query

    fetcher = threading.Thread(target=fetch, name="loader-fetch", daemon=True)
    fetcher.start()
    if timeout:
        threading.Thread(target=watch, name="loader-fetch-timeout", daemon=True).start()
    try:
        while True:
            item = ready.get()
            if isinstance(item, psycopg.Error):
                if timed_out.is_set():
                    raise SourceError(
                        f"reading rows from {where} failed: canceling statement due to "
                        f"statement timeout (no rows for {timeout:g}s; source.statement_timeout)"
                    ) from item
                reason = redactor.text(" ".join(str(item).split()))
                raise SourceError(f"reading rows from {where} failed: {reason}") from item
            if not item:
                return
            yield item
    finally:
        with watching:
            done.set()
            watching.notify()
        fetcher.join(timeout=1)
        if fetcher.is_alive():  # still waiting for rows nobody wants: stop the query
            connection.cancel_safe()
            fetcher.join()


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


def _begin_read_only(connection: Connection, config: jobmodel.Source) -> str | None:
    """Start the read-only transaction; on PostgreSQL return the session's own time zone
    (the zone of its timestamps without time zone) before switching it to UTC."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        timeout_ms = int(config.statement_timeout * 1000)
        connection.exec_driver_sql("SET TRANSACTION READ ONLY")
        zone = connection.exec_driver_sql("SHOW TimeZone").scalar()
        connection.exec_driver_sql(f"SET LOCAL statement_timeout = {timeout_ms}")
        connection.exec_driver_sql("SET LOCAL TIME ZONE 'UTC'")
        connection.exec_driver_sql("SET LOCAL DateStyle = 'ISO, YMD'")
        return str(zone)
    if dialect == "sqlite":
        connection.exec_driver_sql("PRAGMA query_only = ON")
    elif dialect == "mysql":
        # Before the first query: it applies to the transaction that query starts. No
        # statement timeout: MySQL's would cut a long streamed read, not a slow fetch.
        connection.exec_driver_sql("SET TRANSACTION READ ONLY")
        connection.exec_driver_sql("SET time_zone = '+00:00'")
    return None


def _chunks(
    result: sa.CursorResult[Any], size: int, where: str, redactor: Redactor
) -> Iterator[Sequence[Any]]:
    try:
        # An explicit size: without one, partitions() may fetch the whole result at once.
        yield from result.partitions(size)
    except SQLAlchemyError as exc:
        raise SourceError(
            f"reading rows from {where} failed: {driver_message(exc, redactor)}"
        ) from exc


def _cursor_indexes(config: jobmodel.Source, columns: tuple[str, ...]) -> tuple[int, ...]:
    if config.cursor is None:
        return ()
    names = [config.cursor.column] + ([config.cursor.key] if config.cursor.key else [])
    missing = [name for name in names if name not in columns]
    if missing:
        raise QueryError(
            f"the cursor column {missing[0]!r} is not in the query's result "
            f"(columns: {', '.join(columns)}); select it or fix source.cursor"
        )
    return tuple(columns.index(name) for name in names)


def _named_columns(columns: tuple[str, ...], names: Sequence[str], key: str) -> tuple[int, ...]:
    """The positions of ``names`` in ``columns``; :class:`QueryError` naming ``key`` when
    one is not a column of the query."""
    for name in names:
        if name not in columns:
            raise QueryError(
                f"{key} names the column {name!r}, which the query does not return "
                f"(columns: {', '.join(columns)}); select it or fix {key}"
            )
    return tuple(columns.index(name) for name in names)


def _refuse_duplicates(columns: tuple[str, ...]) -> None:
    seen: dict[str, int] = {}
    for position, name in enumerate(columns, start=1):
        if name in seen:
            raise QueryError(
                f"the query returns two columns named {name!r} (positions {seen[name]} and "
                f"{position}); give one an alias, e.g. SELECT a.{name}, b.{name} AS b_{name}"
            )
        seen[name] = position


def describe_query(config: jobmodel.Source, redactor: Redactor) -> tuple[str, ...]:
    """Connect, and ask the database for the query's columns without reading a row
    (``LIMIT 0`` in a read-only transaction). Raises :class:`SourceError`."""
    columns: tuple[str, ...] = _read_once(
        config, redactor, "SELECT * FROM (\n{query}\n) AS s LIMIT 0",
        lambda result: tuple(result.keys()), "",
    )  # fmt: skip
    _refuse_duplicates(columns)
    _cursor_indexes(config, columns)
    return columns


def key_range(config: jobmodel.Source, redactor: Redactor, column: str) -> tuple[Any, Any]:
    """The smallest and largest value of ``column`` in the query's result (both ``None``
    when it has no rows), read in a read-only transaction. Raises :class:`SourceError`."""
    low, high = _read_once(
        config, redactor,
        f"SELECT min(s.{column}), max(s.{column}) FROM (\n{{query}}\n) AS s",
        lambda result: tuple(result.one()),
        f"cannot read the range of source.partition.column {column!r} on ",
    )  # fmt: skip
    return low, high


def _read_once(
    config: jobmodel.Source,
    redactor: Redactor,
    template: str,
    read: Callable[[sa.CursorResult[Any]], Any],
    doing: str,
) -> Any:
    """Run ``template`` (``{query}`` standing for the job's query) once in a read-only
    transaction of a connection of its own; ``read`` takes what is needed from the
    result. Errors are :class:`SourceError` starting with ``doing`` and the database."""
    engine = create_engine(config, redactor)
    where = redactor.url(engine.url.render_as_string(hide_password=True))
    inner = config.query.strip().rstrip(";").strip()
    try:
        with engine.connect() as connection:
            _begin_read_only(connection, config)
            result = connection.execute(sa.text(template.format(query=inner)), dict(config.params))
            try:
                return read(result)
            finally:
                result.close()
    except SQLAlchemyError as exc:
        raise SourceError(f"{doing}{where}: {driver_message(exc, redactor)}") from exc
    finally:
        engine.dispose()
