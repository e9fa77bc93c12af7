"""Database URLs and driver messages: what the source and the state store share.

``postgres://`` and ``postgresql://`` URLs mean psycopg 3; a driver's error becomes one
line without secrets.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from loader.errors import JobConfigError
from loader.redact import Redactor, mask_url

#: The package to install for each driver SQLAlchemy may fail to import.
DRIVER_HINTS = {
    "psycopg": "psycopg[binary]",
    "MySQLdb": "'dynoloader[mysql]'",
    "pymysql": "'dynoloader[mysql]'",
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
    elif parsed.drivername in ("mysql", "mariadb"):
        parsed = parsed.set(drivername=f"{parsed.drivername}+pymysql")
    return parsed


def driver_message(exc: SQLAlchemyError, redactor: Redactor) -> str:
    """The driver's message, on one line, without secrets or SQLAlchemy's boilerplate."""
    orig = getattr(exc, "orig", None)
    text = str(orig) if orig is not None else str(exc).split("\n(Background", 1)[0]
    text = " ".join(text.split())
    return redactor.text(text)
