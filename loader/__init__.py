"""loader: run a SQL query, post the rows to an HTTP endpoint, reliably.

The front door::

    from loader import load_job, run_job

    job = load_job("jobs/signups.yml")
    result = run_job(job)
    print(result.rows_posted)

Everything public is importable from here; submodules are implementation details.
"""

import importlib
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

# Everything else loads on first use (see __getattr__): `loader --version` and `loader
# --help` pay for none of SQLAlchemy, psycopg, httpx or pydantic, and a run pays only for
# what it touches.
_LAZY = {
    "Batch": "loader.job",
    "Clock": "loader.scheduler",
    "Cursor": "loader.job",
    "Envelope": "loader.job",
    "Job": "loader.job",
    "JobQueue": "loader.workers",
    "Outcome": "loader.outcome",
    "QueuedRun": "loader.workers",
    "RUN_ID": "loader.logs",
    "Retry": "loader.job",
    "RunOptions": "loader.options",
    "RunResult": "loader.result",
    "Schedule": "loader.schedule",
    "Source": "loader.job",
    "StateStore": "loader.state",
    "StatusReport": "loader.status",
    "Status": "loader.result",
    "Target": "loader.job",
    "build_job": "loader.jobfile",
    "cursor_lag": "loader.monitor",
    "environment": "loader.jobfile",
    "find_job_files": "loader.jobfile",
    "flush_notifications": "loader.monitor",
    "load_job": "loader.jobfile",
    "log_event": "loader.logs",
    "open_state": "loader.state",
    "parse_job": "loader.jobfile",
    "parse_duration": "loader.units",
    "queue_url": "loader.workers",
    "render_status_page": "loader.statuspage",
    "resolve_job_file": "loader.jobfile",
    "run_and_record": "loader.outcome",
    "run_job": "loader.outcome",
    "status_report": "loader.status",
}
#: Public names whose attribute in their module has another name.
_RENAMED = {"flush_notifications": "flush", "log_event": "event"}

if TYPE_CHECKING:
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
    from loader.scheduler import Clock
    from loader.state import StateStore, open_state
    from loader.status import StatusReport, status_report
    from loader.statuspage import render_status_page
    from loader.units import parse_duration
    from loader.workers import JobQueue, QueuedRun, queue_url


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use (:class:`AttributeError`
    for any other name, so ``from loader import job`` still finds the submodule)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'loader' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), _RENAMED.get(name, name))
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    """The public names, loaded or not, with the module's own."""
    return sorted(set(globals()) | set(__all__))


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
