"""Where runs execute: in the clock's own threads (inline), or on Procrastinate workers
through the queue (``LOADER_EXECUTOR=procrastinate``).

The queue (:mod:`loader.workers`) is imported on first use only: it costs start-up time
that runs without workers do not need.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from loader import defaults

if TYPE_CHECKING:
    from loader.workers import QueuedRun

#: The executors the clock knows.
EXECUTORS = ("inline", "procrastinate")


def choose_executor(name: str | None, env: Mapping[str, str]) -> str:
    """``name`` (the command line's choice), else ``$LOADER_EXECUTOR`` from ``env``, else
    inline; :class:`ValueError` when that is not one of :data:`EXECUTORS`."""
    chosen = name or env.get(defaults.EXECUTOR_ENV) or "inline"
    if chosen not in EXECUTORS:
        raise ValueError(f"expected inline or procrastinate, got {chosen!r}")
    return chosen


def uses_queue(env: Mapping[str, str]) -> bool:
    """Whether ``env`` sets up workers: ``LOADER_EXECUTOR=procrastinate`` or a
    ``LOADER_QUEUE_URL``."""
    return env.get(defaults.EXECUTOR_ENV) == "procrastinate" or bool(env.get("LOADER_QUEUE_URL"))


def open_enqueue(executor: str, env: Mapping[str, str]) -> Callable[..., bool] | None:
    """For procrastinate, the ``enqueue`` of an open queue, kept open for the life of
    the process; ``None`` for inline (the clock runs jobs itself)."""
    if executor != "procrastinate":
        return None
    from loader.workers import JobQueue, queue_url

    queue = JobQueue(queue_url(env))
    queue.open()
    return queue.enqueue


def enqueue_once(job: str, job_file: Path, env: Mapping[str, str]) -> tuple[str, bool]:
    """Queue one run of ``job`` (from ``job_file``) for a worker: its run id, and
    ``False`` when a run of the job is already waiting (it will do this one's work)."""
    from loader.workers import JobQueue, queue_url

    # Like a slot's run id (UTC), marked as a one-off by the process id.
    run_id = f"{job}@{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{os.getpid()}"
    with JobQueue(queue_url(env)) as queue:
        return run_id, queue.enqueue(job, job_file, run_id=run_id)


def migrate_queue(env: Mapping[str, str]) -> bool:
    """Create the queue's tables if missing; ``True`` if it did."""
    from loader.workers import JobQueue, queue_url

    with JobQueue(queue_url(env)) as queue:
        return queue.migrate()


def queued_runs(env: Mapping[str, str]) -> list[QueuedRun] | None:
    """The runs waiting or running in the queue; ``None`` when ``env`` uses no workers."""
    if not uses_queue(env):
        return None
    from loader.workers import JobQueue, queue_url

    with JobQueue(queue_url(env)) as queue:
        return queue.runs()
