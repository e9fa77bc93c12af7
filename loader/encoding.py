"""Rows to JSON bytes, with exact types.

=========================  =================================================================
database value             JSON
=========================  =================================================================
integer (any size)         number with every digit
numeric / decimal          number with its exact digits (never through float), or a string
                           with ``target.decimals: string``; NaN and ±Infinity become null
float                      shortest round-trip number (PostgreSQL's text, :class:`PgFloat`);
                           NaN and ±Infinity become null
timestamptz                RFC 3339 in UTC: ``2024-03-10T07:59:58.9134Z`` (no trailing zeros)
timestamp                  ISO 8601 without offset: ``2024-03-10T07:59:58.913402``
date / time                ``2024-03-10`` / ``07:59:58.5``
infinite, BC, year > 9999  :class:`~loader.errors.EncodingError` (:class:`Unsendable`)
interval                   ISO 8601 duration (PostgreSQL's text: ``P1Y2M3DT4H5M6.5S``)
uuid                       lowercase string
json / jsonb               embedded JSON value (exact text from the database)
array                      array, nulls kept
bytea / blob               base64 string
inet / cidr                string
boolean, NULL              true / false, null
=========================  =================================================================

README's "Rows to JSON" table is the full contract for PostgreSQL, whose fast path
(:mod:`loader.pgjson`) writes the same bytes; :mod:`loader.pgtypes` lists the types
refused before any row is read. A value of any other type is an
:class:`~loader.errors.EncodingError` naming the column and the type: cast it in SQL
(``col::text``) to send it.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import quote

import orjson

from loader.errors import EncodingError

_INT64 = range(-(2**63), 2**63)
_IP_TYPES = (
    ipaddress.IPv4Address,
    ipaddress.IPv6Address,
    ipaddress.IPv4Network,
    ipaddress.IPv6Network,
    ipaddress.IPv4Interface,
    ipaddress.IPv6Interface,
)


def json_fragment(text: bytes | str) -> Any:
    """Wrap raw JSON text so it is embedded as is (used for json/jsonb columns).

    Line breaks become spaces: outside strings they are mere whitespace (inside, JSON
    forbids them raw), and NDJSON needs each row on one line."""
    raw = text.encode() if isinstance(text, str) else bytes(text)
    if b"\n" in raw or b"\r" in raw:
        raw = raw.replace(b"\r", b" ").replace(b"\n", b" ")
    return orjson.Fragment(raw)


def dumps(value: Any) -> bytes:
    """Encode a plain Python value (envelope fields, test fixtures) as compact JSON."""
    try:
        return orjson.dumps(value, default=_default_number)
    except (orjson.JSONEncodeError, TypeError):
        return orjson.dumps(_widen(value, _default_number), default=_default_number)


def loads(data: bytes) -> Any:
    """Decode JSON, numbers with a fraction as exact ``Decimal`` (not on a hot path)."""
    return json.loads(data, parse_float=Decimal)


def iso_duration(value: timedelta) -> str:
    """``timedelta`` as an ISO 8601 duration (``P1DT2H3M4.5S``, ``-PT1S``)."""
    sign = "-" if value < timedelta(0) else ""
    value = abs(value)
    hours, rest = divmod(value.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    secs = f"{seconds}.{value.microseconds:06d}".rstrip("0").rstrip(".")
    date = f"{value.days}D" if value.days else ""
    clock = "".join(f"{n}{unit}" for n, unit in ((hours, "H"), (minutes, "M")) if n) + (
        f"{secs}S" if secs != "0" else ""
    )
    if not date and not clock:
        return "PT0S"
    return f"{sign}P{date}" + (f"T{clock}" if clock else "")


class PgFloat(float):
    """A PostgreSQL float with its text, which is sent as is (``2``, ``1e-07``), so the
    generic path writes what the database writes on the fast path (``2.0``, ``1e-7``)."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> PgFloat:
        value = super().__new__(cls, text)
        value.text = text
        return value


class Unsendable:
    """A date or time the driver read as text because Python cannot hold it: infinity,
    a year before 1 or after 9999 (refused, see :func:`unsendable_message`), or a time
    of 24:00:00 (sent as is)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def unsendable_message(column: str, text: str, *, in_array: bool = False) -> str:
    """The error for a date or timestamp ``text`` in ``column`` (in an element of its
    array) that JSON cannot carry."""
    name = column if column.isidentifier() and column.islower() else f'"{column}"'
    if "infinity" in text:
        null = f"array_replace({name}, '{text}', NULL)" if in_array else f"NULLIF({name}, '{text}')"
        return (
            f"column {column!r} holds {text}, which no JSON date can carry; send NULL in its "
            f"place with {null} in the query, or its text with {name}::text"
        )
    return (
        f"column {column!r} holds {text}, outside the years 1 to 9999 that a JSON date "
        f"(RFC 3339) can carry; send its text with {name}::text in the query, or leave "
        "such rows out"
    )


def _iso_time(value: datetime | time) -> Any:
    """ISO 8601 as PostgreSQL writes it in JSON: the fraction without trailing zeros,
    an aware datetime in UTC with ``Z``. The common cases (naive, or in UTC as
    PostgreSQL's are) are formatted by orjson, several times faster."""
    if value.tzinfo is None or (value.tzinfo is UTC and isinstance(value, datetime)):
        raw = orjson.dumps(value, option=orjson.OPT_UTC_Z)
        if value.microsecond % 10 or not value.microsecond:
            return orjson.Fragment(raw)
        end = -2 if value.tzinfo is UTC else -1  # before Z" or "
        return orjson.Fragment(raw[:end].rstrip(b"0") + raw[end:])
    if isinstance(value, datetime):
        if value.utcoffset() is None:
            return _iso_time(value.replace(tzinfo=None))
        return _iso_time(value.astimezone(UTC))
    offset = value.isoformat()[len(value.replace(tzinfo=None).isoformat()) :]
    text = value.replace(tzinfo=None).isoformat()
    return (text.rstrip("0") if value.microsecond else text) + offset


def _default_common(value: Any) -> Any:
    if isinstance(value, datetime | time):
        return _iso_time(value)
    if isinstance(value, PgFloat):
        return orjson.Fragment(value.text) if math.isfinite(value) else None
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, timedelta):
        return iso_duration(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Unsendable) and value.text.startswith("24:"):
        return value.text
    if isinstance(value, _IP_TYPES):
        return str(value)
    if isinstance(value, set | frozenset):
        return list(value)
    raise TypeError(
        f"cannot encode a value of type {type(value).__module__}.{type(value).__name__}"
    )


def _default_number(value: Any) -> Any:
    if isinstance(value, datetime):
        return _iso_time(value)
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value)) if value.is_finite() else None
    return _default_common(value)


def _default_string(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value) if value.is_finite() else None
    return _default_common(value)


def _widen(value: Any, default: Callable[[Any], Any]) -> Any:
    """Slow path: make values orjson refuses natively (ints past 64 bits, aware times)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if value in _INT64 else orjson.Fragment(str(value))
    if isinstance(value, dict):
        return {k: _widen(v, default) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_widen(v, default) for v in value]
    if isinstance(value, date | time | Decimal | bytes | bytearray | memoryview | timedelta):
        return default(value)
    return value


@dataclass(frozen=True)
class Framing:
    """How encoded rows are joined into one request body: ``prefix row sep row ... suffix``."""

    prefix: bytes
    separator: bytes
    suffix: bytes
    content_type: str

    def overhead(self) -> int:
        """Bytes a body of one row adds around that row."""
        return len(self.prefix) + len(self.suffix)

    def body(self, rows: Sequence[bytes]) -> bytes:
        """The request body holding ``rows``."""
        return self.prefix + self.separator.join(rows) + self.suffix


def framing(
    fmt: Literal["json", "ndjson"],
    envelope_key: str | None = None,
    envelope_fields: dict[str, Any] | None = None,
    *,
    single: bool = False,
) -> Framing:
    """The framing for ``fmt``: a JSON array (optionally inside an envelope) or NDJSON.
    ``single`` frames one row per body: the row's object itself, or inside the envelope."""
    if fmt == "ndjson":
        return Framing(b"", b"\n", b"\n", "application/x-ndjson")
    open_, close = (b"", b"") if single else (b"[", b"]")
    if envelope_key is None:
        return Framing(open_, b",", close, "application/json")
    key = dumps(envelope_key)
    fields = dumps(envelope_fields or {})
    head = fields[:-1] + b"," if envelope_fields else b"{"
    return Framing(head + key + b":" + open_, b",", close + b"}", "application/json")


class RowEncoder:
    """Encodes rows (sequences in ``columns`` order) as JSON objects.

    Dates and times are written as PostgreSQL writes them in JSON (the fraction without
    trailing zeros, aware datetimes in UTC with ``Z``). ``utc_datetimes`` (the PostgreSQL
    source's promise that aware datetimes are in UTC) no longer changes the output.
    """

    def __init__(
        self,
        columns: Sequence[str],
        *,
        decimals: Literal["number", "string"] = "number",
        utc_datetimes: bool = False,
        utc_columns: Sequence[int] = (),
        json_columns: Sequence[int] = (),
        omit: Sequence[str] = (),
        shape: Sequence[str] = (),
    ) -> None:
        self.columns = tuple(columns)
        self._shape = tuple(shape)  # send the row as these values, one line each
        self._omit = tuple(omit)  # columns left out of the objects
        # Columns whose naive datetimes are UTC instants, and whose text is JSON.
        self._utc_columns = tuple(utc_columns)
        self._json_columns = tuple(json_columns)
        self._default = _default_number if decimals == "number" else _default_string
        self._option = (
            orjson.OPT_UTC_Z | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS
        )

    def encode(self, row: Sequence[Any]) -> bytes:
        """One row as a JSON object; raises :class:`EncodingError` naming the column."""
        if self._utc_columns or self._json_columns:
            row = self._mend(row)
        record = dict(zip(self.columns, row, strict=True))
        if self._shape:
            return b"\n".join(self._value(name, record[name]) for name in self._shape)
        for name in self._omit:
            del record[name]
        try:
            return orjson.dumps(record, default=self._default, option=self._option)
        except (orjson.JSONEncodeError, TypeError):
            return self._encode_slowly(record)

    def _value(self, name: str, value: Any) -> bytes:
        """One column's value as JSON (a ``shape`` column's)."""
        try:
            return orjson.dumps(value, default=self._default, option=self._option)
        except (orjson.JSONEncodeError, TypeError):
            return self._encode_slowly({name: value})[len(orjson.dumps(name)) + 2 : -1]

    def _mend(self, row: Sequence[Any]) -> list[Any]:
        values = list(row)
        for index in self._utc_columns:
            value = values[index]
            if isinstance(value, datetime) and value.tzinfo is None:
                values[index] = value.replace(tzinfo=UTC)
        for index in self._json_columns:
            if isinstance(values[index], str | bytes):
                values[index] = json_fragment(values[index])
        return values

    def _encode_slowly(self, record: dict[str, Any]) -> bytes:
        widened = {}
        for column, value in record.items():
            unsendable = _unsendable(value)
            if unsendable is not None:
                raise EncodingError(
                    unsendable_message(column, unsendable.text, in_array=isinstance(value, list))
                )
            try:
                widened[column] = _widen(value, self._default)
                orjson.dumps(widened[column], default=self._default, option=self._option)
            except (orjson.JSONEncodeError, TypeError) as exc:
                reason = str(exc.__cause__ or exc)
                raise EncodingError(
                    f"column {column!r}: {reason}; cast it in the query "
                    f"(e.g. {column}::text) to send it as a string"
                ) from exc
        return orjson.dumps(widened, default=self._default, option=self._option)


def _unsendable(value: Any) -> Unsendable | None:
    """The first refused :class:`Unsendable` in ``value`` (or in its arrays)."""
    if isinstance(value, Unsendable):
        return None if value.text.startswith("24:") else value
    if isinstance(value, list):
        return next(filter(None, map(_unsendable, value)), None)
    return None


class UrlFiller:
    """Fills a URL's ``{column}`` placeholders from one row's values, URL-encoded (a
    ``/`` in a value is encoded too, so a value never changes the path's shape)."""

    def __init__(self, template: str, names: Sequence[str]) -> None:
        self.template = template
        self.names = tuple(names)

    def fill(self, values: Sequence[Any], row_number: int) -> str:
        """The URL for the row whose placeholder values are ``values`` (in ``names``
        order); :class:`EncodingError` for a value that cannot stand in a URL."""
        parts = {}
        for name, value in zip(self.names, values, strict=True):
            if value is None:
                raise EncodingError(
                    f"row {row_number}: column {name!r} is NULL, so the URL {self.template} "
                    "cannot be built for it; leave such rows out in the query "
                    f"(WHERE {name} IS NOT NULL) or give them a value"
                )
            parts[name] = quote(_url_text(value, name, row_number), safe="")
        return self.template.format_map(parts)


def _url_text(value: Any, name: str, row_number: int) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, datetime) and value.tzinfo is not None:
        return orjson.dumps(value, option=orjson.OPT_UTC_Z)[1:-1].decode()  # as in the body
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise EncodingError(
        f"row {row_number}: column {name!r} is a {type(value).__name__}, which cannot stand "
        "in a URL; cast it to text in the query"
    )
