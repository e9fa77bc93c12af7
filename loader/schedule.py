"""Schedules: when a job's runs are due.

Two forms, as written in job files:

* ``every 30s`` (any duration of 1s or more): slots are multiples of the interval since
  the Unix epoch, so every clock computes the same slots;
* a cron expression, ``*/15 * * * *``, or an alias (``@hourly``, ``@daily``,
  ``@weekly``, ``@monthly``, ``@yearly``), read in the job's IANA ``timezone``.

Daylight saving time, for cron schedules: the expression is matched against local wall
clock times. A local time skipped by a spring-forward gap fires once, just after the gap,
as many minutes into the new hour as it was into the lost one (02:30 fires at 03:30). A
local time repeated by a fall-back fires once, at its first occurrence. Slots are UTC
instants: two local times that land on the same instant are one slot.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from loader.units import parse_duration

_EVERY = re.compile(r"^every\s+(\S+)$", re.IGNORECASE)
# Enough steps to cross any DST fold, however dense the expression.
_MAX_STEPS = 10_000

if TYPE_CHECKING:
    from croniter import croniter


def _croniter() -> type[croniter]:
    """croniter, imported on first use: importing it runs a subprocess (``file``, through
    ``platform.architecture``), a cost that runs without a cron schedule need not pay."""
    from croniter import croniter

    return croniter


def parse_timezone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``. Raises ``ValueError`` with examples when unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"unknown time zone {name!r}; use an IANA name such as "
            "UTC, Europe/Paris or America/New_York"
        ) from exc


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule. Raises ``ValueError`` with the accepted forms when invalid."""

    text: str
    timezone: str = "UTC"
    interval: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_zone", parse_timezone(self.timezone))
        every = _EVERY.match(self.text.strip())
        if every:
            seconds = parse_duration(every.group(1))
            if seconds < 1:
                raise ValueError(f"an interval must be 1s or more, got {self.text!r}")
            object.__setattr__(self, "interval", seconds)
        elif not self.text.strip().startswith("@") and len(self.text.split()) != 5:
            raise ValueError(
                f"a cron expression has five fields (minute hour day month weekday), "
                f"got {len(self.text.split())} in {self.text!r}; for seconds write an "
                f"interval such as 'every 5s'"
            )
        elif not _croniter().is_valid(self.text):
            raise ValueError(
                f"expected a cron expression such as '*/15 * * * *', an alias such as "
                f"@hourly or @daily, or an interval such as 'every 30s', got {self.text!r}"
            )
        else:
            try:
                self.next_after(datetime(2024, 1, 1, tzinfo=UTC).timestamp())
            except Exception as exc:  # croniter's errors for dates that never come
                raise ValueError(
                    f"{self.text!r} never matches a date (such as 30 February)"
                ) from exc

    def next_after(self, instant: float) -> float:
        """The first slot strictly after ``instant`` (both in Unix seconds)."""
        if self.interval is not None:
            return (math.floor(instant / self.interval) + 1) * self.interval
        zone: ZoneInfo = getattr(self, "_zone")  # noqa: B009 - set in __post_init__
        local = datetime.fromtimestamp(instant, zone).replace(tzinfo=None)
        candidates = _croniter()(self.text, local)
        for _ in range(_MAX_STEPS):
            wall = candidates.get_next(datetime)
            # fold=0: the first of a repeated time; a skipped time lands after the gap.
            slot = float(wall.replace(tzinfo=zone, fold=0).timestamp())
            if slot > instant:
                return slot
        raise ValueError(f"schedule {self.text!r} has no slot after {instant}")

    def slots(self, after: float, until: float) -> Iterator[float]:
        """Every slot in ``(after, until]``, in order."""
        slot = self.next_after(after)
        while slot <= until:
            yield slot
            slot = self.next_after(slot)

    def latest_at_or_before(self, instant: float) -> float:
        """The last slot at or before ``instant``."""
        if self.interval is not None:
            return math.floor(instant / self.interval) * self.interval
        zone: ZoneInfo = getattr(self, "_zone")  # noqa: B009 - set in __post_init__
        local = datetime.fromtimestamp(instant, zone).replace(tzinfo=None)
        # Start past any DST fold: inside a repeated hour the latest slot may lie at a
        # later wall-clock time (its first occurrence). Going back from there, slots
        # come in decreasing order; the first at or before the instant is the latest.
        candidates = _croniter()(self.text, local + timedelta(hours=3))
        for _ in range(_MAX_STEPS):
            wall = candidates.get_prev(datetime)
            slot = float(wall.replace(tzinfo=zone, fold=0).timestamp())
            if slot <= instant:
                return slot
        raise ValueError(f"schedule {self.text!r} has no slot before {instant}")

    def count(self, after: float, until: float, *, limit: int = 100_000) -> int:
        """How many slots lie in ``(after, until]`` (counted up to ``limit``)."""
        if self.interval is not None:
            first = math.floor(after / self.interval) + 1
            last = math.floor(until / self.interval)
            return max(0, last - first + 1)
        total = 0
        for _ in self.slots(after, until):
            total += 1
            if total >= limit:
                break
        return total
