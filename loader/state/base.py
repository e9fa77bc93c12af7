"""The connection every part of the SQL state store shares: one engine, one transaction
helper, and who this process is (for locks and run records).

The concern mixins (locks, checkpoints, runs, dead letters, slots, alerts) derive from
:class:`SqlBase` and write each change in one :meth:`SqlBase._transaction`, so a process
killed at any moment leaves the state as it was before or after that write.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from loader.database import driver_message, engine_url
from loader.errors import StateError
from loader.redact import Redactor, mask_url
from loader.state import liveness
from loader.state.schema import migrate


class SqlBase:
    """An open state store database (SQLite or PostgreSQL), its tables created."""

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time) -> None:
        """Connect to ``url`` and create the tables on first use; raise
        :class:`StateError` (with the URL's password masked) if either fails."""
        self._clock = clock
        self._host = liveness.machine()
        self._pid = os.getpid()
        self._started = liveness.started(self._pid)
        parsed = engine_url(url)
        self.url = mask_url(parsed.render_as_string(hide_password=False))
        try:
            if parsed.get_backend_name() == "sqlite":
                self._engine = _sqlite_engine(parsed)
            else:
                self._engine = sa.create_engine(parsed, pool_size=2, pool_pre_ping=True)
            migrate(self._engine, self.url)
        except SQLAlchemyError as exc:
            raise StateError(
                f"cannot open the state store {self.url}: {driver_message(exc, Redactor())}"
            ) from exc

    @contextmanager
    def _transaction(self, what: str) -> Iterator[sa.Connection]:
        """One transaction, committed when the block ends; a database error becomes a
        :class:`StateError` saying ``what`` failed (its ``__cause__`` is the error)."""
        try:
            with self._engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StateError(
                f"state store {self.url}: {what} failed: {driver_message(exc, Redactor())}"
            ) from exc

    def _newest(
        self, table: sa.Table, order: sa.Column[Any], job: str, limit: int, what: str
    ) -> Sequence[sa.Row[Any]]:
        """Up to ``limit`` of ``job``'s rows in ``table``, highest ``order`` first."""
        with self._transaction(what) as conn:
            return conn.execute(
                sa.select(table).where(table.c.job == job).order_by(order.desc()).limit(limit)
            ).all()

    def _dead(self, host: str, pid: int, started: int | None) -> bool:
        """Whether the process ``pid`` (started at ``started``) of ``host`` is known to
        be gone: only a process of this machine can be checked."""
        return host == self._host and liveness.process_gone(pid, started)

    def close(self) -> None:
        """Close the store's connections."""
        self._engine.dispose()


def _sqlite_engine(url: sa.URL) -> sa.Engine:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's BEGIN below decide when transactions start.
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    @sa.event.listens_for(engine, "begin")
    def _begin(connection: sa.Connection) -> None:
        # Take the write lock up front: read-then-write transactions never deadlock.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
