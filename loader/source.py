"""The database side: connect, run the query in a read-only transaction, stream rows.

Rows come from a server-side cursor (``stream_results``), ``fetch_size`` at a time, so
memory is bounded by the fetch size whatever the size of the result.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from loader import job as jobmodel
from loader.encoding import json_fragment
from loader.errors import JobConfigError, QueryError, SourceError
from loader.redact import Redactor, mask_url

_DRIVER_HINTS = {
    "psycopg": "psycopg[binary]",
    "MySQLdb": "mysqlclient",
    "pymysql": "PyMySQL",
    "pyodbc": "pyodbc",
    "oracledb": "oracledb",
}


def engine_url(url: str) -> sa.URL:
    """Parse an SQLAlchemy URL; ``postgres://`` and ``postgresql://`` mean psycopg 3."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise JobConfigError(
            [f"source.url: cannot parse {mask_url(url)!r} as an SQLAlchemy URL"]
        ) from exc
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


@dataclass
class RowStream:
    """An open query result: its column names and an iterator over chunks of rows.

    ``cursor_indexes`` are the positions of the cursor's column and key in each row
    (empty without a cursor).
    """

    columns: tuple[str, ...]
    chunks: Iterator[Sequence[Sequence[Any]]]
    utc_datetimes: bool
    cursor_indexes: tuple[int, ...] = ()


def cursor_query(
    config: jobmodel.Source, dialect: sa.Dialect, position: tuple[Any, ...] | None
) -> tuple[str, dict[str, Any]]:
    """The job's query wrapped so rows come in ``(column, key)`` order, strictly after
    ``position`` (or from ``cursor.start``), within the lag horizon.

    Keyset pagination: no OFFSET, and rows sharing the column's value are told apart by
    the key, so none is skipped or re-sent at a boundary.
    """
    cursor = config.cursor
    assert cursor is not None
    quote = dialect.identifier_preparer.quote
    columns = [f"loader_source.{quote(cursor.column)}"]
    if cursor.key:
        columns.append(f"loader_source.{quote(cursor.key)}")
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
    if cursor.lag:
        if dialect.name != "postgresql":
            raise JobConfigError(
                [f"source.cursor.lag: needs PostgreSQL (the database's clock); {dialect.name} "
                 "has none loader can use. Remove lag or use a PostgreSQL source"]
            )  # fmt: skip
        conditions.append(f"{columns[0]} <= now() - make_interval(secs => :loader_lag)")
        params["loader_lag"] = cursor.lag
    where = " AND ".join(conditions)
    nulls = " OR ".join(f"{column} IS NULL" for column in columns)
    if cursor.on_null == "fail":
        # NULL rows are selected so the run can stop on them instead of skipping them.
        where = f"({where}) OR {nulls}" if where else ""
    else:
        where = f"({where}) AND NOT ({nulls})" if where else f"NOT ({nulls})"
    inner = config.query.strip().rstrip(";").strip()
    sql = f"SELECT * FROM (\n{inner}\n) AS loader_source"
    if where:
        sql += f"\nWHERE {where}"
    return sql + f"\nORDER BY {', '.join(columns)}", params


def create_engine(config: jobmodel.Source, redactor: Redactor) -> sa.Engine:
    """An engine for one run: no pool, json/jsonb kept as exact text on PostgreSQL."""
    url = engine_url(config.url)
    try:
        engine = sa.create_engine(url, poolclass=NullPool)
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        missing = getattr(exc, "name", None) or url.drivername
        hint = _DRIVER_HINTS.get(str(missing), str(missing))
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
    config: jobmodel.Source, redactor: Redactor, *, position: tuple[Any, ...] | None = None
) -> Iterator[RowStream]:
    """Connect, start a read-only transaction and execute the query; with a cursor,
    only the rows after ``position`` (see :func:`cursor_query`).

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
                f"cannot connect to {where}: {_reason(exc, redactor)}; check source.url "
                "and that the database is up"
            ) from exc
        with connection:
            query, params = config.query, dict(config.params)
            if config.cursor is not None:
                query, extra = cursor_query(config, connection.dialect, position)
                params.update(extra)
            try:
                _begin_read_only(connection, config)
                result = connection.execution_options(
                    stream_results=True, yield_per=config.fetch_size
                ).execute(sa.text(query), params)
            except SQLAlchemyError as exc:
                raise SourceError(
                    f"query failed on {where}: {_reason(exc, redactor)}; check source.query"
                ) from exc
            try:
                columns = tuple(result.keys())
                _refuse_duplicates(columns)
                yield RowStream(
                    columns=columns,
                    chunks=_chunks(result, config.fetch_size, where, redactor),
                    utc_datetimes=engine.dialect.name == "postgresql",
                    cursor_indexes=_cursor_indexes(config, columns),
                )
            finally:
                result.close()
    finally:
        engine.dispose()


def _begin_read_only(connection: Connection, config: jobmodel.Source) -> None:
    dialect = connection.dialect.name
    if dialect == "postgresql":
        timeout_ms = int(config.statement_timeout * 1000)
        connection.exec_driver_sql("SET TRANSACTION READ ONLY")
        connection.exec_driver_sql(f"SET LOCAL statement_timeout = {timeout_ms}")
        connection.exec_driver_sql("SET LOCAL TIME ZONE 'UTC'")
    elif dialect == "sqlite":
        connection.exec_driver_sql("PRAGMA query_only = ON")


def _chunks(
    result: sa.CursorResult[Any], size: int, where: str, redactor: Redactor
) -> Iterator[Sequence[Any]]:
    try:
        # An explicit size: without one, partitions() may fetch the whole result at once.
        yield from result.partitions(size)
    except SQLAlchemyError as exc:
        raise SourceError(f"reading rows from {where} failed: {_reason(exc, redactor)}") from exc


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


def _refuse_duplicates(columns: tuple[str, ...]) -> None:
    seen: dict[str, int] = {}
    for position, name in enumerate(columns, start=1):
        if name in seen:
            raise QueryError(
                f"the query returns two columns named {name!r} (positions {seen[name]} and "
                f"{position}); give one an alias, e.g. SELECT a.{name}, b.{name} AS b_{name}"
            )
        seen[name] = position


def _reason(exc: SQLAlchemyError, redactor: Redactor) -> str:
    """The driver's message, on one line, without secrets or SQLAlchemy's boilerplate."""
    orig = getattr(exc, "orig", None)
    text = str(orig) if orig is not None else str(exc).split("\n(Background", 1)[0]
    text = " ".join(text.split())
    return redactor.text(text)
