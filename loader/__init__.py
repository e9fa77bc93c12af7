"""loader: run a SQL query, post the rows to an HTTP endpoint, reliably.

The front door::

    from loader import load_job, run_job

    job = load_job("jobs/signups.yml")
    result = run_job(job)
    print(result.rows_posted)

Everything public is importable from here; submodules are implementation details.
"""

from loader import defaults
from loader._version import __version__
from loader.errors import (
    CursorOrderError,
    EncodingError,
    JobConfigError,
    JobLockedError,
    LoaderError,
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
from loader.jobfile import build_job, environment, find_job_files, load_job, parse_job
from loader.monitor import cursor_lag
from loader.monitor import flush as flush_notifications
from loader.runner import RUN_ID, RunResult, run_job
from loader.schedule import Schedule
from loader.state import StateStore, open_state

__all__ = [
    "Batch",
    "Cursor",
    "CursorOrderError",
    "EncodingError",
    "Envelope",
    "Job",
    "JobConfigError",
    "JobLockedError",
    "LoaderError",
    "QueryError",
    "RUN_ID",
    "RejectedError",
    "RetriesExhaustedError",
    "Retry",
    "RetryableSinkError",
    "RunResult",
    "Schedule",
    "SinkError",
    "Source",
    "SourceError",
    "StateError",
    "StateStore",
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
    "open_state",
    "parse_job",
    "run_job",
]
