"""The PostgreSQL types loader refuses, each with the fix to write in the query.

Both paths (the database writing the JSON, :mod:`loader.pgjson`, and loader encoding
typed values, :mod:`loader.encoding`) send every other type as README's "Rows to JSON"
table says. These are refused before any row is read, whichever path runs, because
their text form is not JSON a consumer can read as the value (``money`` depends on
the locale, a composite's text is ``(1,x)``) or because the driver cannot read them
into values (an array of a type it does not know arrives as the text ``{a,b}``).

Domains need no rule: PostgreSQL describes a domain's column as its base type.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from loader.errors import EncodingError

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")
#: The first OID of types created in a database (built-in types are below it).
FIRST_USER_OID = 16384
#: Catalog lookup for the types ``:oids`` and their arrays' element types, as
#: :class:`PgType` fields (``element`` is 0 for a type that is not an array).
CATALOG_SQL = (
    "SELECT t.oid::int, t.typname::text, t.typtype::text, t.typcategory::text, "
    "t.typelem::int FROM pg_catalog.pg_type AS t WHERE t.oid = ANY(:oids) OR t.oid IN "
    "(SELECT a.typelem FROM pg_catalog.pg_type AS a WHERE a.oid = ANY(:oids))"
)


@dataclass(frozen=True)
class PgType:
    """One row of ``pg_type``: ``kind`` is its ``typtype`` (``b`` base, ``c`` composite,
    ``e`` enum, ``r`` range, ``m`` multirange, ``p`` pseudo) and ``category`` its
    ``typcategory`` (``A`` array, ``G`` geometric...); ``element`` is an array's element."""

    oid: int
    name: str
    kind: str
    category: str
    element: int


def refuse(columns: Sequence[str], types: Mapping[str, int], catalog: Mapping[int, PgType]) -> None:
    """Raise :class:`EncodingError` for the first column whose type loader refuses,
    naming the column, its type and the cast that sends it; ``catalog`` describes each
    column type and each array's element type."""
    for name in columns:
        pg_type = catalog.get(types[name])
        if pg_type is None:
            continue
        problem = _problem(pg_type, catalog)
        if problem is not None:
            what, fix = problem
            raise EncodingError(
                f"column {name!r} is {_display(pg_type, catalog)}, {what}, which loader does "
                f"not send; {fix.format(c=sql_name(name))} in the query"
            )


def sql_name(name: str) -> str:
    """``name`` as an SQL identifier in a suggested fix (double-quoted when it must be)."""
    if _IDENTIFIER.fullmatch(name):
        return name
    return '"' + name.replace('"', '""') + '"'


def _display(pg_type: PgType, catalog: Mapping[int, PgType]) -> str:
    element = catalog.get(pg_type.element) if pg_type.category == "A" else None
    return pg_type.name if element is None else element.name + "[]"


def _problem(pg_type: PgType, catalog: Mapping[int, PgType]) -> tuple[str, str] | None:
    """``(why, fix)`` when ``pg_type`` is refused; ``{c}`` in the fix is the column."""
    if pg_type.category == "A":
        element = catalog.get(pg_type.element)
        if element is None:
            return None
        inner = _problem(element, catalog)
        if inner is not None:
            return inner[0], _ARRAY_FIXES[inner[1]]
        if pg_type.oid >= FIRST_USER_OID:
            return (
                "an array of a type the driver reads as one text ({a,b})",
                "cast it to an array of a built-in type ({c}::text[])",
            )
        return None
    return _scalar_problem(pg_type)


_MONEY_FIX = "cast it to numeric ({c}::numeric)"
_ROW_FIX = "send it as a JSON object with to_jsonb({c})"
_RANGE_FIX = "send its bounds (lower({c}), upper({c})) or its text ({c}::text)"
_TEXT_FIX = "send its text ({c}::text)"
_ARRAY_FIXES = {
    _MONEY_FIX: "cast it to numeric[] ({c}::numeric[])",
    _ROW_FIX: "send it as a JSON array of objects with to_jsonb({c})",
    _RANGE_FIX: "send its text ({c}::text[])",
    _TEXT_FIX: "send its text ({c}::text[])",
}


def _scalar_problem(pg_type: PgType) -> tuple[str, str] | None:
    if pg_type.name == "money":
        return "whose text depends on the locale ($1,234.50)", _MONEY_FIX
    if pg_type.kind == "c" or pg_type.name == "record":
        return "a row type", _ROW_FIX
    if pg_type.kind in ("r", "m"):
        return "a range", _RANGE_FIX
    if pg_type.category == "G":
        return "a geometric type", _TEXT_FIX
    return None
