"""What counts as a lost database connection, and the back-off before reconnecting."""

from __future__ import annotations

import psycopg
import pymysql
import pytest
import sqlalchemy.exc

from loader import build_job
from loader.database import connection_lost
from loader.resume import backoff


@pytest.mark.parametrize(
    ("error", "lost"),
    [
        (psycopg.OperationalError("server closed the connection unexpectedly"), True),
        (psycopg.errors.AdminShutdown("terminating connection due to administrator"), True),
        (psycopg.errors.ConnectionFailure("connection failure"), True),
        (psycopg.errors.QueryCanceled("canceling statement due to statement timeout"), False),
        (psycopg.errors.UndefinedTable("relation does not exist"), False),
        (pymysql.err.OperationalError(2013, "Lost connection to server during query"), True),
        (pymysql.err.OperationalError(2006, "MySQL server has gone away"), True),
        (pymysql.err.OperationalError(1927, "Connection was killed"), True),
        (pymysql.err.OperationalError(1205, "Lock wait timeout exceeded"), False),
        (pymysql.err.ProgrammingError(1146, "Table doesn't exist"), False),
    ],
)
def test_driver_errors_are_classified(error: Exception, lost: bool) -> None:
    """A driver's connection errors are a lost connection, bare or wrapped by SQLAlchemy;
    a query's own failures (a timeout, a missing table, a lock wait) are not."""
    assert connection_lost(error) is lost
    wrapped = sqlalchemy.exc.OperationalError("SELECT 1", {}, error)
    assert connection_lost(wrapped) is lost


def test_an_invalidated_connection_is_lost() -> None:
    """SQLAlchemy's own verdict (``connection_invalidated``) is a lost connection."""
    error = sqlalchemy.exc.DBAPIError("SELECT 1", {}, Exception("odd"), connection_invalidated=True)
    assert connection_lost(error)


def test_backoff_doubles_within_half_and_the_cap() -> None:
    """Reconnection n waits between half and all of backoff * 2**(n-1), capped."""
    job = build_job({
        "name": "j", "source": {"url": "sqlite://", "query": "SELECT 1"},
        "target": {"url": "http://127.0.0.1:9/"},
        "retry": {"backoff": "1s", "max_backoff": "5s"},
    })  # fmt: skip
    assert [backoff(job, n, lambda: 0.0) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 2.5]
    assert [backoff(job, n, lambda: 1.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]
