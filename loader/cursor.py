"""The job's query wrapped for a cursor: keyset predicates, ordering and the lag bound.

Rows come in ``(column, key)`` order, strictly after the last checkpoint; the names and
types of the query's columns (:class:`Described`, from PostgreSQL) decide which cursor
columns are safe and how far behind the database's clock a run reads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loader import job as jobmodel
from loader.errors import JobConfigError, QueryError

if TYPE_CHECKING:
    import sqlalchemy as sa


@dataclass(frozen=True)
class Described:
    """What PostgreSQL says about the query before it runs: its columns, their type
    OIDs, and the session's own time zone (loader reads in UTC)."""

    columns: tuple[str, ...]
    types: dict[str, int]
    zone: str


# PostgreSQL's names for the types whose JSON the database can write itself, exactly as
# loader's encoding table says (see loader.pgjson, which writes them); also the names
# messages give a column's type. Any other type in a result (timestamptz[], bytea[],
# money, geometric types...) takes the generic path.
POSTGRES_TYPES = {
    16: "bool", 17: "bytea", 19: "name", 20: "int8", 21: "int2", 23: "int4", 25: "text",
    26: "oid", 114: "json", 650: "cidr", 700: "float4", 701: "float8", 869: "inet",
    1042: "bpchar", 1043: "varchar", 1082: "date", 1083: "time", 1114: "timestamp",
    1184: "timestamptz", 1186: "interval", 1700: "numeric", 2950: "uuid", 3802: "jsonb",
    1000: "bool[]", 1005: "int2[]", 1007: "int4[]", 1009: "text[]", 1015: "varchar[]",
    1016: "int8[]", 1182: "date[]", 1231: "numeric[]", 1022: "float8[]", 2951: "uuid[]",
    3807: "jsonb[]",
}  # fmt: skip

_INTEGER_TYPES = {20: "bigint", 21: "smallint", 23: "integer", 1700: "numeric"}
_TIME_TYPES = {1184: "timestamptz", 1114: "timestamp", 1082: "date"}


def _type_name(oid: int | None) -> str:
    if oid is None:
        return "unknown"
    return (
        _INTEGER_TYPES.get(oid) or _TIME_TYPES.get(oid) or POSTGRES_TYPES.get(oid) or f"oid {oid}"
    )


def inner_query(config: jobmodel.Source) -> str:
    """The job's query as a subquery: without surrounding space or a trailing ``;``."""
    return config.query.strip().rstrip(";").strip()


def quoter(dialect: sa.Dialect) -> Callable[[str], str]:
    """Quotes identifiers in SQL that goes through ``sa.text()``: as the dialect does,
    but without doubling ``%`` for the driver, which ``text()`` does itself."""
    preparer = dialect.identifier_preparer

    def quote(name: str) -> str:
        escaped = name.replace(preparer.escape_quote, preparer.escape_to_quote)
        return f"{preparer.initial_quote}{escaped}{preparer.final_quote}"

    return quote


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
    where, order, params = cursor_clauses(config, dialect, position, "loader_source", described)
    sql = f"SELECT * FROM (\n{inner_query(config)}\n) AS loader_source"
    if where:
        sql += f"\nWHERE {where}"
    return sql + f"\nORDER BY {', '.join(order)}", params


def cursor_clauses(
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
    checkpoint past rows that have not committed yet. Without ``described``, a ``lag``
    is a :class:`JobConfigError`.
    """
    cursor = config.cursor
    if cursor is None:
        return "", [], {}
    quote = quoter(dialect)
    columns = [f"{alias}.{quote(cursor.column)}"]
    if cursor.key:
        columns.append(f"{alias}.{quote(cursor.key)}")
    conditions, params = _after(cursor, columns, position)
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


def _after(
    cursor: jobmodel.Cursor, columns: list[str], position: tuple[Any, ...] | None
) -> tuple[list[str], dict[str, Any]]:
    """The lower bound: strictly after ``position``, else from ``cursor.start`` if set."""
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
    return conditions, params


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


def cursor_indexes(config: jobmodel.Source, columns: tuple[str, ...]) -> tuple[int, ...]:
    """The positions of the cursor's column and key in ``columns`` (empty without a
    cursor); :class:`QueryError` when the query does not return one of them."""
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


def named_columns(columns: tuple[str, ...], names: Sequence[str], key: str) -> tuple[int, ...]:
    """The positions of ``names`` in ``columns``; :class:`QueryError` naming ``key`` when
    one is not a column of the query."""
    for name in names:
        if name not in columns:
            raise QueryError(
                f"{key} names the column {name!r}, which the query does not return "
                f"(columns: {', '.join(columns)}); select it or fix {key}"
            )
    return tuple(columns.index(name) for name in names)


def refuse_duplicates(columns: tuple[str, ...]) -> None:
    """Refuse a result with two columns of one name (:class:`QueryError`)."""
    seen: dict[str, int] = {}
    for position, name in enumerate(columns, start=1):
        if name in seen:
            raise QueryError(
                f"the query returns two columns named {name!r} (positions {seen[name]} and "
                f"{position}); give one an alias, e.g. SELECT a.{name}, b.{name} AS b_{name}"
            )
        seen[name] = position
