"""Outcomes as values: a run's :class:`Status` and its :class:`RunResult`.

These are what every front door reports (the CLI's summary and exit code, the clock's
slot record and metrics, a worker's log line) and what the state store keeps, so they
live below everything that produces or reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loader.sink import Request

#: A checkpoint: the cursor column's value, then the key's (when the cursor has one).
Position = tuple[Any, ...]


class Status(StrEnum):
    """How a run (or a clock's slot) ended. Members are strings, so they compare equal
    to, and are stored as, their values."""

    SUCCEEDED = "succeeded"
    PARTIAL = "partial"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    DRY_RUN = "dry-run"
    RUNNING = "running"
    #: A slot or run that did nothing: another run held the job, or one was waiting.
    SKIPPED = "skipped"
    #: A slot handed to the workers.
    QUEUED = "queued"
    #: A slot that passed while no clock ran.
    MISSED = "missed"
    #: A run whose process died: another run of the job took its lock over.
    ABANDONED = "abandoned"
    #: A slot claimed by a clock, not ended yet.
    CLAIMED = "claimed"

    @property
    def ended(self) -> bool:
        """True once the run has stopped for good (``interrupted`` runs resume)."""
        return self not in (Status.RUNNING, Status.INTERRUPTED, Status.QUEUED, Status.CLAIMED)


#: A partitioned run's status is the worst of its ranges', in this order (a range still
#: running makes the whole run running: a progress report's status).
_WORST_FIRST = (Status.FAILED, Status.INTERRUPTED, Status.RUNNING, Status.PARTIAL, Status.DRY_RUN)


@dataclass(frozen=True)
class RunResult:
    """What one run did. ``requests`` counts HTTP attempts, retries included.

    ``status`` is ``succeeded`` (every row delivered), ``partial`` (every row delivered
    or dead-lettered, some dead-lettered), ``failed``, ``interrupted`` or ``dry-run``.
    ``throttled`` counts 429 answers; ``in_flight`` the requests under way (for progress).
    ``splits`` counts batches sent in parts because the endpoint refused a bigger
    request, ``split_size`` the size that went through (see :mod:`loader.splits`).
    ``checkpoint`` is the cursor position saved last (``None`` without a cursor).
    """

    job: str
    run_id: str
    status: Status
    rows_read: int
    rows_posted: int
    requests: int
    retries: int
    duration: float
    rows_rejected: int = 0
    throttled: int = 0
    splits: int = 0
    split_size: int | None = None
    in_flight: int = 0
    checkpoint: Position | None = None
    error: str | None = None
    preview: tuple[Request, ...] = ()
    #: Diff syncs: rows read but not sent (acknowledged before, unchanged), and keys
    #: whose delete was acknowledged (would be, on a dry run).
    rows_unchanged: int = 0
    rows_deleted: int = 0

    @property
    def ok(self) -> bool:
        """True when every row read was delivered (or it was a dry run)."""
        return self.status in (Status.SUCCEEDED, Status.DRY_RUN)

    def counts(self) -> dict[str, Any]:
        """The counts the state store keeps in a run's record."""
        return {
            "rows_read": self.rows_read,
            "rows_posted": self.rows_posted,
            "rows_rejected": self.rows_rejected,
            "requests": self.requests,
            "retries": self.retries,
            "splits": self.splits,
        }


def combine(job: str, run_id: str, results: Sequence[RunResult], duration: float) -> RunResult:
    """One result for a partitioned run: the sums, the worst status, the first error, and
    the least advanced range's checkpoint (how far the job lags is how far it does)."""
    statuses = {result.status for result in results}
    status = next((worst for worst in _WORST_FIRST if worst in statuses), Status.SUCCEEDED)
    errors = [result.error for result in results if result.error]
    positions = [result.checkpoint for result in results if result.checkpoint]
    try:
        checkpoint = min(positions, default=None, key=lambda position: position[0])
    except TypeError:  # ranges keyed by values of different types: no single lag
        checkpoint = None
    return RunResult(
        job=job, run_id=run_id, status=status,
        rows_read=sum(r.rows_read for r in results),
        rows_posted=sum(r.rows_posted for r in results),
        requests=sum(r.requests for r in results), retries=sum(r.retries for r in results),
        duration=duration, rows_rejected=sum(r.rows_rejected for r in results),
        throttled=sum(r.throttled for r in results), in_flight=sum(r.in_flight for r in results),
        splits=sum(r.splits for r in results),
        split_size=min((r.split_size for r in results if r.split_size), default=None),
        error=errors[0] if errors else None,
        preview=tuple(p for r in results for p in r.preview), checkpoint=checkpoint,
        rows_unchanged=sum(r.rows_unchanged for r in results),
        rows_deleted=sum(r.rows_deleted for r in results),
    )  # fmt: skip
