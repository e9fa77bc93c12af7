"""Run a job, and record how it ended: the one way in for every front door.

:func:`run_job` runs a job once, partitioned or not (the CLI's ``loader run``, the
library's ``loader.run_job``, and what the others below call). :func:`run_and_record`, the
clock's and the workers' path, runs a job once, never raises, and says how it ended as an
:class:`Outcome`: the run's own record (history, checkpoint, heartbeats, alerts) is kept
by the run itself (:mod:`loader.journal`); this adds what a scheduled run needs on top:
a ``skipped`` record when another run held the job, and the end of the clock's slot.

:func:`run_job` logs the one ``run.ended`` event of every run, whichever door it came
through, however it ended.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from loader.errors import JobLockedError, LoaderError
from loader.job import Job
from loader.logs import event
from loader.options import RunOptions
from loader.partitions import run_partitions
from loader.result import RunResult, Status
from loader.runner import run_once
from loader.state import StateStore, open_state

log = logging.getLogger("loader")

#: What runs one job: :func:`loader.run_job` or a stand-in with its keywords.
Runner = Callable[..., RunResult]


def run_job(
    job: Job,
    *,
    state: StateStore | None = None,
    run_id: str | None = None,
    options: RunOptions | None = None,
    **given: Any,
) -> RunResult:
    """Stream the job's rows to its endpoint and return what happened.

    ``state`` defaults to :func:`loader.open_state` (``$LOADER_STATE_URL`` or
    ``.loader/state.db``). The run's options come as ``options`` or as keywords (the
    fields of :class:`~loader.options.RunOptions`): with a cursor, the run resumes after
    the checkpoint unless ``full_refresh``. ``limit`` stops after that many rows.
    ``dry_run`` reads and encodes the rows but sends and records nothing; the first
    ``preview`` requests are kept in ``RunResult.preview``. ``stop`` ends the run between
    batches and wakes retry sleeps; the result is then ``interrupted``. ``sleep``,
    ``monotonic`` and ``transport`` are seams for tests. ``monitor`` sends the job's
    heartbeats and alerts (see :mod:`loader.monitor`). ``progress`` is called with the
    counts so far each time batches are acknowledged.

    Raises a :class:`LoaderError` when the run fails (its ``result`` holds the counts up
    to the failure), :class:`JobLockedError` when another run holds the job. Never exits
    the process.
    """
    options = replace(options, **given) if options is not None else RunOptions(**given)
    run_id = run_id or uuid.uuid4().hex[:12]
    store = state if state is not None else open_state()
    started = options.monotonic()
    result: RunResult | None = None
    error: BaseException | None = None
    try:
        if job.source.partition is not None:
            result = run_partitions(job, store, run_id, options)
        else:
            result = run_once(job, store, run_id, options)
        return result
    except BaseException as exc:
        error = exc
        raise
    finally:
        if state is None:
            store.close()
        _ended(job, run_id, result, error, options.monotonic() - started)


def _ended(
    job: Job, run_id: str, result: RunResult | None, error: BaseException | None, took: float
) -> None:
    """Log the run's ``run.ended`` event: its counts from ``result`` (or the result
    attached to ``error``), its error's redacted message."""
    if result is None and isinstance(error, LoaderError):
        result = error.result
    if isinstance(error, JobLockedError):
        status: Status = Status.SKIPPED
    elif result is not None:
        status = Status(result.status)
    else:
        status = Status.FAILED if isinstance(error, Exception) else Status.INTERRUPTED
    detail = None
    if error is not None:
        detail = job.redactor().text(str(error) or type(error).__name__)
    level = logging.INFO if status in _FINE else logging.WARNING
    counts: dict[str, Any] = {}
    if result is not None:
        counts = dict(rows_read=result.rows_read, rejected=result.rows_rejected,
                      requests=result.requests, retries=result.retries,
                      unchanged=result.rows_unchanged or None,
                      deleted=result.rows_deleted or None)  # fmt: skip
    event(log, "run.ended", level, job=job.name, run_id=run_id, status=status,
          rows=result.rows_posted if result is not None else 0,
          duration_s=result.duration if result is not None else took,
          error=detail, **counts)  # fmt: skip


#: The statuses of a run that ended as it should (run.ended at INFO, else WARNING).
_FINE = (Status.SUCCEEDED, Status.DRY_RUN, Status.INTERRUPTED)


@dataclass(frozen=True)
class Outcome:
    """How one scheduled run ended. ``detail`` is the redacted reason of a run that
    failed or was skipped; ``error`` what it raised (``None`` when it returned)."""

    job: str
    run_id: str
    status: Status
    duration: float
    result: RunResult | None = None
    detail: str | None = None
    error: BaseException | None = None

    @property
    def rows(self) -> int:
        """Rows the endpoint acknowledged, up to the end or the failure."""
        return self.result.rows_posted if self.result is not None else 0


def run_and_record(
    job: Job,
    state: StateStore,
    run_id: str,
    *,
    slot: float | None = None,
    run: Runner = run_job,
    record_skipped: bool = False,
    monotonic: Callable[[], float] = time.monotonic,
    **options: Any,
) -> Outcome:
    """Run ``job`` as run ``run_id`` (``options`` go to ``run``) and return how it
    ended; never raises, so a failing job cannot stop the clock or a worker.

    Another run holding the job makes the outcome ``skipped`` (kept in the run history
    too when ``record_skipped``). ``slot``, when given, is the clock's slot the run was
    for: its end is recorded with the outcome's status and detail.
    """
    started = monotonic()
    outcome = _attempt(job, state, run_id, run, record_skipped, options)
    outcome = replace(outcome, duration=monotonic() - started)
    if slot is not None:
        record_slot(state, job.name, slot, outcome.status, outcome.detail)
    return outcome


def _attempt(
    job: Job,
    state: StateStore,
    run_id: str,
    run: Runner,
    record_skipped: bool,
    options: dict[str, Any],
) -> Outcome:
    """Call ``run`` and turn whatever it returns or raises into an :class:`Outcome`."""

    def ended(status: Status, **fields: Any) -> Outcome:
        """The outcome; its duration is filled in by the caller."""
        return Outcome(job.name, run_id, status, 0.0, **fields)

    try:
        result = run(job, state=state, run_id=run_id, **options)
    except JobLockedError as exc:
        if record_skipped:
            _skipped(state, job.name, run_id, str(exc))
        return ended(Status.SKIPPED, detail=str(exc), error=exc)
    except LoaderError as exc:
        detail = job.redactor().text(str(exc))
        return ended(Status.FAILED, result=exc.result, detail=detail, error=exc)
    except Exception as exc:  # a bug in a run must not stop the clock or a worker
        event(log, "run.crashed", logging.ERROR, exc_info=True, job=job.name, run_id=run_id,
              error=job.redactor().text(f"{type(exc).__name__}: {exc}"))  # fmt: skip
        detail = job.redactor().text(f"{type(exc).__name__}: {exc}")
        return ended(Status.FAILED, detail=detail, error=exc)
    return ended(Status(result.status), result=result)


def _skipped(state: StateStore, job: str, run_id: str, detail: str) -> None:
    """A run that never started, in the history: another run held the job."""
    try:
        state.start_run(run_id, job, None)
        state.finish_run(run_id, Status.SKIPPED, error=detail)
    except LoaderError as exc:
        event(log, "run.record_failed", logging.ERROR, job=job, run_id=run_id, error=exc)


def record_slot(
    state: StateStore, job: str, slot: float, status: Status, detail: str | None
) -> None:
    """Record how the clock's ``slot`` of ``job`` ended; a failure is logged, not raised
    (the slot's run has happened either way)."""
    try:
        state.finish_slot(job, slot, status, detail)
    except LoaderError as exc:
        event(log, "clock.slot_record_failed", logging.ERROR, job=job, error=exc)
