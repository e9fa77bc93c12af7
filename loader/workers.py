"""Runs handed to workers on other machines, through Procrastinate (a task queue that
lives in PostgreSQL). The only module that imports procrastinate.

* :class:`JobQueue` enqueues runs (``loader run --enqueue``, the clock with
  ``LOADER_EXECUTOR=procrastinate``) and serves them (``loader worker``). A job has at most
  one run waiting (Procrastinate's queueing lock, keyed by the job's name) and one running
  (its lock, the same key; and the state store's run lock besides).
* A worker killed with SIGKILL stops sending heartbeats; any other worker then finds its
  run stalled and puts it back in the queue, where it resumes from the checkpoint (the
  dead attempt's state-store lock is released first: it held the same run id).
* A worker told to stop (SIGTERM) tells its runs; they end after their requests in flight
  with the checkpoint saved, and are put back in the queue to continue elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import procrastinate
import procrastinate.exceptions
import procrastinate.jobs
import procrastinate.worker

from loader import defaults
from loader.errors import JobConfigError, JobLockedError, LoaderError, StateError
from loader.job import Job
from loader.jobfile import find_job_files, load_job
from loader.journal import Journal
from loader.logs import RUN_ID, event
from loader.outcome import record_slot, run_and_record, run_job
from loader.partitions import lane, partition_run_id, plan_partitions
from loader.redact import mask_url
from loader.result import RunResult, Status, combine
from loader.state import StateStore

log = logging.getLogger("loader.worker")

#: The Procrastinate task every run is.
TASK = "loader.run"


@dataclass(frozen=True)
class QueuedRun:
    """A run in the queue, as ``loader status`` shows it."""

    id: int
    job: str
    run_id: str
    status: str  # todo, doing, succeeded, failed, cancelled, aborted
    attempts: int
    worker: int | None


def queue_url(env: Mapping[str, str] | None = None) -> str:
    """The queue's database: ``LOADER_QUEUE_URL``, else ``LOADER_STATE_URL``, as a libpq
    URL; :class:`JobConfigError` when neither names a PostgreSQL database."""
    env = os.environ if env is None else env
    name = "LOADER_QUEUE_URL" if env.get("LOADER_QUEUE_URL") else "LOADER_STATE_URL"
    url = env.get(name, "")
    scheme, _, rest = url.partition("://")
    if scheme.split("+")[0] not in ("postgres", "postgresql") or not rest:
        shown = f"{name} is {mask_url(url)!r}" if url else "LOADER_STATE_URL is not set"
        raise JobConfigError([
            f"the Procrastinate queue lives in PostgreSQL, but {shown}; set LOADER_QUEUE_URL "
            "(or LOADER_STATE_URL) to a postgresql:// URL"
        ])  # fmt: skip
    return f"postgresql://{rest}"


class JobQueue:
    """Procrastinate on the database at ``url`` (see :func:`queue_url`). Open it with
    ``with``; it can enqueue from any thread."""

    def __init__(self, url: str | None = None, *, queue: str = defaults.QUEUE_NAME) -> None:
        self.url = url or queue_url()
        self.queue = queue
        self.app = procrastinate.App(
            connector=procrastinate.SyncPsycopgConnector(conninfo=self.url, max_size=4)
        )
        self.app.task(name=TASK, pass_context=True)(_run_task)
        self._opened = False

    def __enter__(self) -> JobQueue:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> None:
        """Open the queue's connection pool (once; again is a no-op). Raises
        :class:`StateError`, the URL masked, when the queue cannot be reached."""
        if not self._opened:
            try:
                self.app.open()
            except procrastinate.exceptions.ProcrastinateException as exc:
                raise StateError(f"cannot open the queue at {mask_url(self.url)}: {exc}") from exc
            self._opened = True

    def close(self) -> None:
        """Close the connection pool if open; a closed queue may be opened again."""
        if self._opened:
            self.app.close()
            self._opened = False

    def migrate(self) -> bool:
        """Create the queue's tables if they are missing; ``True`` if it did."""
        with self._errors("creating the queue's tables"):
            if self.app.check_connection():
                return False
            self.app.schema_manager.apply_schema()
            return True

    def enqueue(
        self,
        job: str,
        path: str | Path,
        *,
        run_id: str,
        slot: float | None = None,
        partition: int | None = None,
        lane: int = 0,
    ) -> bool:
        """Queue a run of ``job`` (from the file at ``path``); ``False`` when a run of it
        is already waiting (it will do this run's work).

        With ``partition``, the run of that key range of a partitioned run (``run_id`` is
        the partition's); ranges in the same ``lane`` run one at a time, so the lanes cap
        how many run at once across all workers."""
        name = job if partition is None else f"{job}#p{partition}"
        lock = job if partition is None else f"{job}#lane{lane}"
        task = self.app.configure_task(TASK, queue=self.queue, lock=lock, queueing_lock=name)
        with self._errors("queueing a run"):
            try:
                task.defer(job=job, path=str(path), run_id=run_id, slot=slot, partition=partition)
            except procrastinate.exceptions.AlreadyEnqueued:
                return False
        return True

    def runs(self, statuses: Iterable[str] = ("todo", "doing")) -> list[QueuedRun]:
        """The runs in the queue with one of ``statuses``, oldest first."""
        found = []
        with self._errors("listing the queue"):
            for status in statuses:
                for item in self.app.job_manager.list_jobs(queue=self.queue, status=status):
                    kwargs = item.task_kwargs
                    found.append(
                        QueuedRun(
                            id=item.id or 0, job=str(kwargs.get("job")),
                            run_id=str(kwargs.get("run_id")), status=status,
                            attempts=item.attempts, worker=item.worker_id,
                        )
                    )  # fmt: skip
        return sorted(found, key=lambda run: run.id)

    def work(
        self,
        paths: Sequence[str | Path],
        state: StateStore,
        *,
        stop: threading.Event,
        concurrency: int = defaults.WORKER_CONCURRENCY,
        stalled_after: float = defaults.WORKER_STALLED_AFTER,
        run: Callable[..., RunResult] = run_job,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Run queued runs, ``concurrency`` at once, until ``stop`` is set; then let the
        runs checkpoint, put them back in the queue, and return. Runs whose worker sent
        no heartbeat for ``stalled_after`` seconds are put back in the queue. Job files
        are read with ``env`` (default: the environment over ``.env``)."""
        runtime = _Runtime(self, [Path(p) for p in paths], state, stop, run, env)
        with self._errors("running the worker"):
            asyncio.run(self._serve(runtime, concurrency, stalled_after))

    async def _serve(self, runtime: _Runtime, concurrency: int, stalled_after: float) -> None:
        app = self.app.with_connector(procrastinate.PsycopgConnector(conninfo=self.url))
        async with app.open_async():
            worker = procrastinate.worker.Worker(
                app=app,
                queues=[self.queue],
                name=f"{socket.gethostname()}:{os.getpid()}",
                concurrency=concurrency,
                install_signal_handlers=False,
                additional_context={"loader": runtime},
                update_heartbeat_interval=max(0.5, stalled_after / 4),
                stalled_worker_timeout=stalled_after,
                delete_jobs="successful",
            )
            serving = asyncio.create_task(worker.run())  # type: ignore[no-untyped-call]
            beat = max(0.5, stalled_after / 4)
            sweep = heartbeat = 0.0
            stopping = False
            loop = asyncio.get_running_loop()
            while not serving.done():
                if runtime.stop.is_set() and not stopping:
                    stopping = True
                    worker.stop()  # type: ignore[no-untyped-call]
                if runtime.stop.is_set() and loop.time() >= heartbeat and worker.worker_id:
                    # Procrastinate stops its heartbeats when told to stop, while the
                    # runs still wind down: without these, another worker would take
                    # them for stalled and run them a second time.
                    heartbeat = loop.time() + beat
                    with contextlib.suppress(procrastinate.exceptions.ProcrastinateException):
                        await app.job_manager.update_heartbeat(worker.worker_id)
                if not runtime.stop.is_set() and loop.time() >= sweep:
                    sweep = loop.time() + max(1.0, stalled_after / 2)
                    await self._recover(app, stalled_after)
                await asyncio.sleep(0.2)
            await serving

    async def _recover(self, app: procrastinate.App, stalled_after: float) -> None:
        """Put runs whose worker went silent back in the queue; when a run of the same
        job (or range) is already waiting there, end the stalled one instead: the waiting
        run resumes from the same checkpoint."""
        try:
            stalled = await app.job_manager.get_stalled_jobs(
                queue=self.queue, task_name=TASK, seconds_since_heartbeat=stalled_after
            )
        except procrastinate.exceptions.ProcrastinateException as exc:
            event(log, "worker.stalled_check_failed", logging.ERROR, error=exc)
            return
        for item in stalled:
            run_id, job = item.task_kwargs.get("run_id"), item.task_kwargs.get("job")
            try:
                await app.job_manager.retry_job(item)
                event(log, "worker.stalled_run", logging.WARNING, job=job, run_id=run_id,
                      action="queued again")  # fmt: skip
            except procrastinate.exceptions.ProcrastinateException:
                try:
                    await app.job_manager.finish_job(
                        item, procrastinate.jobs.Status.FAILED, delete_job=True
                    )
                    event(log, "worker.stalled_run", logging.WARNING, job=job, run_id=run_id,
                          action="the run already waiting takes over")  # fmt: skip
                except procrastinate.exceptions.ProcrastinateException as exc:
                    event(log, "worker.stalled_run", logging.ERROR, job=job, run_id=run_id,
                          action="not recovered", error=exc)  # fmt: skip

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Procrastinate's errors as :class:`StateError`, naming what was being done."""
        try:
            yield
        except procrastinate.exceptions.ProcrastinateException as exc:
            raise StateError(
                f"{doing} in {mask_url(self.url)}: {exc.__cause__ or exc}; is the queue set "
                "up (`loader db upgrade`) and the database up?"
            ) from exc


class _Runtime:
    """What a worker's runs share: the job files, the state store and the stop signal."""

    def __init__(
        self,
        queue: JobQueue,
        paths: list[Path],
        state: StateStore,
        stop: threading.Event,
        run: Callable[..., RunResult],
        env: Mapping[str, str] | None,
    ) -> None:
        self.queue = queue
        self.paths = paths
        self.state = state
        self.stop = stop
        self.run = run
        self.env = env

    def find(self, name: str, path: str) -> Job:
        """The job ``name``: from ``path`` when that file exists here (its problems are
        raised), else from the worker's job files."""
        if Path(path).is_file():
            job = load_job(path, env=self.env)
            if job.name == name:
                return job
        problems: list[str] = []
        for candidate in find_job_files(self.paths):
            try:
                job = load_job(candidate, env=self.env)
            except JobConfigError as exc:
                problems += exc.problems
                continue
            if job.name == name:
                return job
        raise JobConfigError([
            f"job {name!r}: no job file of that name in {', '.join(map(str, self.paths))} "
            f"or at {path}", *problems,
        ])  # fmt: skip

    def execute(
        self, name: str, path: str, run_id: str, slot: float | None, partition: int | None
    ) -> None:
        """Run one queued task: the whole job ``name`` (found at ``path`` or among the
        job files), a partitioned job's fan-out, or its key range ``partition``.

        Raises the run's error so Procrastinate records the task failed; a job that
        cannot be found also fails the clock's ``slot`` (of a task that is not a range).
        """
        token = RUN_ID.set(run_id)
        try:
            try:
                job = self.find(name, path)
            except LoaderError as exc:
                if slot is not None and partition is None:
                    record_slot(self.state, name, slot, Status.FAILED, str(exc))
                raise
            if partition is not None:
                self._run_partition(job, path, run_id, slot, partition)
            elif job.source.partition is not None:
                self._fan_out(job, path, run_id, slot)
            else:
                self._run(job, path, run_id, slot, partition=None)
        finally:
            RUN_ID.reset(token)

    def _run(
        self,
        job: Job,
        path: str,
        run_id: str,
        slot: float | None,
        *,
        partition: int | None,
        lane: int = 0,
    ) -> Status:
        """Run ``job`` (a whole job, or key range ``partition`` in ``lane``); return its
        status. A run that fails raises its error (Procrastinate records the task failed)."""
        # Procrastinate runs one run of a job (or range) at a time, so a lock held under
        # this run id belongs to an attempt of this very run on a worker that died.
        self.state.break_lock(job.name, run_id)
        # A range's heartbeats and alerts are its whole run's (see _fan_out).
        outcome = run_and_record(
            job, self.state, run_id, slot=slot if partition is None else None, run=self.run,
            record_skipped=True, stop=self.stop, monitor=partition is None,
        )  # fmt: skip
        if outcome.error is not None and not isinstance(outcome.error, JobLockedError):
            raise outcome.error
        if outcome.status == Status.INTERRUPTED and self.stop.is_set():
            return self._again(job, path, run_id, slot, partition, lane)
        return Status(outcome.status)

    def _again(
        self, job: Job, path: str, run_id: str, slot: float | None, partition: int | None, lane: int
    ) -> Status:
        """Queue an interrupted run again, to continue from its checkpoint."""
        again = self.queue.enqueue(
            job.name.split("#", 1)[0], path, run_id=run_id, slot=slot, partition=partition,
            lane=lane,
        )  # fmt: skip
        if again:
            event(log, "run.requeued", job=job.name, run_id=run_id)
            return Status.INTERRUPTED
        event(log, "run.left_to_waiting", job=job.name, run_id=run_id)
        if partition is None:
            return Status.INTERRUPTED
        # That run does this range's work.
        self.state.finish_run(run_id, Status.SKIPPED, error="left to the run already waiting")
        return Status.SKIPPED

    def _fan_out(self, job: Job, path: str, run_id: str, slot: float | None) -> None:
        """A partitioned run: queue each key range as a run of its own; the last range
        to end records the whole run's end."""
        journal = Journal(job, self.state, run_id, monitor=True)
        journal.started()
        journal.began(None)
        try:
            parts = plan_partitions(job, self.state)
            for index in range(len(parts)):
                self._queue_range(job, path, run_id, slot, parts[index], index)
        except LoaderError as exc:
            detail = job.redactor().text(str(exc))
            result = replace(combine(job.name, run_id, [], 0.0), status=Status.FAILED,
                             error=detail)  # fmt: skip
            journal.ended(result, exc)
            if slot is not None:
                record_slot(self.state, job.name, slot, Status.FAILED, detail)
            raise
        event(log, "run.split", job=job.name, run_id=run_id, ranges=len(parts))
        self._finish_whole(job, run_id, slot, len(parts))

    def _queue_range(
        self, job: Job, path: str, run_id: str, slot: float | None, part: Job, index: int
    ) -> None:
        """Record range ``index`` of run ``run_id`` as started, then queue it in its lane;
        a range whose earlier run still waits is recorded as skipped."""
        part_run = partition_run_id(run_id, index)
        # Started before it is queued: the last range to end checks every range's
        # record, and must not find one missing because its task has not begun.
        self.state.start_run(part_run, part.name, None)
        queued = self.queue.enqueue(
            job.name, path, run_id=part_run, slot=slot, partition=index, lane=lane(job, index)
        )
        if not queued:  # a range of an earlier run is still waiting: it does the work
            waiting = "a run of this range was still waiting"
            self.state.finish_run(part_run, Status.SKIPPED, error=waiting)

    def _run_partition(
        self, job: Job, path: str, run_id: str, slot: float | None, index: int
    ) -> None:
        """Run range ``index`` of the partitioned run whose range run id is ``run_id``,
        then record the whole run's end if it was the last range to end."""
        whole = run_id.rsplit("#p", 1)[0]
        count = job.source.partition.count if job.source.partition else 0
        try:
            parts = plan_partitions(job, self.state)
            count = len(parts)
            if index >= len(parts):  # the job changed since the run was split
                self.state.finish_run(run_id, Status.SKIPPED, error="the job has fewer ranges now")
                return
            self._run(parts[index], path, run_id, slot, partition=index, lane=lane(job, index))
        finally:
            self._finish_whole(job, whole, slot, count)

    def _finish_whole(self, job: Job, run_id: str, slot: float | None, count: int) -> None:
        """Record the end of partitioned run ``run_id`` once every range has ended (each
        range records its own end first, so the last one to end sees them all)."""
        results = []
        for index in range(count):
            record = self.state.run_record(partition_run_id(run_id, index))
            if record is None or not Status(record.status).ended:
                return
            results.append(
                RunResult(
                    record.job, record.run_id, Status(record.status), record.rows_read,
                    record.rows_posted, record.requests, record.retries, 0.0,
                    rows_rejected=record.rows_rejected, error=record.error,
                )
            )  # fmt: skip
        whole = replace(
            combine(job.name, run_id, results, 0.0), checkpoint=self.state.lag_position(job.name)
        )
        # Another range's worker, ending at the same moment, may have recorded it.
        if not Journal(job, self.state, run_id, monitor=True).ended(whole, only_running=True):
            return
        if slot is not None:
            record_slot(self.state, job.name, slot, whole.status, whole.error)
        event(log, "run.ended", job=job.name, run_id=run_id, status=whole.status,
              rows=whole.rows_posted, duration_s=whole.duration or None, error=whole.error,
              ranges=count)  # fmt: skip


def _run_task(
    context: procrastinate.JobContext,
    job: str,
    path: str,
    run_id: str,
    slot: float | None = None,
    partition: int | None = None,
) -> None:
    runtime = context.additional_context["loader"]
    assert isinstance(runtime, _Runtime)
    runtime.execute(job, path, run_id, slot, partition)
