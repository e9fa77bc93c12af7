"""Delivering rows: what one batch, or one dead letter, goes through before it counts.

A request is retried under the job's :class:`~loader.retry.RetryPolicy` with the same
idempotency key. A rejected batch is bisected until each rejected row stands alone; rows
a 2xx answer refuses (``target.item_errors``, ``target.item_results``) are rejected the
same way, and rows whose result says 429 or 5xx are sent again on their own. A batch
refused whole but delivered in parts teaches the run a size (:mod:`loader.splits`).
Rejected rows follow ``on_reject`` and count towards the circuit breaker
(``max_rejected``). Runs and replays both deliver through :class:`Delivery`, so they
answer an endpoint the same way.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from loader._version import __version__
from loader.answers import ItemError
from loader.encoding import Framing, framing
from loader.errors import RejectedError, RetryableSinkError, TooManyRejectionsError
from loader.job import Job
from loader.logs import event
from loader.redact import Redactor
from loader.result import Position
from loader.retry import RetryPolicy, StopSignal
from loader.sink import Request, Sink, idempotency_key
from loader.splits import Splits

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("loader")

USER_AGENT = f"loader/{__version__}"
#: Rejections that are about the request, not a row: bisecting would not isolate anything.
NOT_ROW_STATUSES = frozenset({401, 403, 404, 405, 407})
#: With per-row requests a 404 is about the row's resource (its URL), not the target.
NOT_ROW_STATUSES_PER_ROW = NOT_ROW_STATUSES - {404}

#: Rows an endpoint rejected, each with its rejection.
Rejected = list[tuple[bytes, RejectedError]]


@dataclass
class Counters:
    """A run's counts so far, updated by the reader, the senders and the committer.

    Not locked itself: the senders' counts (``requests``, ``retries``, ``throttled``,
    ``in_flight``) change under :attr:`Delivery.lock`; the others are written by one
    thread each (the reader, or the committer). ``preview`` holds a dry run's first
    requests.
    """

    rows_read: int = 0
    rows_posted: int = 0
    rows_rejected: int = 0
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    in_flight: int = 0
    splits: int = 0
    split_size: int | None = None
    checkpoint: Position | None = None
    preview: list[Request] = field(default_factory=list)
    rows_unchanged: int = 0
    rows_deleted: int = 0


def framing_for(job: Job) -> Framing:
    """The body framing a job's target asks for."""
    envelope = job.target.envelope
    return framing(
        job.target.format,
        envelope.key if envelope else None,
        dict(envelope.fields) if envelope else None,
        single=job.target.per_row,
    )


@contextmanager
def open_sink(
    job: Job, redactor: Redactor, frame: Framing, transport: httpx.BaseTransport | None
) -> Iterator[Sink]:
    """The job's endpoint, open for requests framed by ``frame`` (through
    ``transport`` when given, a test's), closed when the block ends."""
    with Sink(
        job.target,
        redactor,
        user_agent=USER_AGENT,
        content_type=frame.content_type,
        transport=transport,
    ) as sink:
        yield sink


class Delivery:
    """Delivers batches to one sink: retries, then bisects a rejected batch to isolate
    bad rows. Used from several threads at once; counts go to ``counters``.

    ``sleep`` replaces the retry waits (a test's); ``None`` waits on the stop signal.
    ``rejected_seen`` counts the rows rejected so far for the circuit breaker; it and
    the counters change only under ``lock``.
    """

    def __init__(
        self,
        job: Job,
        sink: Sink,
        frame: Framing,
        counters: Counters,
        redactor: Redactor,
        sleep: Callable[[float], None] | None,
    ) -> None:
        self.job = job
        self.sink = sink
        self.frame = frame
        self.counters = counters
        self.redactor = redactor
        self.sleep = sleep
        self.policy = RetryPolicy.from_config(job.retry)
        self.lock = threading.Lock()
        self.rejected_seen = 0
        self.splits = Splits(counters)

    def send(
        self, rows: list[bytes], body: bytes, scope: str, stop: StopSignal,
        url: str | None = None, key: str | None = None,
    ) -> Rejected:  # fmt: skip
        """Deliver ``rows`` (to ``url``, for a per-row request); return the rows the
        endpoint rejected, with the rejection.

        ``scope`` keys the idempotency keys (see :func:`loader.sink.idempotency_key`);
        ``key``, when given, is ``body``'s, already computed from it.
        Raises :class:`RejectedError` when rejections are not row-specific (401, 403...)
        or ``on_reject: fail``, :class:`TooManyRejectionsError` past ``max_rejected``,
        and :class:`~loader.retry.Interrupted` when ``stop`` ends a retry wait.

        Once a split request went through where the whole was refused (see
        :class:`~loader.splits.Splits`), bigger batches are split up front.
        """
        size = self.splits.size
        if size is not None and len(rows) > size:
            self.splits.split_ahead()
            return self.send_parts(rows, 0, scope, stop, size)
        try:
            return self.deliver(rows, body, scope, stop, url, key)
        except RejectedError as exc:
            if self.about_request(exc) or self.job.on_reject == "fail":
                raise
            if len(rows) == 1:
                return self.reject(rows[0], exc)
            refusal = exc
        # Halves are new bodies, so each gets a scope (and idempotency key) of its own,
        # derived from the batch's: the same at every attempt of that half.
        rejected: Rejected = []
        worked = self.bisect(rows, 0, scope, rejected, stop)
        if not rejected and worked:
            self.splits.learned(len(rows), worked, refusal)
        return rejected

    def send_parts(
        self, rows: list[bytes], offset: int, scope: str, stop: StopSignal, size: int
    ) -> Rejected:
        """Send ``rows`` (at ``offset`` in the batch) in halves, and halves of halves,
        until each part holds at most ``size`` rows: the parts bisection would reach, each
        under the scope bisection would give it (so a batch re-sent by a later run,
        which bisects before it learns the size, gets the same keys)."""
        if len(rows) <= size:
            part = f"{scope}/{offset}+{len(rows)}"
            try:
                return self.deliver(rows, self.frame.body(rows), part, stop)
            except RejectedError as exc:
                if self.about_request(exc) or self.job.on_reject == "fail":
                    raise
                if len(rows) == 1:
                    return self.reject(rows[0], exc)
            # Refused whole: bisected on as bisection would, so its parts' keys are the
            # ones a batch bisected from the start gives them.
            rejected: Rejected = []
            self.bisect(rows, offset, scope, rejected, stop)
            return rejected
        middle = len(rows) // 2
        return self.send_parts(rows[:middle], offset, scope, stop, size) + self.send_parts(
            rows[middle:], offset + middle, scope, stop, size
        )

    def deliver(
        self, rows: list[bytes], body: bytes, scope: str, stop: StopSignal,
        url: str | None = None, key: str | None = None,
    ) -> Rejected:  # fmt: skip
        """Send ``body`` (of ``rows``; its idempotency ``key``, if already computed) until
        acknowledged; return the rows its answer refused. Rows whose result says 429 or
        5xx (``target.item_results``) are sent again, on their own, under the retry
        policy."""
        errors = self.attempt(body, scope, stop, len(rows), url, key)
        if any(error.retry for error in errors):
            errors = self.settle(rows, errors, scope, stop, url)
        return self.refused(rows, errors)

    def settle(
        self, rows: list[bytes], errors: list[ItemError], scope: str, stop: StopSignal,
        url: str | None,
    ) -> list[ItemError]:  # fmt: skip
        """Send the rows of ``errors`` marked ``retry`` again until their results settle;
        return every row's final error, indexed in ``rows``. Each resent subset is a new
        body, so it gets a scope of its own derived from the batch's and the rows'
        positions: the same rows resent get the same key. Raises
        :class:`~loader.errors.RetriesExhaustedError` when the attempts run out."""
        final = [error for error in errors if not error.retry]
        pending = [error for error in errors if error.retry]
        answered = True  # the first call reports the answer already received

        def once() -> None:
            """Send the pending rows again, and raise if some are still to retry."""
            nonlocal pending, answered
            if not answered:
                indexes = [error.index for error in pending]
                subset = [rows[index] for index in indexes]
                part = f"{scope}/rows:{','.join(map(str, indexes))}"
                answer = self.attempt(self.frame.body(subset), part, stop, len(subset), url)
                final.extend(replace(e, index=indexes[e.index]) for e in answer if not e.retry)
                pending = [replace(e, index=indexes[e.index]) for e in answer if e.retry]
            answered = False
            if pending:
                first = pending[0]
                raise RetryableSinkError(
                    f"{self.sink.safe_url}: {len(pending)} rows of the request answered "
                    f"{first.status}, such as {first.message}",
                    url=self.sink.safe_url, status=first.status,
                )  # fmt: skip

        self.policy.call(once, sleep=self.sleep, stop=stop, on_retry=self.on_retry)
        return sorted(final, key=lambda error: error.index)

    def send_once(self, row: bytes, scope: str, stop: StopSignal, url: str | None) -> None:
        """Deliver one row on its own, retried but never bisected and never counted
        towards the circuit breaker (a dead letter's replay). Raises :class:`RejectedError`
        when the endpoint refuses it, by status or in a 2xx answer."""
        refused = self.attempt(self.frame.body([row]), scope, stop, 1, url)
        if any(error.retry for error in refused):
            refused = self.settle([row], refused, scope, stop, url)
        if refused:
            first = refused[0]
            raise RejectedError(
                first.message, url=self.sink.safe_url, status=first.status,
                body_excerpt=first.message,
            )  # fmt: skip

    def bisect(
        self, rows: list[bytes], offset: int, scope: str, rejected: Rejected, stop: StopSignal
    ) -> int:
        """Send each half of ``rows`` (at ``offset`` in the batch) on its own, recursing
        into rejected halves until the rejected rows stand alone. Returns the size of
        the biggest part sent that the endpoint took whole (0 if none)."""
        middle, worked = len(rows) // 2, 0
        for start, half in ((offset, rows[:middle]), (offset + middle, rows[middle:])):
            part = f"{scope}/{start}+{len(half)}"
            try:
                refused = self.deliver(half, self.frame.body(half), part, stop)
                rejected.extend(refused)
                worked = max(worked, 0 if refused else len(half))
            except RejectedError as exc:
                if self.about_request(exc):
                    raise
                if len(half) == 1:
                    rejected.extend(self.reject(half[0], exc))
                else:
                    worked = max(worked, self.bisect(half, start, scope, rejected, stop))
        return worked

    def refused(self, rows: list[bytes], errors: list[ItemError]) -> Rejected:
        """Rows a 2xx answer refused (``target.item_errors``, ``target.item_results``),
        as rejections, each with its error or result entry as the reason. Raises the
        first as :class:`RejectedError` under ``on_reject: fail``,
        :class:`TooManyRejectionsError` past ``max_rejected``."""
        rejected: Rejected = []
        for error in errors:
            rejection = RejectedError(
                f"{self.sink.safe_url} refused row {error.index} of the request: {error.message}",
                url=self.sink.safe_url, status=error.status, body_excerpt=error.message,
            )  # fmt: skip
            if self.job.on_reject == "fail":
                raise rejection
            rejected.extend(self.reject(rows[error.index], rejection))
        return rejected

    def about_request(self, error: RejectedError) -> bool:
        """True for rejections of the request rather than a row (401, 403...), unless
        ``target.statuses`` says the status is a row's rejection."""
        about = NOT_ROW_STATUSES_PER_ROW if self.job.target.per_row else NOT_ROW_STATUSES
        return error.status in about and error.status not in self.job.target.statuses

    def reject(self, row: bytes, error: RejectedError) -> Rejected:
        """Count ``row``'s rejection and return it as a one-row :data:`Rejected`; past
        ``max_rejected`` raise :class:`TooManyRejectionsError` (the circuit breaker)."""
        with self.lock:
            self.rejected_seen += 1
            total = self.rejected_seen
        event(
            log,
            "row.rejected",
            logging.WARNING,
            rejected=total,
            http_status=error.status,
            error=error,
        )
        if total > self.job.max_rejected:
            raise TooManyRejectionsError(
                f"{total} rows rejected in this run, more than max_rejected "
                f"({self.job.max_rejected}); stopping so a broken mapping does not burn "
                f"through the table. Last rejection: {error}",
                url=error.url,
                status=error.status or 0,
                body_excerpt=error.body_excerpt,
            ) from error
        return [(row, error)]

    def attempt(
        self,
        body: bytes,
        scope: str,
        stop: StopSignal,
        rows: int = 1,
        url: str | None = None,
        key: str | None = None,
    ) -> list[ItemError]:
        """Send ``body`` until the endpoint acknowledges it or the retry policy gives
        up, each attempt with the same idempotency key (``key``, if already computed
        from ``body`` and ``scope``); return the rows it refused.

        Raises a sink error that is not retryable (such as :class:`RejectedError`) at
        once, :class:`~loader.errors.RetriesExhaustedError` when the attempts run out,
        and :class:`~loader.retry.Interrupted` when ``stop`` ends a wait.
        """
        if key is None:
            key = idempotency_key(self.job.name, scope, body)

        def once() -> list[ItemError]:
            """One attempt, counted as a request and in flight while it lasts."""
            with self.lock:
                self.counters.requests += 1
                self.counters.in_flight += 1
            try:
                return self.sink.send(body, key, rows, url)
            finally:
                with self.lock:
                    self.counters.in_flight -= 1

        return self.policy.call(once, sleep=self.sleep, stop=stop, on_retry=self.on_retry)

    def on_retry(self, attempt: int, wait: float, error: Exception) -> None:
        """Count the retry (and a 429 as throttled), and log it redacted."""
        with self.lock:
            self.counters.retries += 1
            if getattr(error, "status", None) == 429:
                self.counters.throttled += 1
        event(
            log,
            "request.retry",
            logging.WARNING,
            attempt=attempt,
            attempts=self.policy.attempts,
            error=self.redactor.text(str(error)),
            wait_s=wait,
        )
