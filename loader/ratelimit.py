"""Pacing requests to a host: a token bucket per host, shared by every job in the
process, that slows down on 429 and recovers gradually (AIMD).

* ``rate_limit: 10/s`` (requests) or ``500 rows/s`` (rows) sets the pace for the job's host;
  jobs of one process that target the same host share the stricter pace.
* A 429 halves the pace (never below a tenth of the limit); each acknowledged request
  then gives back a twentieth of the limit, up to the limit.
* ``Retry-After`` pauses that host for every job of the process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from loader.units import parse_rate


@dataclass(frozen=True)
class Rate:
    """A pace: ``per_second`` units, counting ``rows`` or requests."""

    per_second: float
    rows: bool

    @classmethod
    def parse(cls, text: str) -> Rate:
        """``10/s``, ``600/m``, ``500 rows/s``... Raises ``ValueError`` with the forms."""
        per_second, rows = parse_rate(text)
        return cls(per_second, rows)


class HostLimiter:
    """The token bucket of one host. ``clock`` and ``sleep`` are seams for tests."""

    def __init__(
        self,
        rate: Rate,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.limit = rate.per_second
        self.rows = rate.rows
        self.current = rate.per_second
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._tokens = self._capacity()
        self._updated = clock()
        self._paused_until = 0.0

    def _capacity(self) -> float:
        """The bucket's size: one request (no bursts), or one second of rows."""
        return max(1.0, self.current) if self.rows else 1.0

    def tighten(self, rate: Rate) -> None:
        """Another job targets this host with ``rate``: keep the stricter limit."""
        with self._lock:
            if rate.per_second < self.limit:
                self.limit = rate.per_second
                self.current = min(self.current, rate.per_second)

    def acquire(self, cost: float = 1.0) -> None:
        """Wait until ``cost`` units may be sent (a request, or its rows)."""
        while True:
            with self._lock:
                now = self._clock()
                self._tokens = min(
                    self._capacity(), self._tokens + (now - self._updated) * self.current
                )
                self._updated = now
                wait = self._paused_until - now
                if wait <= 0:
                    need = min(cost, self._capacity())  # a batch bigger than that goes alone
                    if self._tokens >= need - 1e-9:  # float dust must not spin forever
                        self._tokens -= cost
                        return
                    wait = (need - self._tokens) / self.current
            self._sleep(wait)

    def throttled(self, retry_after: float | None) -> None:
        """The host answered 429: halve the pace, and pause it if asked to."""
        with self._lock:
            self.current = max(self.limit / 10, self.current / 2)
            if retry_after:
                self._paused_until = max(self._paused_until, self._clock() + retry_after)

    def acknowledged(self) -> None:
        """A request went through: give back a little pace, up to the limit."""
        with self._lock:
            self.current = min(self.limit, self.current + self.limit / 20)


_HOSTS: dict[str, HostLimiter] = {}
_HOSTS_LOCK = threading.Lock()


def limiter_for(host: str, rate: Rate) -> HostLimiter:
    """The process-wide limiter of ``host`` (created, or tightened, with ``rate``)."""
    with _HOSTS_LOCK:
        limiter = _HOSTS.get(host)
        if limiter is None or limiter.rows != rate.rows:
            limiter = _HOSTS[host] = HostLimiter(rate)
        else:
            limiter.tighten(rate)
        return limiter
