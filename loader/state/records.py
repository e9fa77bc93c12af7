"""What the state store hands back: frozen records, and cursor positions as stored text.

A position is stored as JSON that tags each value with its type, so a cursor read back
binds to the query exactly as it was read (a ``Decimal`` stays a ``Decimal``, a
``datetime`` keeps its time zone).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, NamedTuple

from loader.errors import StateError
from loader.result import Position
from loader.units import when


@dataclass(frozen=True)
class Lease:
    """A held run lock. ``token`` fences writes made under it."""

    job: str
    owner: str
    token: int


@dataclass(frozen=True)
class Checkpoint:
    """The last acknowledged cursor position of a job."""

    job: str
    fingerprint: str
    position: Position
    run_id: str
    updated_at: float


@dataclass(frozen=True)
class RunRecord:
    """One run as recorded in the history."""

    run_id: str
    job: str
    status: str
    started_at: float
    ended_at: float | None
    host: str
    pid: int
    rows_read: int
    rows_posted: int
    rows_rejected: int
    requests: int
    retries: int
    cursor_from: Position | None
    cursor_to: Position | None
    error: str | None
    #: Batches sent in parts after the endpoint refused a bigger request.
    splits: int = 0
    #: For a run recorded as running whose lock lapsed (it expired unrenewed, was given
    #: up, or its process is gone from this machine): when, as far as the store knows
    #: (the expiry, else the moment it was read). ``None`` while the run holds its lock.
    lock_lapsed_at: float | None = None

    @property
    def lock_lapsed(self) -> str | None:
        """``lock_lapsed_at`` as a local ISO 8601 time, as reports give times."""
        return when(self.lock_lapsed_at) if self.lock_lapsed_at else None


@dataclass(frozen=True)
class SlotRecord:
    """One scheduled slot of a job, as the clock recorded it."""

    job: str
    slot_at: float
    run_id: str
    clock: str
    status: str
    claimed_at: float
    detail: str | None


@dataclass(frozen=True)
class AlertState:
    """What the alerting remembers of a job between runs."""

    job: str
    failing_since: float | None = None
    last_alert_at: float | None = None
    lagging_since: float | None = None
    last_success_at: float | None = None


@dataclass(frozen=True)
class DeadLetter:
    """A row the endpoint rejected, kept for inspection and replay."""

    id: int
    job: str
    run_id: str
    row: bytes
    status: int | None
    excerpt: str
    attempts: int
    created_at: float
    updated_at: float
    #: The row as read, before ``target.omit`` (``None``: kept before loader stored it).
    full_row: bytes | None = None
    #: Where the row was sent, secrets masked (``None``: kept before loader stored it).
    url: str | None = None


class NewDeadLetter(NamedTuple):
    """A rejected row to keep: ``row`` as it was sent (UTF-8 JSON, after ``target.omit``),
    the HTTP status or ``None``, the answer's excerpt, the row as read (before omit) and
    the URL it went to, secrets masked."""

    row: bytes
    status: int | None
    excerpt: str
    full_row: bytes | None = None
    url: str | None = None


@dataclass(frozen=True)
class Cut:
    """A batch recorded before it was sent and not yet acknowledged: where it was cut.

    It holds the rows whose positions are after ``after`` and at most ``last`` (both
    encoded positions; ``after`` is ``"start"`` before the first checkpoint). ``scope``
    and ``key`` are those of its idempotency key; ``rows`` how many rows it held.
    """

    id: int
    job: str
    run_id: str
    scope: str
    after: str
    last: str
    rows: int
    key: str
    created_at: float


def encode_position(position: Position) -> str:
    """A position as JSON text with each value's type, so it binds back exactly.

    Raises :class:`StateError` for a value no cursor column can hold (``None``, a
    boolean, or a type other than number, date, time stamp, UUID or text)."""
    return json.dumps([_tag(value) for value in position])


def decode_position(text: str) -> Position:
    """The inverse of :func:`encode_position`."""
    return tuple(_untag(item) for item in json.loads(text))


def _tag(value: Any) -> dict[str, str]:
    if isinstance(value, bool) or value is None:
        raise StateError(f"a cursor value cannot be {value!r}")
    if isinstance(value, int):
        return {"t": "int", "v": str(value)}
    if isinstance(value, Decimal):
        return {"t": "decimal", "v": str(value)}
    if isinstance(value, float):
        return {"t": "float", "v": repr(value)}
    if isinstance(value, datetime):
        return {"t": "datetime", "v": value.isoformat()}
    if isinstance(value, date):
        return {"t": "date", "v": value.isoformat()}
    if isinstance(value, uuid.UUID):
        return {"t": "uuid", "v": str(value)}
    if isinstance(value, str):
        return {"t": "str", "v": value}
    raise StateError(
        f"a cursor value of type {type(value).__name__} cannot be stored; "
        "use a timestamp, integer, numeric, date, uuid or text column"
    )


_PARSERS: dict[str, Callable[[str], Any]] = {
    "int": int,
    "decimal": Decimal,
    "float": float,
    "datetime": datetime.fromisoformat,
    "date": date.fromisoformat,
    "uuid": uuid.UUID,
    "str": str,
}


def _untag(item: dict[str, str]) -> Any:
    return _PARSERS[item["t"]](item["v"])
