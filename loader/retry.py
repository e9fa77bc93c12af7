"""The retry policy: exponential back-off with full jitter, ``Retry-After`` honoured.

A :class:`RetryPolicy` is a small immutable value. :meth:`RetryPolicy.call` runs a
function until it returns, raises something other than :class:`RetryableSinkError`, or
the attempts run out (then :class:`RetriesExhaustedError` from the last failure). Sleeps
go through an injected ``sleep`` and end early when the ``stop`` event is set.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import tenacity

from loader import job as jobmodel
from loader.errors import RetriesExhaustedError, RetryableSinkError
from loader.units import format_duration

T = TypeVar("T")

#: ``on_retry(attempt, wait_seconds, error)``: called before each back-off sleep.
RetryHook = Callable[[int, float, RetryableSinkError], None]


class StopSignal(Protocol):
    """What a stop signal offers: a ``threading.Event``, or anything shaped like one."""

    def is_set(self) -> bool:
        """True once stopping was asked for."""

    def wait(self, timeout: float | None = None) -> bool:
        """Block until stopping is asked for or ``timeout`` seconds pass (``None``:
        no limit); return :meth:`is_set`."""


class Interrupted(Exception):  # noqa: N818 - a signal to unwind, not an error
    """The stop event was set while waiting to retry; the batch was not delivered.

    Never escapes :func:`loader.run_job`, which reports the run as interrupted."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a request that may succeed later."""

    attempts: int = 5
    backoff: float = 1.0
    max_backoff: float = 60.0
    max_retry_after: float = 300.0

    @classmethod
    def from_config(cls, config: jobmodel.Retry) -> RetryPolicy:
        """The policy a job's ``retry:`` section describes."""
        return cls(config.attempts, config.backoff, config.max_backoff, config.max_retry_after)

    def wait(self, state: tenacity.RetryCallState) -> float:
        """Seconds to wait after a failed attempt: the server's ``Retry-After`` capped at
        ``max_retry_after``, else a random back-off in
        ``[0, min(max_backoff, backoff * 2 ** (attempt - 1))]`` (full jitter)."""
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, RetryableSinkError) and error.retry_after is not None:
            return min(error.retry_after, self.max_retry_after)
        jitter = tenacity.wait_random_exponential(multiplier=self.backoff, max=self.max_backoff)
        return float(jitter(state))

    def call(
        self,
        fn: Callable[[], T],
        *,
        sleep: Callable[[float], None] | None = None,
        stop: StopSignal | None = None,
        on_retry: RetryHook | None = None,
    ) -> T:
        """Call ``fn`` under this policy.

        ``sleep`` defaults to waiting on ``stop`` (or ``time.sleep`` without one). When
        ``stop`` is set during a back-off, :class:`Interrupted` is raised.
        """
        stop_event: StopSignal = stop or threading.Event()
        base_sleep = sleep or stop_event.wait

        def before_sleep(state: tenacity.RetryCallState) -> None:
            """Tell ``on_retry`` about the failed attempt and the coming wait."""
            error = state.outcome.exception() if state.outcome else None
            seconds = state.next_action.sleep if state.next_action else 0.0
            if on_retry is not None and isinstance(error, RetryableSinkError):
                on_retry(state.attempt_number, seconds, error)

        def interruptible_sleep(seconds: float) -> None:
            """Wait ``seconds`` (less if stopped); raise :class:`Interrupted` if stopped."""
            base_sleep(seconds)
            if stop_event.is_set():
                raise Interrupted("stopped while waiting to retry")

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=self.wait,
            retry=tenacity.retry_if_exception_type(RetryableSinkError),
            before_sleep=before_sleep,
            sleep=interruptible_sleep,
            reraise=False,
        )
        try:
            return retrying(fn)
        except tenacity.RetryError as exc:
            last = exc.last_attempt.exception()
            assert isinstance(last, RetryableSinkError)
            raise RetriesExhaustedError(
                f"{last} (gave up after {self.attempts} attempts)",
                url=last.url,
                status=last.status,
                attempts=self.attempts,
            ) from last

    def describe(self) -> str:
        """One line for logs: ``5 attempts, back-off 1s..1m``."""
        return (
            f"{self.attempts} attempts, back-off {format_duration(self.backoff)}"
            f"..{format_duration(self.max_backoff)}"
        )
