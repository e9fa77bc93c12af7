"""The fetch watchdog of the PostgreSQL fast path, on its own: a read that stalls is
cancelled ``statement_timeout`` after it began, whatever the consumer was doing.

The rows come from a generator and the connection is a stand-in that records the cancel;
``tests/integration/test_types.py`` covers the same timeout against a real PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from loader.errors import SourceError
from loader.redact import Redactor
from loader.source import _streamed_chunks


class Cancellable:
    """What the watchdog needs of a connection: ``cancel_safe``, here recorded."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.at = 0.0

    def cancel_safe(self) -> None:
        self.at = time.monotonic()
        self.cancelled.set()


def rows_then_stall(connection: Cancellable, count: int, stalled: list[float]) -> Iterator[tuple]:
    yield from ((b"{}",) for _ in range(count))
    stalled.append(time.monotonic())
    connection.cancelled.wait(10)
    raise psycopg.errors.QueryCanceled("canceling statement due to user request")


@pytest.mark.parametrize("consumer_seconds", [0.05, 0.6])
def test_a_stall_is_cancelled_on_time_while_the_consumer_is_slow(consumer_seconds: float) -> None:
    """The stall begins when the fetching thread asks for the next chunk, which may be
    long after the previous one (the queue was full): the cancel still comes 0.25 s later."""
    connection, stalled = Cancellable(), []
    chunks = _streamed_chunks(
        connection,
        rows_then_stall(connection, 4, stalled),
        1,
        0.25,
        "db",
        Redactor(),  # type: ignore[arg-type]
    )
    with pytest.raises(SourceError, match="statement timeout"):
        for _ in chunks:
            time.sleep(consumer_seconds)

    late = connection.at - stalled[0]
    assert 0.2 < late < 0.7, f"cancelled {late:.2f}s after the stall began"
