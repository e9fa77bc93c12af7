"""The PostgreSQL JSON fast path: the query rewritten so the database writes each row's
JSON object itself, byte for byte what loader's encoding would write.

Only SQL is built here; :mod:`loader.source` runs it and streams the rows.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from loader import job as jobmodel
from loader.cursor import POSTGRES_TYPES, Described, cursor_clauses, inner_query, quoter
from loader.encoding import unsendable_message
from loader.errors import EncodingError

if TYPE_CHECKING:
    import sqlalchemy as sa

# The types whose JSON the database writes itself (with the expression below where its
# own JSON differs from loader's); a result with any other type takes the generic path,
# as does date[], whose elements would each need the check below.
_FAST_TYPES = {oid: name for oid, name in POSTGRES_TYPES.items() if name != "date[]"}

# Types whose JSON is their text form (the finite-number checks are in the expression).
_BARE_JSON = {"bool", "int2", "int4", "int8", "oid", "float4", "float8", "json", "jsonb"}
# Types whose text form never needs escaping inside a JSON string.
_PLAIN_STRINGS = {"uuid", "timestamptz"}
# Column names written into the SQL as JSON keys as they are; any other name (one that
# JSON or SQL would have to escape) takes row_to_json.
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_ $.-]*")


#: What a refused date's SQL error holds: the marker, the column's index, its value.
_UNSENDABLE = "loader-unsendable"
_UNSENDABLE_TEXT = re.compile(_UNSENDABLE + r"/(\d+)/([^\"]*)")
_NON_FINITE = "'{NaN,Infinity,-Infinity}'"


def _fast_expression(column: str, type_name: str, decimals: str, index: int = 0) -> str:
    """SQL for one column's value, such that its JSON (``to_json``) is loader's JSON.
    A date or timestamp outside the years 1 to 9999 (or infinite) fails the query with
    an error :func:`unsendable_error` reads (``index`` is the column's position)."""
    if type_name in ("timestamptz", "timestamp", "date"):
        # The session is in UTC; the text form trims trailing zeros of the fraction.
        value = (
            f"replace(({column} AT TIME ZONE 'UTC')::text, ' ', 'T') || 'Z'"
            if type_name == "timestamptz"
            else column
        )
        # Reading the marker as the column's type fails, and PostgreSQL's error quotes
        # it: "invalid input syntax for type date: "loader-unsendable/3/infinity"".
        refused = f"('{_UNSENDABLE}/{index}/' || {column}::text)::{type_name}"
        return (
            f"CASE WHEN {column} < '0001-01-01' OR {column} >= '10000-01-01' "
            f"THEN {refused}{'::text' if type_name == 'timestamptz' else ''} ELSE {value} END"
        )
    if type_name in ("numeric[]", "float8[]"):
        # Non-finite elements become NULL; to_json would write them as strings ("NaN").
        finite = column
        for special in ("NaN", "Infinity", "-Infinity"):
            finite = f"array_replace({finite}, '{special}', NULL)"
        as_text = "::text[]" if type_name == "numeric[]" and decimals == "string" else ""
        return (
            f"CASE WHEN {column} && {_NON_FINITE}::{type_name} THEN ({finite}){as_text} "
            f"ELSE {column}{as_text} END"
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


def unsendable_error(error: Exception, columns: Sequence[str]) -> EncodingError | None:
    """The :class:`EncodingError` for the database's ``error`` when it is the failure
    :func:`_fast_expression` raises for a date it refuses (else ``None``): the same
    message as the generic path gives."""
    found = _UNSENDABLE_TEXT.search(str(error))
    if found is None or int(found[1]) >= len(columns):
        return None
    return EncodingError(unsendable_message(columns[int(found[1])], found[2]))


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
    hashed: bool = False,
) -> tuple[str, dict[str, Any]] | None:
    """The query rewritten so PostgreSQL writes each row's JSON object itself (without the
    ``omit`` columns), followed by the cursor's values, then the ``values`` columns and,
    with ``omit``, the omitted columns as one JSON object (UTF-8 bytes, for dead letters
    kept whole; see :func:`_omitted_object`), and with ``hashed`` the 64-bit hash of the
    JSON's text (``hashtextextended``, see :mod:`loader.dbdiff`); ``None`` when a
    column's type is not one it can write exactly."""
    quote = quoter(dialect)
    fields = _fields(described, quote, decimals, omit)
    if fields is None:
        return None
    where, order, params = cursor_clauses(config, dialect, position, "s", described)
    keys = "".join(f", {column}" for column in [*order, *(f"s.{quote(v)}" for v in values)])
    if omit:
        keys += f", convert_to({_omitted_object(described, quote, decimals, omit)}, 'UTF8')"
    inner = inner_query(config)
    # UTF-8 bytes, fetched in binary: psycopg hands them over without a Python call per row.
    concatenated = _json_object([(name, text) for name, _, text in fields])
    built = concatenated or "row_to_json(loader_row)::text"
    # The text twice: PostgreSQL writes it once for a row it compares and leaves out.
    keys += f", hashtextextended({built}, 0)" if hashed else ""
    sql = f"SELECT convert_to({built}, 'UTF8') AS loader_json{keys}\nFROM (\n{inner}\n) AS s"
    if concatenated is None:
        projection = ", ".join(f"{value} AS {quote(name)}" for name, value, _ in fields)
        sql += f"\nCROSS JOIN LATERAL (SELECT {projection}) AS loader_row"
    if where:
        sql += f"\nWHERE {where}"
    if order:
        sql += f"\nORDER BY {', '.join(order)}"
    return sql, params


def _omitted_object(
    described: Described, quote: Callable[[str], str], decimals: str, omit: Sequence[str]
) -> str:
    """SQL for the text of a JSON object of the ``omit`` columns, each value as the row's
    JSON would have it (spacing aside, for names that need escaping: it is read back,
    never sent), except that a value loader refuses to send is null instead of an error."""
    pairs, texts = [], []
    for name in omit:
        type_name = _FAST_TYPES.get(described.types[name])
        column = "s." + quote(name)
        if type_name in ("timestamptz", "timestamp", "date"):
            # Not sent, so never a reason to fail the run: a date loader refuses is null.
            value = (
                f"CASE WHEN {column} >= '0001-01-01' AND {column} < '10000-01-01' THEN "
                + (f"replace(({column} AT TIME ZONE 'UTC')::text, ' ', 'T') || 'Z'"
                   if type_name == "timestamptz" else column)
                + " END"
            )  # fmt: skip
        else:
            value = _fast_expression(column, type_name, decimals) if type_name else column
        texts.append((name, _value_text(value, type_name or "", decimals)))
        pairs.append("'" + name.replace("'", "''") + "', " + value)
    built = _json_object(texts)
    if built is not None:
        return built
    # A function takes at most 100 arguments: objects of 50 pairs, merged.
    groups = [", ".join(pairs[i : i + 50]) for i in range(0, len(pairs), 50)]
    return "(" + " || ".join(f"jsonb_build_object({group})" for group in groups) + ")::text"


def _fields(
    described: Described, quote: Callable[[str], str], decimals: str, omit: Sequence[str]
) -> list[tuple[str, str, str]] | None:
    """``(name, SQL for the value, SQL for its JSON text)`` of each column not omitted;
    ``None`` when a column's type is not one the database can write exactly."""
    fields = []
    for index, name in enumerate(described.columns):
        if name in omit:
            continue
        type_name = _FAST_TYPES.get(described.types[name])
        if type_name is None:
            return None
        value = _fast_expression("s." + quote(name), type_name, decimals, index)
        fields.append((name, value, _value_text(value, type_name, decimals)))
    return fields
