"""One-off questions to the source, each in a read-only transaction of its own: the
query's columns (``loader check``) and the range of a key column (key ranges)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from loader import job as jobmodel
from loader.cursor import cursor_indexes, inner_query, refuse_duplicates
from loader.database import read_once, refuse_types
from loader.redact import Redactor

if TYPE_CHECKING:
    import sqlalchemy as sa

__all__ = ["describe_query", "key_range"]


def describe_query(config: jobmodel.Source, redactor: Redactor) -> tuple[str, ...]:
    """Connect, and ask the database for the query's columns without reading a row
    (``LIMIT 0`` in a read-only transaction). Raises :class:`SourceError`, or
    :class:`EncodingError` for a PostgreSQL column type loader refuses."""

    def read(result: sa.CursorResult[Any]) -> tuple[str, ...]:
        columns = tuple(result.keys())
        if result.dialect.name == "postgresql" and result.cursor is not None:
            types = {c[0]: cast(int, c[1]) for c in result.cursor.description or []}
            refuse_types(result.context.root_connection, columns, types, "", redactor)
        return columns

    inner = inner_query(config)
    columns: tuple[str, ...] = read_once(
        config, redactor, f"SELECT * FROM (\n{inner}\n) AS s LIMIT 0", read, ""
    )
    refuse_duplicates(columns)
    cursor_indexes(config, columns)
    return columns


def key_range(config: jobmodel.Source, redactor: Redactor, column: str) -> tuple[Any, Any]:
    """The smallest and largest value of ``column`` in the query's result (both ``None``
    when it has no rows), read in a read-only transaction. Raises :class:`SourceError`."""
    low, high = read_once(
        config, redactor,
        f"SELECT min(s.{column}), max(s.{column}) FROM (\n{inner_query(config)}\n) AS s",
        lambda result: tuple(result.one()),
        f"cannot read the range of source.partition.column {column!r} on ",
    )  # fmt: skip
    return low, high
