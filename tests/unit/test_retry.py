"""The retry policy, with an injected sleep: no time passes."""

from __future__ import annotations

import threading

import pytest

from loader import RejectedError, RetriesExhaustedError, RetryableSinkError
from loader.retry import Interrupted, RetryPolicy


class Flaky:
    """Fails with the given errors, then returns 'ok'."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def retryable(retry_after: float | None = None) -> RetryableSinkError:
    return RetryableSinkError("503", url="u", status=503, retry_after=retry_after)


def test_retries_until_success_with_full_jitter_backoff() -> None:
    """Waits are random in [0, min(max_backoff, backoff * 2**(n-1))]."""
    waits: list[float] = []
    policy = RetryPolicy(attempts=6, backoff=1.0, max_backoff=4.0)
    flaky = Flaky(*[retryable() for _ in range(5)])

    assert policy.call(flaky, sleep=waits.append) == "ok"

    assert flaky.calls == 6
    for wait, ceiling in zip(waits, [1, 2, 4, 4, 4], strict=True):
        assert 0 <= wait <= ceiling


def test_retry_after_is_honoured_and_capped() -> None:
    """The server's Retry-After replaces the back-off, capped at max_retry_after."""
    waits: list[float] = []
    policy = RetryPolicy(attempts=3, backoff=100.0, max_retry_after=10.0)

    policy.call(Flaky(retryable(2.0), retryable(3600.0)), sleep=waits.append)

    assert waits == [2.0, 10.0]


def test_exhaustion_chains_the_last_error() -> None:
    """After the last attempt, RetriesExhaustedError is raised from the last failure."""
    last = retryable()
    hooks: list[int] = []
    policy = RetryPolicy(attempts=3)

    with pytest.raises(RetriesExhaustedError) as caught:
        policy.call(
            Flaky(retryable(), retryable(), last),
            sleep=lambda s: None,
            on_retry=lambda n, w, e: hooks.append(n),
        )

    assert caught.value.__cause__ is last and caught.value.attempts == 3
    assert hooks == [1, 2]


def test_non_retryable_errors_pass_through_at_once() -> None:
    """A rejection is not retried."""
    flaky = Flaky(RejectedError("400", url="u", status=400, body_excerpt=""))

    with pytest.raises(RejectedError):
        RetryPolicy().call(flaky, sleep=lambda s: None)
    assert flaky.calls == 1


def test_the_stop_event_interrupts_a_backoff() -> None:
    """A set stop event ends the wait and the retries."""
    stop = threading.Event()
    flaky = Flaky(retryable(60.0), retryable())

    with pytest.raises(Interrupted):
        RetryPolicy().call(flaky, sleep=lambda s: stop.set(), stop=stop)
    assert flaky.calls == 1


def test_default_sleep_wakes_on_the_stop_event() -> None:
    """Without an injected sleep, the back-off waits on the stop event, not time.sleep."""
    stop = threading.Event()
    stop.set()

    with pytest.raises(Interrupted):
        RetryPolicy().call(Flaky(retryable(3600.0)), stop=stop)
