"""The exception tree. Every error loader raises is a :class:`LoaderError`.

Branches follow what the caller does next::

    LoaderError
    ├── JobConfigError (also ValueError)  fix the job file or the environment; nothing was sent
    ├── SourceError                       the database: connect, query or read failed
    │   ├── QueryError                    the result cannot be sent as is (duplicate columns)
    │   └── ConnectionLostError           the connection dropped (or could not be made):
    │                                     worth reconnecting; a run with a cursor resumes
    ├── EncodingError                     a row cannot become a request body (too large, odd type)
    ├── SinkError                         the endpoint did not acknowledge a request
    │   ├── RetryableSinkError            worth another try: timeouts, 408, 429, 5xx; .retry_after
    │   ├── RejectedError                 a 4xx the endpoint will never accept; .body_excerpt
    │   │   └── TooManyRejectionsError    the circuit breaker stopped the run (max_rejected)
    │   └── RetriesExhaustedError         the retry policy gave up; __cause__ is the last attempt
    ├── StateError                        the state store failed, or holds a checkpoint that
    │   │                                 no longer matches the job (asks for --full-refresh)
    │   ├── JobLockedError                another run holds the job; .holder
    │   └── LockLostError                 the run's lock was taken over; it stops at once
    └── CursorOrderError                  the cursor went backwards or was NULL

Messages say what failed, where, the offending value and the fix. They never hold a
secret: URLs are rendered without credentials and response excerpts are redacted.
Errors raised by :func:`loader.run_job` carry the partial :class:`~loader.RunResult`
in ``.result`` so a caller can report what was delivered before the failure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loader.result import RunResult


class LoaderError(Exception):
    """Root of every error raised by loader."""

    result: RunResult | None = None


class JobConfigError(LoaderError, ValueError):
    """A job file or job definition is invalid.

    ``problems`` lists every problem found, each formatted as
    ``file:line: key.path: message``; ``str()`` joins them one per line.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class SourceError(LoaderError):
    """Connecting to the database or running the query failed."""


class QueryError(SourceError):
    """The query ran but its result cannot be sent as is."""


class ConnectionLostError(SourceError):
    """The connection to the database dropped (a failover, a restart, a network cut) or
    could not be made: the same query may succeed on a new connection."""


class EncodingError(LoaderError):
    """A row cannot be encoded into a request body."""


class SinkError(LoaderError):
    """The endpoint did not acknowledge a request.

    ``url`` never holds credentials; ``status`` is ``None`` when no response arrived.
    """

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class RetryableSinkError(SinkError):
    """A failure worth retrying. ``retry_after`` is the server's wish in seconds, if any."""

    def __init__(
        self,
        message: str,
        *,
        url: str,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, url=url, status=status)
        self.retry_after = retry_after


class RejectedError(SinkError):
    """The endpoint refused the request and will refuse it again (a 4xx other than 408/429)."""

    def __init__(self, message: str, *, url: str, status: int, body_excerpt: str) -> None:
        super().__init__(message, url=url, status=status)
        self.body_excerpt = body_excerpt


class RetriesExhaustedError(SinkError):
    """Every attempt allowed by the retry policy failed; ``__cause__`` is the last failure."""

    def __init__(self, message: str, *, url: str, status: int | None = None, attempts: int) -> None:
        super().__init__(message, url=url, status=status)
        self.attempts = attempts


class TooManyRejectionsError(RejectedError):
    """More rows were rejected in one run than ``max_rejected`` allows."""


class StateError(LoaderError):
    """The state store cannot be used, or its checkpoint does not fit the job."""


class JobLockedError(StateError):
    """Another run of the same job holds its lock. ``holder`` describes it."""

    def __init__(self, message: str, *, holder: str) -> None:
        super().__init__(message)
        self.holder = holder


class LockLostError(StateError):
    """Another run took over this run's lock (its lease expired, or a worker resuming the
    run broke it): the run stops without moving the checkpoint."""


class CursorOrderError(LoaderError):
    """A row's cursor value was NULL or lower than the previous row's."""
