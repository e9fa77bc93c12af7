"""The clock: runs job files on their schedules, built for dynos.

* **At most once per slot.** Each slot of each job gets a deterministic run id
  (``job@20261126T054000Z``), claimed in the state store under a primary key before it
  runs: two clocks alive at once (a deploy) never run the same slot twice.
* **No overlap.** A slot whose job is still running (here, or anywhere: the job's run
  lock) is skipped and recorded as ``skipped``.
* **Catch-up.** After downtime, the latest missed slot runs once if it is at most
  ``catch_up`` old; every other missed slot is recorded as ``missed``.
* **Isolation.** Runs go to an executor (threads, ``max_parallel`` at once); a slow or
  failing job never delays the others, and an exception in a run never stops the clock.
  Given ``enqueue`` (``loader.JobQueue.enqueue``), the clock only queues runs, and
  ``loader worker`` processes on any machine run them.
* **Shutdown.** When ``stop`` is set, nothing new starts; running jobs see the same event,
  finish their requests in flight and keep their checkpoints; the clock waits for them
  up to ``grace`` seconds.
* **Reload.** Setting ``reload`` (SIGHUP in ``loader clock``), or changing a job file,
  reloads the job files without a restart.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import loader
from loader import Job, JobConfigError, LoaderError, Schedule, StateStore, Status, log_event

from .metrics import Metrics, MetricsServer
from .web import status_page, ui_password, ui_refresh

log = logging.getLogger("loader.clock")

#: Missed slots recorded one by one after downtime; more are counted in the detail.
MAX_MISSED_RECORDS = 100
#: Seconds after its time a slot still counts as due, not missed.
JUST_DUE = 2.0
#: Seconds between refreshes of the cursor-lag metric of every job.
LAG_REFRESH = 15.0


def slot_run_id(job: str, slot: float) -> str:
    """The deterministic run id of ``job``'s slot: every clock derives the same one."""
    stamp = datetime.fromtimestamp(slot, UTC).strftime("%Y%m%dT%H%M%S")
    millis = round((slot % 1) * 1000)
    return f"{job}@{stamp}{f'.{millis:03d}' if millis else ''}Z"


def _when(slot: float) -> str:
    return datetime.fromtimestamp(slot, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class Scheduled:
    """A job the clock runs: its file, schedule and next slot."""

    path: Path
    job: Job
    schedule: Schedule
    next_at: float


class Clock:
    """Runs the job files under ``paths`` on their schedules until stopped.

    ``now`` is the wall clock (Unix seconds); ``run`` the function that runs one job
    (``loader.run_job``). Both are seams for tests. ``enqueue(job_name, path, run_id=,
    slot=)`` hands each claimed slot to workers instead of running it here; it returns
    ``False`` when a run of the job is already waiting.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        *,
        state: StateStore | None = None,
        max_parallel: int = loader.defaults.CLOCK_MAX_PARALLEL,
        grace: float = loader.defaults.CLOCK_GRACE,
        reload_poll: float = loader.defaults.CLOCK_RELOAD_POLL,
        env: Mapping[str, str] | None = None,
        now: Callable[[], float] = time.time,
        run: Callable[..., loader.RunResult] = loader.run_job,
        metrics_port: int | None = None,
        enqueue: Callable[..., bool] | None = None,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.state = state if state is not None else loader.open_state()
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.max_parallel = max_parallel
        self.grace = grace
        self.reload_poll = reload_poll
        self.env = env
        self.now = now
        self.run_job = run
        self.enqueue = enqueue
        self.jobs: dict[str, Scheduled] = {}
        self.problems: dict[Path, list[str]] = {}
        self.running: dict[str, Future[None]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._thread: threading.Thread | None = None
        self._files: dict[Path, float] = {}
        self._signal = self._stop  # what running jobs watch; run() may be given another
        self._executor = ThreadPoolExecutor(max_parallel, thread_name_prefix="loader-clock")
        self.metrics = Metrics()
        self.metrics_port = metrics_port
        self._server: MetricsServer | None = None
        self._last_tick = 0.0
        self._ticked_at: float | None = None
        self._started_at = self.now()

    # Running

    def run(
        self, stop: threading.Event | None = None, reload: threading.Event | None = None
    ) -> None:
        """Run in this thread until ``stop`` is set (or :meth:`stop` is called)."""
        stop = self._signal = stop or self._stop
        reload = reload or self._reload
        if self.metrics_port is not None:
            try:
                self._server = self._serve(self.metrics_port)
            except OSError as exc:
                raise JobConfigError(
                    [
                        f"cannot serve /metrics, /healthz and / on port {self.metrics_port} "
                        f"({exc.strerror}): another process holds it; choose a free one "
                        "with --port (or $PORT)"
                    ]
                ) from exc
            log_event(log, "clock.serving", port=self._server.port)
        self.load(catch_up=True)
        next_poll = self.now() + self.reload_poll
        next_lag = self.now()
        try:
            while not stop.is_set() and not self._stop.is_set():
                now = self.now()
                if reload.is_set() or (now >= next_poll and self._files_changed()):
                    reload.clear()
                    log_event(log, "clock.reloading")
                    self.load(catch_up=False)
                if now >= next_poll:
                    next_poll = now + self.reload_poll
                self.tick(now)
                self._last_tick, self._ticked_at = time.monotonic(), now
                if now >= next_lag:
                    next_lag = now + LAG_REFRESH
                    self._refresh_lag(now)
                upcoming = min((s.next_at for s in self.jobs.values()), default=now + 1)
                stop.wait(max(0.0, min(upcoming - self.now(), next_poll - now, 0.5)))
        finally:
            self._shutdown()

    def _refresh_lag(self, now: float) -> None:
        """Keep the cursor-lag gauge current between runs (it grows while runs stop)."""
        for name in list(self.jobs):
            try:
                position = self.state.lag_position(name)
            except LoaderError:
                continue
            lag = loader.cursor_lag(position, now)
            if lag is not None:
                self.metrics.cursor_lag.labels(name).set(lag)

    def _serve(self, port: int) -> MetricsServer:
        """Serve /metrics, /healthz and the status page (at /) on ``port``."""
        env = self.env if self.env is not None else loader.environment()
        page = status_page(self.paths, env, self.state, self.facts, refresh=ui_refresh(env))
        return MetricsServer(self.metrics, self.health, port, page=page,
                             password=ui_password(env, port))  # fmt: skip

    def facts(self) -> dict[str, Any]:
        """The clock's health as the status page shows it."""
        healthy, details = self.health()
        executor = "procrastinate" if self.enqueue else f"inline, {self.max_parallel} at once"
        problems = [problem for found in self.problems.values() for problem in found]
        return {
            "healthy": healthy, "up_since": self._started_at, "last_tick": self._ticked_at,
            "executor": executor, "running": details["running"], "bad_files": problems,
        }  # fmt: skip

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy while the loop ticks (it does at least every half second)."""
        with self._lock:
            running = sorted(self.running)
        details = {"jobs": sorted(self.jobs), "running": running,
                   "bad_files": [str(path) for path in self.problems]}  # fmt: skip
        return time.monotonic() - self._last_tick < 10, details

    def tick(self, now: float) -> None:
        """Start the runs due at ``now`` (the body of the clock's loop)."""
        for scheduled in list(self.jobs.values()):
            if scheduled.next_at <= now:
                self._due(scheduled, now)

    def idle(self, timeout: float | None = None) -> bool:
        """Wait until no run is going; ``False`` if some still are after ``timeout``."""
        with self._lock:
            running = list(self.running.values())
        _done, pending = wait(running, timeout=timeout)
        return not pending

    def start(self) -> threading.Thread:
        """Run in a background thread; :meth:`stop` ends it."""
        self._thread = threading.Thread(target=self.run, name="loader-clock", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float | None = None) -> None:
        """Stop (from any thread): nothing new starts, running jobs are told to end; wait
        for the clock to return."""
        self._stop.set()
        self._signal.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def reload(self) -> None:
        """Reload the job files at the next tick."""
        self._reload.set()

    # Loading

    def load(self, *, catch_up: bool) -> None:
        """(Re)load every job file. Bad files are logged and left out; the rest run."""
        env = self.env if self.env is not None else loader.environment()
        loaded: dict[str, Scheduled] = {}
        self.problems = {}
        files = loader.find_job_files(self.paths)
        self._files = {path: _mtime(path) for path in files}
        for path in files:
            try:
                job = loader.load_job(path, env=env)
                schedule = job.schedule_spec()
                next_at = schedule.next_after(self.now()) if schedule else 0.0
            except JobConfigError as exc:
                self.problems[path] = exc.problems
                for problem in exc.problems:
                    log_event(log, "clock.bad_job_file", logging.ERROR, error=problem)
                continue
            except Exception as exc:  # one odd file must not stop the clock
                self.problems[path] = [f"{path}: {type(exc).__name__}: {exc}"]
                log_event(log, "clock.bad_job_file", logging.ERROR, error=self.problems[path][0])
                continue
            if schedule is None:
                log_event(log, "clock.job_unscheduled", job=job.name, file=path)
                continue
            if job.name in loaded:
                log_event(
                    log,
                    "clock.job_duplicate",
                    logging.ERROR,
                    job=job.name,
                    kept=loaded[job.name].path,
                    file=path,
                )
                continue
            previous = self.jobs.get(job.name)
            if previous is not None and previous.schedule == schedule:
                next_at = previous.next_at
            loaded[job.name] = Scheduled(path, job, schedule, next_at)
        self.jobs = loaded
        for scheduled in loaded.values():
            if catch_up:
                self._catch_up(scheduled)
            log_event(
                log,
                "clock.job_scheduled",
                job=scheduled.job.name,
                schedule=scheduled.schedule.text,
                timezone=scheduled.schedule.timezone,
                next=_when(scheduled.next_at),
            )
        if not loaded:
            log_event(log, "clock.no_jobs", logging.WARNING, paths=self.paths)

    def _files_changed(self) -> bool:
        files = loader.find_job_files(self.paths)
        return {path: _mtime(path) for path in files} != self._files

    def _catch_up(self, scheduled: Scheduled) -> None:
        """After downtime: run the latest missed slot if recent enough, record the rest."""
        job, schedule = scheduled.job, scheduled.schedule
        last = self.state.last_slot(job.name)
        now = self.now()
        if last is None:
            return  # a job this clock never ran: nothing was missed
        latest = schedule.latest_at_or_before(now)
        if latest <= last:
            return
        missed_count = schedule.count(last, latest)
        # A slot due a moment ago is not missed: a clock that is still running (during a
        # deploy) may be about to run it; fire it (the claim decides who) whatever the
        # catch-up window.
        recent = now - latest <= max(job.catch_up, JUST_DUE)
        older = list(schedule.slots(last, latest))
        if recent:
            older = older[:-1]
        if older:
            detail = f"{missed_count - (1 if recent else 0)} slot(s) missed while no clock ran"
            self.state.record_missed(job.name, older[-MAX_MISSED_RECORDS:], self.name, detail)
            log_event(
                log,
                "clock.slots_missed",
                logging.WARNING,
                job=job.name,
                slots=len(older),
                first=_when(older[0]),
                last=_when(older[-1]),
            )
        if recent:
            log_event(log, "clock.catching_up", job=job.name, slot=_when(latest))
            self._fire(scheduled, latest)

    # Firing

    def _due(self, scheduled: Scheduled, now: float) -> None:
        """Fire the latest due slot; slots passed over (the clock was stalled) are missed."""
        schedule = scheduled.schedule
        latest = schedule.latest_at_or_before(now)
        passed = [
            slot for slot in schedule.slots(scheduled.next_at - 1e-6, latest) if slot < latest
        ]
        if passed:
            self.state.record_missed(
                scheduled.job.name, passed[-MAX_MISSED_RECORDS:], self.name,
                "the clock was stalled past these slots",
            )  # fmt: skip
        scheduled.next_at = schedule.next_after(max(now, latest))
        self._fire(scheduled, latest)

    def _fire(self, scheduled: Scheduled, slot: float) -> None:
        job = scheduled.job
        run_id = slot_run_id(job.name, slot)
        try:
            if not self.state.claim_slot(job.name, slot, run_id, self.name):
                log_event(log, "clock.slot_claimed_elsewhere", job=job.name, run_id=run_id)
                return
            with self._lock:
                busy = job.name in self.running
            if busy:
                self.state.finish_slot(
                    job.name, slot, Status.SKIPPED, "the previous run is still going"
                )
                log_event(
                    log,
                    "clock.slot_skipped",
                    logging.WARNING,
                    job=job.name,
                    run_id=run_id,
                    reason="the previous run is still going",
                )
                return
        except LoaderError as exc:
            log_event(
                log, "clock.slot_failed", logging.ERROR, job=job.name, run_id=run_id, error=exc
            )
            return
        if self.enqueue is not None:
            self._queue(scheduled, run_id, slot)
            return
        with self._lock:
            future = self._executor.submit(self._run_one, job, run_id, slot, self._signal)
            self.running[job.name] = future
        future.add_done_callback(self._finished(job.name))

    def _queue(self, scheduled: Scheduled, run_id: str, slot: float) -> None:
        """Hand the claimed slot to the workers (recorded as queued first: a worker may
        record its end before this returns)."""
        job = scheduled.job
        assert self.enqueue is not None
        self._record_slot(job, slot, Status.QUEUED, None)
        try:
            queued = self.enqueue(job.name, scheduled.path, run_id=run_id, slot=slot)
        except LoaderError as exc:
            log_event(
                log, "clock.queue_failed", logging.ERROR, job=job.name, run_id=run_id, error=exc
            )
            self._record_slot(job, slot, Status.FAILED, f"could not be queued: {exc}")
            return
        if queued:
            log_event(log, "run.queued", job=job.name, run_id=run_id, slot=_when(slot))
        else:
            detail = "a run of the job is still waiting in the queue"
            log_event(
                log,
                "clock.slot_skipped",
                logging.WARNING,
                job=job.name,
                run_id=run_id,
                reason=detail,
            )
            self._record_slot(job, slot, Status.SKIPPED, detail)

    def _finished(self, name: str) -> Callable[[Future[None]], None]:
        def forget(_future: Future[None]) -> None:
            """Let the job's next slot run: its run ended (in any way)."""
            with self._lock:
                self.running.pop(name, None)

        return forget

    def _run_one(self, job: Job, run_id: str, slot: float, stop: threading.Event) -> None:
        """Run one slot; never raises (a failing job must not stop the clock)."""
        if stop.is_set():  # queued behind other runs while the clock was stopping
            self._record_slot(job, slot, Status.SKIPPED, "the clock was stopping")
            return
        token = loader.RUN_ID.set(run_id)
        try:
            self._run(job, run_id, slot, stop)
        finally:
            loader.RUN_ID.reset(token)

    def _record_slot(self, job: Job, slot: float, status: str, detail: str | None) -> None:
        try:
            self.state.finish_slot(job.name, slot, status, detail)
        except LoaderError as exc:
            log_event(log, "clock.slot_record_failed", logging.ERROR, job=job.name, error=exc)

    def _run(self, job: Job, run_id: str, slot: float, stop: threading.Event) -> None:
        outcome = loader.run_and_record(
            job, self.state, run_id, slot=slot, run=self.run_job, stop=stop
        )
        try:
            lag = loader.cursor_lag(self.state.lag_position(job.name), self.now())
            self.metrics.observe(
                job.name, outcome.result, outcome.status, lag=lag, now=self.now(),
                dead_letters=self.state.dead_letter_count(job.name),
            )  # fmt: skip
        except LoaderError as exc:
            log_event(
                log, "clock.metrics_failed", logging.ERROR, job=job.name, run_id=run_id, error=exc
            )

    def _shutdown(self) -> None:
        with self._lock:
            running = list(self.running.values())
        if running:
            log_event(log, "clock.stopping", grace_s=self.grace, running=len(running))
            _done, pending = wait(running, timeout=self.grace)
            if pending:
                log_event(log, "clock.grace_expired", logging.WARNING, running=len(pending))
        self._executor.shutdown(wait=False, cancel_futures=True)
        loader.flush_notifications(timeout=3)
        if self._server is not None:
            self._server.close()
        log_event(log, "clock.stopped")


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
