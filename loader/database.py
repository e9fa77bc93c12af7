"""Connections to the source database: URLs, drivers, engines and read-only sessions.

``postgres://`` and ``postgresql://`` URLs mean psycopg 3; a driver's error becomes one
line without secrets. The state store shares the URL parsing and the driver messages.

SQL holding the job's query goes through :func:`execute_query` only, so that no driver
runs a second statement hidden in it (see its docstring).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg.adapt import Loader
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from loader import job as jobmodel
from loader.cursor import POSTGRES_TYPES
from loader.encoding import PgFloat, Unsendable, json_fragment
from loader.errors import ConnectionLostError, JobConfigError, SourceError
from loader.logs import event
from loader.pgtypes import CATALOG_SQL, PgType, refuse
from loader.redact import Redactor, mask_url

log = logging.getLogger("loader")

#: The package to install for each driver SQLAlchemy may fail to import.
DRIVER_HINTS = {
    "psycopg": "psycopg[binary]",
    "MySQLdb": "'dynoloader[mysql]'",
    "pymysql": "'dynoloader[mysql]'",
    "pyodbc": "pyodbc",
    "oracledb": "oracledb",
}

#: MySQL and MariaDB client and server errors that mean the connection is gone: the
#: server has gone away, lost connection during query, connection killed, server shutdown,
#: disconnected for inactivity, and cannot connect (2002, 2003: the server is down).
_MYSQL_LOST = frozenset({2002, 2003, 2006, 2013, 2055, 1927, 1053, 4031})

#: MySQL's CLIENT_MULTI_STATEMENTS capability flag (PyMySQL's ``CLIENT.MULTI_STATEMENTS``).
_MYSQL_MULTI_STATEMENTS = 1 << 16


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
    elif parsed.drivername in ("mysql", "mariadb"):
        parsed = parsed.set(drivername=f"{parsed.drivername}+pymysql")
    return parsed


def driver_message(exc: SQLAlchemyError, redactor: Redactor) -> str:
    """The driver's message, on one line, without secrets or SQLAlchemy's boilerplate."""
    orig = getattr(exc, "orig", None)
    text = str(orig) if orig is not None else str(exc).split("\n(Background", 1)[0]
    text = " ".join(text.split())
    return redactor.text(text)


def connection_lost(exc: BaseException) -> bool:
    """True when ``exc`` (a SQLAlchemy or a driver error) means the connection to the
    database dropped or could not be made, not that the query failed: another connection
    may succeed. A statement timeout or a cancelled query is not a lost connection."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    orig: BaseException | None = exc.orig if isinstance(exc, DBAPIError) else exc
    if isinstance(orig, psycopg.OperationalError):
        # No SQLSTATE: the client lost the socket. Class 08 is a connection exception;
        # 57P01..57P03 are an administrator's terminate, a crash and a restart.
        state = orig.sqlstate
        return state is None or state.startswith("08") or state.startswith("57P")
    if type(orig).__name__ in ("OperationalError", "InterfaceError") and orig and orig.args:
        return orig.args[0] in _MYSQL_LOST  # PyMySQL's and mysqlclient's (code, message)
    return False


def connect(engine: sa.Engine, where: str, redactor: Redactor) -> Connection:
    """A connection of ``engine``; :class:`ConnectionLostError` when the database cannot
    be reached (:class:`SourceError` for other refusals, such as a wrong password)."""
    try:
        return engine.connect()
    except SQLAlchemyError as exc:
        raise failure(
            f"cannot connect to {where}: {driver_message(exc, redactor)}; check source.url "
            "and that the database is up", exc,
        ) from exc  # fmt: skip


@contextmanager
def closing(connection: Connection) -> Iterator[Connection]:
    """Close ``connection`` after the block. A connection that was lost cannot roll its
    read-only transaction back, and need not (the server ended it): what the block
    raised stands, not the failed rollback."""
    try:
        yield connection
    finally:
        try:
            connection.close()
        except SQLAlchemyError as exc:
            event(log, "source.close_failed", logging.DEBUG, error=exc)
            with contextlib.suppress(SQLAlchemyError):
                connection.invalidate()


def abandon_unread(result: sa.CursorResult[Any]) -> None:
    """Forget the rows a lost connection will never send: PyMySQL's unbuffered result
    would otherwise try to read them from the closed socket when it is collected, and
    print a traceback."""
    cursor = getattr(result.context, "cursor", None)
    unread = getattr(cursor, "_result", None)
    if getattr(unread, "unbuffered_active", False):
        unread.unbuffered_active = False  # type: ignore[union-attr]


def failure(message: str, exc: BaseException) -> SourceError:
    """The error for ``message``: :class:`ConnectionLostError` when the driver's ``exc``
    means the connection dropped or could not be made, else :class:`SourceError`."""
    return ConnectionLostError(message) if connection_lost(exc) else SourceError(message)


def create_engine(config: jobmodel.Source, redactor: Redactor) -> sa.Engine:
    """An engine for one run: no pool, json/jsonb kept as exact text on PostgreSQL.
    Raises :class:`SourceError` naming the package to install when the driver is missing."""
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

        @sa.event.listens_for(engine, "connect")
        def _exact_values(dbapi_connection: Any, _record: Any) -> None:
            _register_loaders(dbapi_connection)

    if engine.dialect.name == "mysql":

        @sa.event.listens_for(engine, "do_connect")
        def _one_statement(_dialect: Any, _record: Any, _args: Any, kwargs: Any) -> None:
            # A URL's ?client_flag= could ask for several statements per query: never.
            flags = int(kwargs.get("client_flag", 0))
            kwargs["client_flag"] = flags & ~_MYSQL_MULTI_STATEMENTS

    return engine


def _register_loaders(connection: Any) -> None:
    """Make psycopg (the generic path) read PostgreSQL values as loader's table says,
    as the fast path writes them: json/jsonb as exact text, intervals, inet and cidr as
    PostgreSQL's text (ISO 8601 durations, with months), and dates and times outside
    what Python holds (infinity, BC, after 9999, 24:00) as :class:`Unsendable`."""
    from psycopg.pq import Format
    from psycopg.types.json import set_json_loads
    from psycopg.types.string import TextLoader

    set_json_loads(json_fragment, connection)
    adapters = connection.adapters
    for oid in (1186, 869, 650):  # interval, inet, cidr
        adapters.register_loader(oid, TextLoader)
    for oid in (700, 701):  # real, double precision
        adapters.register_loader(oid, _FloatLoader)
    for oid in (1082, 1083, 1114, 1184, 1266):  # date, time, timestamp, timestamptz, timetz
        adapters.register_loader(oid, _tolerant(adapters.get_loader(oid, Format.TEXT)))


class _FloatLoader(Loader):
    """Floats as :class:`PgFloat`: values that keep the database's text."""

    def load(self, data: Any) -> PgFloat:
        return PgFloat(bytes(data).decode())


@functools.cache  # one class per base: psycopg keeps every loader class it sees for good
def _tolerant(base: Any) -> Any:
    """A psycopg loader reading as ``base`` does, but returning what ``base`` cannot
    read (a value Python's dates and times cannot hold) as :class:`Unsendable`."""
    import psycopg

    class Tolerant(Loader):
        def __init__(self, oid: int, context: Any = None) -> None:
            super().__init__(oid, context)
            self.loader = base(oid, context)

        def load(self, data: Any) -> Any:
            try:
                return self.loader.load(data)
            except (psycopg.DataError, ValueError):
                return Unsendable(bytes(data).decode())

    return Tolerant


def execute_query(
    connection: Connection, sql: str, params: dict[str, Any], fetch_size: int | None = None
) -> sa.CursorResult[Any]:
    """Execute ``sql``, which holds the job's query, so that it cannot run a second
    statement: through a server-side cursor, which psycopg declares with the extended
    protocol (one statement per message: PostgreSQL refuses more), while PyMySQL
    connects without multi-statement support and sqlite3 runs one statement per call.
    Without a server-side cursor, psycopg would send a query that has no parameters
    with the simple protocol, which runs every statement in it, ``COMMIT`` included."""
    options: dict[str, Any] = {"stream_results": True}
    if fetch_size is not None:
        options["yield_per"] = fetch_size
    return connection.execution_options(**options).execute(sa.text(sql), params)


def begin_read_only(connection: Connection, config: jobmodel.Source) -> str | None:
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
        connection.exec_driver_sql("SET LOCAL IntervalStyle = 'iso_8601'")  # P1Y2M
        return str(zone)
    if dialect == "sqlite":
        connection.exec_driver_sql("PRAGMA query_only = ON")
    elif dialect == "mysql":
        # Before the first query: it applies to the transaction that query starts. No
        # statement timeout: MySQL's would cut a long streamed read, not a slow fetch.
        connection.exec_driver_sql("SET TRANSACTION READ ONLY")
        connection.exec_driver_sql("SET time_zone = '+00:00'")
    return None


def refuse_types(
    connection: Connection,
    columns: tuple[str, ...],
    types: dict[str, int],
    where: str,
    redactor: Redactor,
) -> None:
    """Look the columns' types up in the catalog (those the fast path writes are known
    to be fine) and raise :class:`EncodingError` for one loader refuses (see
    :mod:`loader.pgtypes`), before any row is read, on either path."""
    oids = sorted({oid for oid in types.values() if oid not in POSTGRES_TYPES})
    if not oids:
        return
    try:
        found = connection.execute(sa.text(CATALOG_SQL), {"oids": oids}).all()
    except SQLAlchemyError as exc:
        raise SourceError(
            f"cannot read the result's column types on {where}: {driver_message(exc, redactor)}"
        ) from exc
    catalog = {row[0]: PgType(*row) for row in found}
    refuse(columns, types, catalog)


def read_once(
    config: jobmodel.Source,
    redactor: Redactor,
    sql: str,
    read: Callable[[sa.CursorResult[Any]], Any],
    doing: str,
) -> Any:
    """Run ``sql`` (with the job's parameters) once in a read-only transaction of a
    connection of its own; ``read`` takes what is needed from the result. Errors are
    :class:`SourceError` starting with ``doing`` and the database."""
    engine = create_engine(config, redactor)
    where = redactor.url(engine.url.render_as_string(hide_password=True))
    try:
        with engine.connect() as connection:
            begin_read_only(connection, config)
            result = execute_query(connection, sql, dict(config.params))
            try:
                return read(result)
            finally:
                result.close()
    except SQLAlchemyError as exc:
        raise SourceError(f"{doing}{where}: {driver_message(exc, redactor)}") from exc
    finally:
        engine.dispose()
