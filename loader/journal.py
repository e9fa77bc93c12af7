"""Writing down how a run went: its history record, its heartbeats and alerts.

Every path that runs a job (a run, a partitioned run and its ranges, a worker's run)
records its start and its end through :class:`Journal`, so a run's record, its
heartbeats and its alerts always agree. Recording never fails the run: a state store
that cannot take the end of a run is asked again a few times (its connection may have
dropped in the same failover that failed the run), then logged, and the run's own
result stands.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from loader.errors import LoaderError, StateError
from loader.job import Job
from loader.logs import event
from loader.monitor import Monitor
from loader.result import Position, RunResult
from loader.state import StateStore

log = logging.getLogger("loader")

#: Seconds to wait before each new try at recording the end of a run.
END_RETRY_WAITS = (0.5, 1.0, 2.0, 4.0)


class Journal:
    """The record of run ``run_id`` of ``job``. ``monitor`` sends the job's heartbeats
    and alerts (a range of a partitioned run leaves them to the whole run)."""

    def __init__(
        self,
        job: Job,
        store: StateStore,
        run_id: str,
        *,
        monitor: bool,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.sleep = sleep
        self.job = job
        self.store = store
        self.run_id = run_id
        self.monitor = Monitor(job, store) if monitor else None

    def started(self) -> None:
        """The run took the job: its start heartbeat (nothing without ``monitor``)."""
        if self.monitor is not None:
            self.monitor.started()

    def began(self, position: Position | None, name: str | None = None) -> None:
        """The run's history record (of ``name``, the job's by default), from
        ``position``. Raises :class:`StateError` if the store cannot record it: a run
        that cannot be recorded does not start."""
        self.store.start_run(self.run_id, name or self.job.name, position)

    def ended(
        self,
        result: RunResult,
        error: LoaderError | None = None,
        *,
        cursor: bool = False,
        only_running: bool = False,
    ) -> bool:
        """Record how the run ended (with its checkpoint when ``cursor``), then send its
        heartbeat and alerts. ``only_running`` leaves a record that already ended as it
        is and returns ``False`` (several processes ending one run record it once)."""
        counts = result.counts()
        if cursor:
            counts["cursor_to"] = result.checkpoint
        for wait in (*END_RETRY_WAITS, None):
            try:
                recorded = self.store.finish_run(
                    result.run_id, result.status, error=result.error,
                    only_running=only_running, **counts,
                )  # fmt: skip
                break
            except StateError as exc:
                if wait is None:
                    event(
                        log, "run.record_failed", logging.WARNING, run_id=result.run_id, error=exc
                    )
                    recorded = True  # unknown: still send the heartbeat and alerts
                else:
                    event(log, "run.record_retry", run_id=result.run_id, wait_s=wait, error=exc)
                    self.sleep(wait)
        if only_running and not recorded:
            return False
        if self.monitor is not None:
            self.monitor.finished(result, error)
        return True
