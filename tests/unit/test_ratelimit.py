"""Pacing requests per host, with an injected clock and sleep (no time passes)."""

from __future__ import annotations

import pytest

from loader.ratelimit import HostLimiter, Rate


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


def limiter(text: str, fake: FakeTime) -> HostLimiter:
    return HostLimiter(Rate.parse(text), clock=fake.clock, sleep=fake.sleep)


def test_rates_parse_with_units() -> None:
    """Requests or rows, per second, minute or hour."""
    assert Rate.parse("10/s") == Rate(10, rows=False)
    assert Rate.parse("600/m") == Rate(10, rows=False)
    assert Rate.parse("500 rows/s") == Rate(500, rows=True)
    with pytest.raises(ValueError, match="expected a rate such as 10/s"):
        Rate.parse("fast")


def test_requests_are_paced_at_the_limit() -> None:
    """At 10/s, ten requests take 0.9 s: the first goes at once, then one per 0.1 s."""
    fake = FakeTime()
    pace = limiter("10/s", fake)
    for _ in range(10):
        pace.acquire()
    assert fake.now == pytest.approx(0.9)


def test_rows_count_against_a_rows_limit() -> None:
    """With rows/s, a batch of 100 rows at 100 rows/s waits a second for the next."""
    fake = FakeTime()
    pace = limiter("100 rows/s", fake)
    pace.acquire(100)
    pace.acquire(100)
    assert fake.now == pytest.approx(1.0)


def test_429_halves_the_pace_and_acknowledgements_restore_it() -> None:
    """AIMD: halved per 429 (floor: a tenth), then +1/20 of the limit per success."""
    fake = FakeTime()
    pace = limiter("20/s", fake)
    pace.throttled(None)
    assert pace.current == 10
    for _ in range(5):
        pace.throttled(None)
    assert pace.current == 2
    for _ in range(100):
        pace.acknowledged()
    assert pace.current == 20


def test_retry_after_pauses_the_host() -> None:
    """Retry-After: 3 holds every request to the host for three seconds."""
    fake = FakeTime()
    pace = limiter("100/s", fake)
    pace.acquire()
    pace.throttled(3.0)
    pace.acquire()
    assert fake.now >= 3.0


def test_jobs_on_one_host_share_the_stricter_limit() -> None:
    """A second job asking for a lower pace on the same host lowers it for both."""
    fake = FakeTime()
    pace = limiter("50/s", fake)
    pace.tighten(Rate.parse("5/s"))
    for _ in range(6):
        pace.acquire()
    assert fake.now == pytest.approx(1.0)
