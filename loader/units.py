"""Durations and sizes written with units, as in job files: ``250ms``, ``30s``, ``1MB``;
and instants written as ISO 8601 text for messages and logs."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_NUMBER_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*$")


def parse_duration(text: str) -> float:
    """Return seconds for ``text`` such as ``250ms``, ``30s``, ``5m``, ``1h`` or ``1d``.

    Raises ``ValueError`` with the accepted forms when ``text`` has no known unit.
    """
    match = _NUMBER_UNIT.match(text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _DURATION_UNITS:
        raise ValueError(
            f"expected a duration with a unit (ms, s, m, h, d) such as 30s, got {text!r}"
        )
    return float(match.group(1)) * _DURATION_UNITS[unit]


def parse_size(text: str) -> int:
    """Return bytes for ``text`` such as ``500KB`` or ``1MB`` (powers of 1000) or ``1MiB``.

    Raises ``ValueError`` with the accepted forms when ``text`` has no known unit.
    """
    match = _NUMBER_UNIT.match(text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _SIZE_UNITS:
        raise ValueError(
            f"expected a size with a unit (B, KB, MB, GB, KiB, MiB, GiB) such as 1MB, got {text!r}"
        )
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(rows?\s*)?/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_PER = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
        "h": 3600.0, "hour": 3600.0}  # fmt: skip


def parse_rate(text: str) -> tuple[float, bool]:
    """Return ``(per_second, rows)`` for a pace such as ``10/s``, ``600/m`` (requests) or
    ``500 rows/s`` (rows). Raises ``ValueError`` with the accepted forms otherwise."""
    match = _RATE.match(text)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"expected a rate such as 10/s, 600/m or 500 rows/s, got {text!r}")
    return float(match.group(1)) / _PER[match.group(3)], bool(match.group(2))


def format_duration(seconds: float) -> str:
    """Render seconds the way a job file writes them (``1.5s``, ``250ms``, ``5m``)."""
    if seconds and seconds < 1:
        return f"{seconds * 1000:g}ms"
    for unit, factor in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= factor and seconds % factor == 0:
            return f"{seconds / factor:g}{unit}"
    return f"{seconds:g}s"


def format_size(size: int) -> str:
    """Render bytes the way a job file writes them (``1MB``, ``512KiB``, ``900B``)."""
    for unit, factor in (("GB", 1000**3), ("MB", 1000**2), ("KB", 1000)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def when(timestamp: float, *, utc: bool = False) -> str:
    """Render a Unix ``timestamp`` as ISO 8601 to the second: in the local time zone with
    its offset (``2024-05-01T12:00:00+02:00``), or with ``utc`` in UTC with a ``Z``
    (``2024-05-01T10:00:00Z``)."""
    if utc:
        instant = datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
        return instant.replace("+00:00", "Z")
    return datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")
