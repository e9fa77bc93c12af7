"""A lost source connection: reconnect, and resume after what the endpoint acknowledged.

A connection to the database that drops mid-run (a failover, a restart, maintenance, a
cut network) ends the reading with :class:`ConnectionLostError`; the batches read before
it are still delivered and committed (:class:`loader.pipeline.Pipeline`). A run with a
cursor then opens the stream again, after a back-off, from its last checkpoint (the last
row the endpoint acknowledged), in the same run: the rows read but not acknowledged are
read and sent again, cut into the same batches with the same idempotency keys when they
did not change. The source is opened at most ``retry.attempts`` times in one run.

Without a cursor nothing marks where to resume, so the run fails with a one-line
:class:`SourceError` (exit 3). A dry run keeps no checkpoint and is not resumed either
(it does not come through here: its :class:`ConnectionLostError` ends it, exit 3).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

from loader.delivery import Counters
from loader.errors import ConnectionLostError, SourceError
from loader.job import Job
from loader.logs import event
from loader.options import RunOptions
from loader.result import Position, Status

log = logging.getLogger("loader")

#: Deliver every row after a position (``None``: from the start); how the run ended.
Deliver = Callable[[Position | None], Status]


def deliver_resuming(
    job: Job,
    counters: Counters,
    options: RunOptions,
    deliver: Deliver,
    position: Position | None,
    *,
    resumable: bool,
) -> Status:
    """Call ``deliver(position)``; when the source connection is lost, call it again
    from ``counters.checkpoint`` if ``resumable`` (the job has a cursor and the run
    keeps checkpoints), after a back-off, up to ``retry.attempts`` opens in all.

    A loss before the first row of the run is not retried (the database may be
    unreachable for good: a wrong host fails fast). ``counters.rows_read`` goes back to
    the rows acknowledged before each reopen, so it counts every row once.
    Raises :class:`SourceError` when the run cannot resume or gave up.
    """
    opened = 1
    while True:
        try:
            return deliver(position)
        except ConnectionLostError as exc:
            if not resumable or (opened == 1 and counters.rows_read == 0):
                raise SourceError(_cannot_resume(counters, exc, resumable)) from exc
            if opened >= job.retry.attempts:
                raise SourceError(_gave_up(job, counters, exc, opened)) from exc
            wait = backoff(job, opened)
            position = counters.checkpoint
            event(
                log,
                "source.reconnect",
                logging.WARNING,
                job=job.name,
                rows_read=counters.rows_read,
                error=exc,
                wait_s=wait,
                after=position,
                attempt=opened,
                attempts=job.retry.attempts - 1,
            )
            counters.rows_read = counters.rows_posted + counters.rows_rejected
            if _sleep(options, wait):
                return Status.INTERRUPTED
            opened += 1


def backoff(job: Job, reconnect: int, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before reconnect number ``reconnect`` (1, 2, ...): between half
    and all of ``retry.backoff * 2 ** (reconnect - 1)``, capped at ``retry.max_backoff``
    (never nothing: a database failing over needs a moment)."""
    ceiling = min(job.retry.max_backoff, job.retry.backoff * 2.0 ** (reconnect - 1))
    return float(ceiling * (0.5 + rand() / 2))


def _sleep(options: RunOptions, seconds: float) -> bool:
    """Wait ``seconds`` (less when the run is stopped); True when it was stopped."""
    if options.sleep is not None:
        options.sleep(seconds)
    else:
        options.stop.wait(seconds)
    return options.stop.is_set()


def _cannot_resume(counters: Counters, exc: ConnectionLostError, cursor: bool) -> str:
    """Why a run whose source connection dropped fails instead of resuming."""
    lost = (
        f"the database connection was lost after {counters.rows_read} rows read "
        f"({counters.rows_posted} delivered)"
    )
    if counters.rows_read == 0 and cursor:
        return (
            "the database connection was lost before the first row was read, so the run "
            f"stops; the next run starts after the checkpoint ({exc})"
        )
    return (
        f"{lost}; this job has no cursor, so it cannot resume: the next run sends every row "
        f"again (set source.cursor to resume after the rows delivered) ({exc})"
    )


def _gave_up(job: Job, counters: Counters, exc: ConnectionLostError, opened: int) -> str:
    """Why a run stops reconnecting."""
    return (
        f"the database connection was lost after {counters.rows_read} rows read "
        f"({counters.rows_posted} delivered) and the source was opened {opened} times in "
        f"this run, as many as retry.attempts ({job.retry.attempts}) allows: the next run "
        f"resumes after the last row delivered ({exc})"
    )
