"""Schedules: intervals, cron in time zones, DST gaps and repeats (no clock involved)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from loader import Schedule

NY = ZoneInfo("America/New_York")


def at(*args: int, tz: ZoneInfo | None = None) -> float:
    return datetime(*args, tzinfo=tz or UTC).timestamp()  # type: ignore[misc]


def fires(schedule: Schedule, start: float, count: int, tz: ZoneInfo = NY) -> list[str]:
    out, t = [], start
    for _ in range(count):
        t = schedule.next_after(t)
        out.append(datetime.fromtimestamp(t, tz).isoformat())
    return out


def test_intervals_are_anchored_to_the_epoch() -> None:
    """Every clock computes the same interval slots, whenever it started."""
    every = Schedule("every 30s")
    assert every.interval == 30
    assert every.next_after(at(2024, 1, 1, 0, 0, 10)) == at(2024, 1, 1, 0, 0, 30)
    assert every.next_after(at(2024, 1, 1, 0, 0, 30)) == at(2024, 1, 1, 0, 1, 0)
    assert every.latest_at_or_before(at(2024, 1, 1, 0, 0, 59)) == at(2024, 1, 1, 0, 0, 30)
    assert every.count(at(2024, 1, 1), at(2024, 1, 1, 1)) == 120
    assert list(every.slots(at(2024, 1, 1), at(2024, 1, 1, 0, 1))) == [
        at(2024, 1, 1, 0, 0, 30), at(2024, 1, 1, 0, 1),
    ]  # fmt: skip


def test_cron_and_aliases_in_utc() -> None:
    """Cron expressions and @aliases fire at their UTC times by default."""
    assert Schedule("*/15 * * * *").next_after(at(2024, 1, 1, 10, 7)) == at(2024, 1, 1, 10, 15)
    assert Schedule("@hourly").next_after(at(2024, 1, 1, 10, 0)) == at(2024, 1, 1, 11, 0)
    assert Schedule("@daily").next_after(at(2024, 1, 1, 10)) == at(2024, 1, 2)
    assert Schedule("0 9 * * 1-5").next_after(at(2024, 1, 5, 10)) == at(2024, 1, 8, 9)


def test_time_zones_follow_local_time_across_seasons() -> None:
    """09:00 in Paris is 08:00 UTC in winter and 07:00 UTC in summer."""
    paris = Schedule("0 9 * * *", "Europe/Paris")
    assert paris.next_after(at(2024, 1, 15)) == at(2024, 1, 15, 8)
    assert paris.next_after(at(2024, 7, 15)) == at(2024, 7, 15, 7)


def test_a_time_skipped_by_spring_forward_fires_once_after_the_gap() -> None:
    """02:30 does not exist on 2024-03-10 in New York: it fires at 03:30, once."""
    daily = Schedule("30 2 * * *", "America/New_York")
    assert fires(daily, at(2024, 3, 9, 12, tz=NY), 3) == [
        "2024-03-10T03:30:00-04:00",
        "2024-03-11T02:30:00-04:00",
        "2024-03-12T02:30:00-04:00",
    ]
    half_hourly = Schedule("*/30 * * * *", "America/New_York")
    assert fires(half_hourly, at(2024, 3, 10, 1, 10, tz=NY), 4) == [
        "2024-03-10T01:30:00-05:00",
        "2024-03-10T03:00:00-04:00",
        "2024-03-10T03:30:00-04:00",
        "2024-03-10T04:00:00-04:00",
    ]


def test_a_time_repeated_by_fall_back_fires_once() -> None:
    """01:30 happens twice on 2024-11-03 in New York: it fires at the first, once."""
    daily = Schedule("30 1 * * *", "America/New_York")
    assert fires(daily, at(2024, 11, 2, 12, tz=NY), 2) == [
        "2024-11-03T01:30:00-04:00",
        "2024-11-04T01:30:00-05:00",
    ]
    half_hourly = Schedule("*/30 * * * *", "America/New_York")
    assert fires(half_hourly, at(2024, 11, 3, 0, 50, tz=NY), 4) == [
        "2024-11-03T01:00:00-04:00",
        "2024-11-03T01:30:00-04:00",
        "2024-11-03T02:00:00-05:00",
        "2024-11-03T02:30:00-05:00",
    ]
    # From inside the repeated hour, the next slot is after it, never back in time.
    inside = datetime(2024, 11, 3, 1, 20, tzinfo=NY, fold=1).timestamp()
    assert half_hourly.next_after(inside) == at(2024, 11, 3, 7)


def test_latest_slot_at_or_before() -> None:
    """The latest slot at or before an instant, across a DST gap too."""
    daily = Schedule("30 2 * * *", "America/New_York")
    assert daily.latest_at_or_before(at(2024, 3, 10, 12)) == at(2024, 3, 10, 7, 30)
    assert daily.latest_at_or_before(at(2024, 3, 10, 7, 30)) == at(2024, 3, 10, 7, 30)
    assert daily.latest_at_or_before(at(2024, 3, 10, 7, 29)) == at(2024, 3, 9, 7, 30)


@pytest.mark.parametrize(
    ("text", "timezone", "message"),
    [
        ("every 0.5s", "UTC", "an interval must be 1s or more"),
        ("every day", "UTC", "expected a duration"),
        ("61 * * * *", "UTC", "expected a cron expression"),
        ("@fortnightly", "UTC", "expected a cron expression"),
        ("*/5 * * * * *", "UTC", "five fields .* got 6 .* 'every 5s'"),
        ("0 */5 * * * *", "UTC", "five fields .* got 6"),
        ("* * * *", "UTC", "five fields .* got 4"),
        ("@daily", "Mars/Base", "unknown time zone 'Mars/Base'"),
    ],
)
def test_invalid_schedules_say_what_is_accepted(text: str, timezone: str, message: str) -> None:
    """Bad schedules and time zones are refused with the accepted forms."""
    with pytest.raises(ValueError, match=message):
        Schedule(text, timezone)


def test_latest_slot_inside_a_repeated_hour() -> None:
    """In the second 01:xx of a fall-back night, the latest slot may be at a later wall
    time: the first 01:30 (05:30 UTC) is before 06:20 UTC (01:20 EST)."""
    half_hourly = Schedule("*/30 * * * *", "America/New_York")
    assert half_hourly.latest_at_or_before(at(2024, 11, 3, 6, 20)) == at(2024, 11, 3, 5, 30)
    daily = Schedule("30 1 * * *", "America/New_York")
    assert daily.latest_at_or_before(at(2024, 11, 3, 6, 10)) == at(2024, 11, 3, 5, 30)


def test_a_date_that_never_comes_is_refused() -> None:
    """30 February parses as cron but never fires: refused when the job is loaded."""
    with pytest.raises(ValueError, match="never matches a date"):
        Schedule("0 0 30 2 *")
