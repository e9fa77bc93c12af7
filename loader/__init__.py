"""loader: run a SQL query, post the rows to an HTTP endpoint, reliably.

The front door::

    from loader import load_job, run_job

    job = load_job("jobs/signups.yml")
    result = run_job(job)
    print(result.rows_posted)

Everything public is importable from here; submodules are implementation details.
"""

from typing import TYPE_CHECKING, Any

from loader import defaults
from loader._version import __version__
from loader.errors import (
    ConnectionLostError,
    CursorOrderError,
    EncodingError,
    JobConfigError,
    JobLockedError,
    LoaderError,
    LockLostError,
    QueryError,
    RejectedError,
    RetriesExhaustedError,
    RetryableSinkError,
    SinkError,
    SourceError,
    StateError,
    TooManyRejectionsError,
)
from loader.job import Batch, Cursor, Envelope, Job, Retry, Source, Target
from loader.jobfile import (
    build_job,
    environment,
    find_job_files,
    load_job,
    parse_job,
    resolve_job_file,
)
from loader.logs import RUN_ID
from loader.logs import event as log_event
from loader.monitor import cursor_lag
from loader.monitor import flush as flush_notifications
from loader.options import RunOptions
from loader.outcome import Outcome, run_and_record, run_job
from loader.result import RunResult, Status
from loader.schedule import Schedule
from loader.state import StateStore, open_state
from loader.status import StatusReport, status_report
from loader.statuspage import render_status_page
from loader.units import parse_duration

if TYPE_CHECKING:
    from loader.scheduler import Clock
    from loader.workers import JobQueue, QueuedRun, queue_url


def __getattr__(name: str) -> Any:
    # The queue (Procrastinate) and the clock (prometheus_client, the status page) are
    # imported on first use: they cost start-up time that a single run does not need.
    if name in ("JobQueue", "QueuedRun", "queue_url"):
        from loader import workers

        return getattr(workers, name)
    if name == "Clock":
        from loader.scheduler import Clock

        return Clock
    raise AttributeError(f"module 'loader' has no attribute {name!r}")


__all__ = [
    "Batch",
    "Clock",
    "ConnectionLostError",
    "Cursor",
    "CursorOrderError",
    "EncodingError",
    "Envelope",
    "Job",
    "JobConfigError",
    "JobLockedError",
    "JobQueue",
    "LoaderError",
    "LockLostError",
    "Outcome",
    "QueryError",
    "QueuedRun",
    "RUN_ID",
    "RejectedError",
    "RetriesExhaustedError",
    "Retry",
    "RetryableSinkError",
    "RunOptions",
    "RunResult",
    "Schedule",
    "SinkError",
    "Source",
    "SourceError",
    "StateError",
    "StateStore",
    "Status",
    "StatusReport",
    "Target",
    "TooManyRejectionsError",
    "__version__",
    "build_job",
    "cursor_lag",
    "defaults",
    "environment",
    "find_job_files",
    "flush_notifications",
    "load_job",
    "log_event",
    "open_state",
    "parse_duration",
    "parse_job",
    "queue_url",
    "render_status_page",
    "resolve_job_file",
    "run_and_record",
    "run_job",
    "status_report",
]
