"""The status report as data: for each job file, its schedule, last run, cursor lag,
next run, dead letters and (with workers) its runs in the queue.

``loader status`` renders it as a table or prints it as JSON; the keys of each row are
the JSON's.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loader.errors import JobConfigError
from loader.executors import queued_runs
from loader.job import Job
from loader.jobfile import find_job_files, load_job
from loader.monitor import cursor_lag
from loader.state import StateStore, open_state
from loader.units import when

if TYPE_CHECKING:
    from loader.workers import QueuedRun


@dataclass(frozen=True)
class StatusReport:
    """One row per job file, in file order, and whether the queue was consulted.

    A job's row has ``job``, ``file``, ``schedule``, ``timezone``, ``last_run`` (local
    ISO time), ``status``, ``lock_lapsed_at`` (for a run still recorded as running whose
    lock lapsed: when), ``rows_posted``, ``error`` (redacted), ``cursor_lag_seconds``,
    ``next_run``, ``dead_letters`` and, when ``queue`` is true, ``queued`` and
    ``running``; each is ``None`` when unknown. Asked for ``recent`` runs, a row also has
    ``runs``: the newest first, each with ``run_id``, ``started``, ``status``,
    ``lock_lapsed_at``, ``rows_posted``, ``rows_rejected``, ``seconds`` and ``error``
    (redacted). A bad job file's row has ``job`` (the file's stem), ``file`` and
    ``problem`` (the first of its problems)."""

    jobs: list[dict[str, Any]]
    queue: bool


def status_report(
    paths: Sequence[Path],
    env: Mapping[str, str],
    *,
    now: float | None = None,
    recent: int = 0,
    store: StateStore | None = None,
) -> StatusReport:
    """Gather the report for the job files in ``paths`` (files or directories) from the
    state store (``store``, else one opened and closed here) and, when ``env`` uses
    workers, the queue; with ``recent``, each job's last runs too. Raises the store's and
    the queue's errors (:class:`loader.errors.StateError`, :class:`JobConfigError`)."""
    opened = store is None
    store = open_state() if store is None else store
    now = time.time() if now is None else now
    queued = queued_runs(env)
    rows: list[dict[str, Any]] = []
    for path in find_job_files(list(paths)):
        try:
            job = load_job(path, env=env)
        except JobConfigError as exc:
            rows.append({"job": path.stem, "file": str(path), "problem": exc.problems[0]})
            continue
        rows.append(_job_row(job, path, store, now, queued))
        if recent:
            rows[-1]["runs"] = _recent_runs(job, store, recent)
    if opened:
        store.close()
    return StatusReport(jobs=rows, queue=queued is not None)


def _job_row(
    job: Job, path: Path, store: StateStore, now: float, queued: list[QueuedRun] | None
) -> dict[str, Any]:
    last = next(iter(store.history(job.name, limit=1)), None)
    schedule = job.schedule_spec()
    lag = cursor_lag(store.lag_position(job.name), now)
    return {
        "job": job.name,
        "file": str(path),
        "schedule": job.schedule,
        "timezone": job.timezone,
        "last_run": when(last.started_at) if last else None,
        "status": last.status if last else None,
        "lock_lapsed_at": last.lock_lapsed if last else None,
        "rows_posted": last.rows_posted if last else None,
        "error": job.redactor().text(last.error) if last and last.error else None,
        "cursor_lag_seconds": round(lag, 1) if lag is not None else None,
        "next_run": when(schedule.next_after(now)) if schedule else None,
        "dead_letters": store.dead_letter_count(job.name),
        **({} if queued is None else {
            "queued": sum(r.job == job.name and r.status == "todo" for r in queued),
            "running": sum(r.job == job.name and r.status == "doing" for r in queued),
        }),
    }  # fmt: skip


def _recent_runs(job: Job, store: StateStore, limit: int) -> list[dict[str, Any]]:
    redactor = job.redactor()
    return [
        {
            "run_id": run.run_id,
            "started": when(run.started_at),
            "status": run.status,
            "lock_lapsed_at": run.lock_lapsed,
            "rows_posted": run.rows_posted,
            "rows_rejected": run.rows_rejected,
            "seconds": round(run.ended_at - run.started_at, 1) if run.ended_at else None,
            "error": redactor.text(run.error) if run.error else None,
        }
        for run in store.history(job.name, limit=limit)
    ]
