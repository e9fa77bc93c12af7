"""The run loop: the only module that knows the source, batching, the sink, retries and
the state store together.

Stages are generators chained end to end (rows -> encoded rows -> batches -> requests),
so memory stays bounded by ``fetch_size`` and one batch, whatever the size of the result.
A batch is done when the endpoint acknowledged it, or when its rejected rows are isolated
(by bisection) and kept as dead letters; only then does the checkpoint move past it.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import operator
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from loader import defaults
from loader._version import __version__
from loader.batching import Batch, Chunk, batches, singles
from loader.encoding import Framing, RowEncoder, UrlFiller, framing
from loader.errors import (
    CursorOrderError,
    LoaderError,
    LockLostError,
    QueryError,
    RejectedError,
    StateError,
    TooManyRejectionsError,
)
from loader.job import Job
from loader.logs import RUN_ID
from loader.monitor import Monitor
from loader.redact import Redactor
from loader.result import Position, RunResult, Status, combine
from loader.retry import Interrupted, RetryPolicy
from loader.sink import ItemError, Request, Sink, idempotency_key
from loader.source import RowStream, key_range, open_stream
from loader.state import Lease, StateStore, encode_position, open_state

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("loader")

USER_AGENT = f"loader/{__version__}"
#: Rejections that are about the request, not a row: bisecting would not isolate anything.
NOT_ROW_STATUSES = frozenset({401, 403, 404, 405, 407})
#: With per-row requests a 404 is about the row's resource (its URL), not the target.
NOT_ROW_STATUSES_PER_ROW = NOT_ROW_STATUSES - {404}
_ORDERED_TYPES = frozenset({int, float, Decimal, datetime, date})


@dataclass
class _Counters:
    rows_read: int = 0
    rows_posted: int = 0
    rows_rejected: int = 0
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    in_flight: int = 0
    checkpoint: Position | None = None
    preview: list[Request] = field(default_factory=list)

    def as_record(self) -> dict[str, Any]:
        return {
            "rows_read": self.rows_read,
            "rows_posted": self.rows_posted,
            "rows_rejected": self.rows_rejected,
            "requests": self.requests,
            "retries": self.retries,
            "cursor_to": self.checkpoint,
        }


def run_job(
    job: Job,
    *,
    state: StateStore | None = None,
    full_refresh: bool = False,
    limit: int | None = None,
    dry_run: bool = False,
    preview: int = defaults.DRY_RUN_REQUESTS,
    stop: threading.Event | None = None,
    sleep: Callable[[float], None] | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    transport: httpx.BaseTransport | None = None,
    run_id: str | None = None,
    lock_ttl: float = defaults.LOCK_TTL,
    monitor: bool = True,
    progress: Callable[[RunResult], None] | None = None,
) -> RunResult:
    """Stream the job's rows to its endpoint and return what happened.

    ``state`` defaults to :func:`loader.open_state` (``$LOADER_STATE_URL`` or
    ``.loader/state.db``). With a cursor, the run resumes after the checkpoint unless
    ``full_refresh``. ``limit`` stops after that many rows. ``dry_run`` reads and encodes
    the rows but sends and records nothing; the first ``preview`` requests are kept in
    ``RunResult.preview``. ``stop`` ends the run between batches and wakes retry sleeps;
    the result is then ``interrupted``. ``sleep``, ``monotonic`` and ``transport`` are
    seams for tests. ``monitor`` sends the job's heartbeats and alerts (see
    :mod:`loader.monitor`). ``progress`` is called with the counts so far each time
    batches are acknowledged.

    Raises a :class:`LoaderError` when the run fails (its ``result`` holds the counts up
    to the failure), :class:`JobLockedError` when another run holds the job. Never exits
    the process.
    """
    run_id = run_id or uuid.uuid4().hex[:12]
    store = state if state is not None else open_state()
    try:
        if job.source.partition is not None:
            return _run_partitions(
                job, store, run_id, full_refresh=full_refresh, limit=limit, dry_run=dry_run,
                preview=preview, stop=stop or threading.Event(), sleep=sleep,
                monotonic=monotonic, transport=transport, lock_ttl=lock_ttl, monitor=monitor,
            )  # fmt: skip
        run = _Run(job, store, run_id, monotonic, lock_ttl)
        run.monitor = Monitor(job, store) if monitor and not dry_run else None
        run.progress = progress
        token = RUN_ID.set(run_id)
        try:
            return run.run(
                full_refresh=full_refresh,
                limit=limit,
                dry_run=dry_run,
                preview=preview,
                stop=stop or threading.Event(),
                sleep=sleep,
                transport=transport,
            )
        finally:
            RUN_ID.reset(token)
    finally:
        if state is None:
            store.close()


def plan_partitions(job: Job, store: StateStore, *, keep: bool = True) -> list[Job]:
    """The jobs of ``job``'s key ranges (see ``Job.partition_job``). The boundaries are
    computed from the partition column's range at the first run and kept in ``store``
    (unless not ``keep``); while the result is empty there are no ranges (and nothing is
    kept)."""
    partition = job.source.partition
    assert partition is not None

    def even_split() -> tuple[int, ...]:
        low, high = key_range(job.source, job.redactor(), partition.column)
        if low is None or high is None:
            raise _NoRows
        for value in (low, high):
            if not isinstance(value, int) or isinstance(value, bool):
                raise QueryError(
                    f"source.partition.column {partition.column!r} holds "
                    f"{type(value).__name__} values; key ranges need an integer column "
                    "(an id, a sequence)"
                )
        span = high - low + 1
        return tuple(low + span * i // partition.count for i in range(1, partition.count))

    try:
        bounds = store.partition_bounds(job.name, partition.count, even_split, keep=keep)
    except _NoRows:  # no keys yet (no rows, or NULL keys only): one range, kept nowhere
        return [job.partition_job(0, ())]
    return [job.partition_job(index, bounds) for index in range(partition.count)]


class _NoRows(Exception):
    """The partition column has no values yet: nothing to split, nothing to keep."""


def partition_run_id(run_id: str, index: int) -> str:
    """The run id of partition ``index`` of run ``run_id``."""
    return f"{run_id}#p{index}"


def _run_partitions(
    job: Job,
    store: StateStore,
    run_id: str,
    *,
    stop: threading.Event,
    monotonic: Callable[[], float],
    lock_ttl: float,
    monitor: bool,
    dry_run: bool,
    **options: Any,
) -> RunResult:
    """Run each key range as a run of its own (own lock, checkpoint and history), up to
    ``parallel_partitions`` at once, under the job's own lock and run record."""
    started = monotonic()
    lease = None if dry_run else store.acquire(job.name, run_id, ttl=lock_ttl)
    lost = threading.Event()
    keeper = _LockKeeper(store, lease, lock_ttl, lost) if lease is not None else None
    watch = Monitor(job, store) if monitor and not dry_run else None
    try:
        if watch is not None:
            watch.started()
        if not dry_run:
            store.start_run(run_id, job.name, None)
        try:
            parts = plan_partitions(job, store, keep=not dry_run)
        except LoaderError as exc:
            exc.result = combine(job.name, run_id, [], monotonic() - started)
            _finish_partitioned(store, exc.result, dry_run, watch, exc)
            raise
        results: list[RunResult] = []
        errors: list[LoaderError] = []

        def collect(call: Callable[[], RunResult]) -> None:
            try:
                results.append(call())
            except LoaderError as exc:
                errors.append(exc)
                if exc.result is not None:
                    results.append(exc.result)

        limit = options.get("limit")
        if limit is not None:  # a row limit is the whole run's: one range after the other
            for index, part in enumerate(parts):
                room = limit - sum(result.rows_read for result in results)
                if room <= 0 or errors:
                    break
                collect(functools.partial(
                    _run_part, part, store, partition_run_id(run_id, index), stop, dry_run,
                    lock_ttl, {**options, "limit": room},
                ))  # fmt: skip
        else:
            with ThreadPoolExecutor(max(1, job.parallel_partitions)) as pool:
                futures = [
                    pool.submit(
                        contextvars.copy_context().run, _run_part, part, store,
                        partition_run_id(run_id, index), stop, dry_run, lock_ttl, options,
                    )
                    for index, part in enumerate(parts)
                ]  # fmt: skip
                for future in futures:
                    collect(future.result)
        result = combine(job.name, run_id, results, monotonic() - started)
        if keeper is not None and not errors:
            try:
                keeper.check()
            except StateError as exc:
                errors.append(exc)
        if errors:
            errors[0].result = result
            _finish_partitioned(store, result, dry_run, watch, errors[0])
            raise errors[0]
        _finish_partitioned(store, result, dry_run, watch, None)
        return result
    finally:
        if keeper is not None and lease is not None:
            keeper.stop()
            try:
                store.release(lease)
            except StateError as exc:
                log.warning("could not release the lock: %s", exc)


def _run_part(
    part: Job,
    store: StateStore,
    run_id: str,
    stop: threading.Event,
    dry_run: bool,
    lock_ttl: float,
    options: dict[str, Any],
) -> RunResult:
    return run_job(
        part, state=store, stop=stop, run_id=run_id, dry_run=dry_run, lock_ttl=lock_ttl,
        monitor=False, **options,
    )  # fmt: skip


def _finish_partitioned(
    store: StateStore,
    result: RunResult,
    dry_run: bool,
    watch: Monitor | None,
    error: LoaderError | None,
) -> None:
    if dry_run:
        return
    try:
        store.finish_run(
            result.run_id, result.status, rows_read=result.rows_read,
            rows_posted=result.rows_posted, rows_rejected=result.rows_rejected,
            requests=result.requests, retries=result.retries, error=result.error,
        )  # fmt: skip
    except StateError as exc:
        log.warning("could not record the end of run %s: %s", result.run_id, exc)
    if watch is not None:
        watch.finished(result, error)


class _Run:
    """One run's bookkeeping: counters, the lock and the result."""

    def __init__(
        self,
        job: Job,
        store: StateStore,
        run_id: str,
        monotonic: Callable[[], float],
        lock_ttl: float,
    ) -> None:
        self.job = job
        self.store = store
        self.run_id = run_id
        self.monotonic = monotonic
        self.lock_ttl = lock_ttl
        self.counters = _Counters()
        self.full_refresh = False
        self.lost = threading.Event()  # set when the run's lock was lost: stop, and fail
        self.monitor: Monitor | None = None
        self.progress: Callable[[RunResult], None] | None = None
        self.epoch = 0
        self.fingerprint = job.fingerprint()
        self.redactor = job.redactor()
        self.started = monotonic()

    def result(self, status: Status, error: str | None = None) -> RunResult:
        c = self.counters
        return RunResult(
            job=self.job.name,
            run_id=self.run_id,
            status=status,
            rows_read=c.rows_read,
            rows_posted=c.rows_posted,
            requests=c.requests,
            retries=c.retries,
            duration=self.monotonic() - self.started,
            rows_rejected=c.rows_rejected,
            throttled=c.throttled,
            in_flight=c.in_flight,
            checkpoint=c.checkpoint,
            error=error,
            preview=tuple(c.preview),
        )

    def run(self, *, full_refresh: bool, dry_run: bool, **options: Any) -> RunResult:
        job = self.job
        self.full_refresh = full_refresh
        if dry_run:
            position = self.start_position(full_refresh)
            log.info("dry run %s of %s from %s", self.run_id, job.name, position)
            try:
                status = self.deliver(None, position, dry_run=True, **options)
            except LoaderError as exc:
                exc.result = self.result(Status.FAILED, self.redactor.text(str(exc)))
                raise
            return self.result(status)
        lease = self.store.acquire(job.name, self.run_id, ttl=self.lock_ttl)
        keeper = _LockKeeper(self.store, lease, self.lock_ttl, self.lost)
        if self.monitor is not None:
            self.monitor.started()
        try:
            try:
                position = self.start_position(full_refresh)
                self.counters.checkpoint = position
                self.store.start_run(self.run_id, job.name, position)
                log.info("run %s of %s started after %s", self.run_id, job.name, position)
                status = self.deliver(lease, position, dry_run=False, **options)
                keeper.check()
            except LoaderError as exc:
                exc.result = self.result(Status.FAILED, self.redactor.text(str(exc)))
                self.finish(Status.FAILED, exc.result.error)
                if self.monitor is not None:
                    self.monitor.finished(exc.result, exc)
                raise
            result = self.result(status)
            self.finish(status, None)
            if self.monitor is not None:
                self.monitor.finished(result)
        finally:
            keeper.stop()
            try:
                self.store.release(lease)
            except StateError as exc:  # the lease expires by itself
                log.warning("could not release the lock: %s", exc)
        log.info(
            "run %s of %s %s: %d rows read, %d posted, %d rejected, %d requests, "
            "%d retries, %.2fs",
            self.run_id, job.name, result.status, result.rows_read, result.rows_posted,
            result.rows_rejected, result.requests, result.retries, result.duration,
        )  # fmt: skip
        return result

    def finish(self, status: Status, error: str | None) -> None:
        try:
            self.store.finish_run(self.run_id, status, error=error, **self.counters.as_record())
        except StateError as exc:
            log.warning("could not record the end of run %s: %s", self.run_id, exc)

    def start_position(self, full_refresh: bool) -> Position | None:
        """Where the run starts: after the checkpoint, unless it no longer fits the job."""
        job = self.job
        if job.source.cursor is None or full_refresh:
            return None
        self.epoch = self.store.epoch(job.name)
        checkpoint = self.store.checkpoint(job.name)
        if checkpoint is None:
            return None
        if checkpoint.fingerprint != self.fingerprint:
            raise StateError(
                f"job {job.name!r}: the query or cursor changed since its checkpoint was "
                f"saved (run {checkpoint.run_id}); resuming from it could skip or repeat "
                "rows. Run once with --full-refresh to send every row again, or "
                f"`loader state reset {job.name}` to start from cursor.start"
            )
        return checkpoint.position

    def deliver(
        self,
        lease: Lease | None,
        position: Position | None,
        *,
        dry_run: bool,
        limit: int | None,
        preview: int,
        stop: threading.Event,
        sleep: Callable[[float], None] | None,
        transport: httpx.BaseTransport | None,
    ) -> Status:
        job = self.job
        frame = framing_for(job)
        with (
            open_stream(
                job.source,
                self.redactor,
                position=position,
                decimals=job.target.decimals,
                omit=job.target.omit,
                values=job.target.placeholders,
            ) as stream,
            Sink(
                job.target,
                self.redactor,
                user_agent=USER_AGENT,
                content_type=frame.content_type,
                transport=transport,
            ) as sink,
        ):
            chunks = self.chunks(stream, limit)
            produced = self.scoped(
                singles(chunks, frame, max_bytes=job.batch.max_bytes)
                if job.target.per_row
                else batches(chunks, frame, max_rows=job.batch.size, max_bytes=job.batch.max_bytes),
                position,
            )
            if dry_run:
                for batch, scope in produced:
                    if len(self.counters.preview) < preview:
                        key = idempotency_key(job.name, scope, batch.body)
                        self.counters.preview.append(sink.prepare(batch.body, key, batch.url))
                return Status.DRY_RUN
            assert lease is not None
            sender = _Sender(job, sink, frame, self.counters, self.redactor, sleep)
            interrupted = _Pipeline(self, lease, sender, stop).run(produced)
        if interrupted:
            return Status.INTERRUPTED
        return Status.PARTIAL if self.counters.rows_rejected else Status.SUCCEEDED

    def scoped(
        self, produced: Iterator[Batch], position: Position | None
    ) -> Iterator[tuple[Batch, str]]:
        """Each batch with the scope of its idempotency key (see ``idempotency_key``)."""
        after = position
        incremental = self.job.source.cursor is not None and not self.full_refresh
        for batch in produced:
            if incremental:
                start = encode_position(after) if after is not None else "start"
                yield batch, f"{self.fingerprint}:{self.epoch}:{start}"
            else:
                yield batch, f"run:{self.run_id}:{batch.seq}"
            after = batch.position

    def chunks(self, stream: RowStream, limit: int | None) -> Iterator[Chunk]:
        """Each fetched chunk of rows, encoded, checked (cursor NULLs and order) and
        cut at ``limit``. The per-row work is one encode call, or none on the fast path."""
        encoder = RowEncoder(
            stream.columns,
            decimals=self.job.target.decimals,
            utc_datetimes=stream.utc_datetimes,
            utc_columns=stream.utc_columns,
            json_columns=stream.json_columns,
            omit=self.job.target.omit,
        )
        target = self.job.target
        filler = UrlFiller(target.url, target.placeholders) if target.per_row else None
        values = stream.value_indexes
        indexes = stream.cursor_indexes
        counters = self.counters
        previous: Any = None
        for raw in stream.chunks:
            if limit is not None:
                room = limit - counters.rows_read
                if room <= 0:
                    return
                raw = raw[:room]
            if indexes:
                previous = self.check_cursor(raw, indexes, previous, counters.rows_read)
            if stream.json_rows:
                rows = list(map(_json_of, raw))
            else:
                encode = encoder.encode
                rows = [encode(row) for row in raw]
            urls = None
            if filler is not None:
                first = counters.rows_read + 1
                urls = [
                    filler.fill([row[i] for i in values], first + n) for n, row in enumerate(raw)
                ]
            counters.rows_read += len(raw)
            yield Chunk(rows, _position_of(raw, indexes) if indexes else _no_position, urls)

    def check_cursor(
        self, raw: Sequence[Sequence[Any]], indexes: tuple[int, ...], previous: Any, before: int
    ) -> Any:
        """Refuse NULL cursor values, a column that goes backwards, repeated values of a
        column without a key, and values the state store cannot keep. Returns the last
        column value, for the next chunk's check."""
        cursor = self.job.source.cursor
        assert cursor is not None
        names = [cursor.column] + ([cursor.key] if cursor.key else [])
        if previous is None and raw:
            # A checkpoint that cannot be saved would make every run re-send this batch.
            encode_position(tuple(raw[0][i] for i in indexes))
        last = previous
        for name, index in zip(names, indexes, strict=True):
            values = [row[index] for row in raw]
            if None in values:
                raise CursorOrderError(
                    f"row {before + values.index(None) + 1}: cursor column {name!r} is NULL; "
                    "loader cannot place it after a checkpoint. Give it a value (later than "
                    "the checkpoint, or run once with --full-refresh), or set "
                    "source.cursor.on_null: skip to leave such rows out"
                )
            if index != indexes[0] or not values:
                continue
            last = values[-1]
            series = values if previous is None else [previous, *values]
            if not cursor.key and any(map(operator.eq, series, series[1:])):
                at = next(i for i in range(1, len(series)) if series[i] == series[i - 1])
                raise CursorOrderError(
                    f"cursor column {name!r} repeats the value {series[at]!r}: without a "
                    "key, a run that stops inside such a tie would skip the rest of it. "
                    "Set source.cursor.key to a unique column"
                )
            # Only types whose Python order is the database's order; text collations differ.
            if type(values[0]) not in _ORDERED_TYPES:
                continue
            if not all(map(operator.le, series, series[1:])):
                at = next(i for i in range(1, len(series)) if series[i] < series[i - 1])
                row_number = before + at + (1 if previous is None else 0)
                raise CursorOrderError(
                    f"row {row_number}: cursor column {name!r} went backwards "
                    f"({series[at - 1]!r} then {series[at]!r}); is it non-decreasing?"
                )
        return last


def framing_for(job: Job) -> Framing:
    """The body framing a job's target asks for."""
    envelope = job.target.envelope
    return framing(
        job.target.format,
        envelope.key if envelope else None,
        dict(envelope.fields) if envelope else None,
        single=job.target.per_row,
    )


_json_of = operator.itemgetter(0)  # a fast-path row's JSON


def _position_of(raw: Sequence[Sequence[Any]], indexes: tuple[int, ...]) -> Callable[[int], Any]:
    return lambda i: tuple(raw[i][j] for j in indexes)


def _no_position(_index: int) -> None:
    return None


class _AnyEvent:
    """Set when any of its events is: the run's stop signal, the pipeline's own halt, a
    lost lock."""

    def __init__(self, *events: threading.Event) -> None:
        self._events = events

    def is_set(self) -> bool:
        return any(event.is_set() for event in self._events)

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            remaining = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
            if remaining <= 0:
                return False
            self._events[-1].wait(remaining)
        return True


_DONE = object()
Rejected = list[tuple[bytes, RejectedError]]


@dataclass
class _Item:
    """A batch on its way to a sender. ``after`` is set when the previous request to the
    same per-row URL is finished; ``done`` is set when this one is."""

    batch: Batch
    scope: str
    after: threading.Event | None = None
    done: threading.Event | None = None


class _Pipeline:
    """Reading, sending and committing overlap: one reader thread builds batches, up to
    ``concurrency`` sender threads post them, and this thread commits acknowledged
    batches in order. At most ``concurrency`` batches are between read and committed, so
    a crash re-sends at most that many. Per-row requests to the same URL go one after the
    other, in order; requests to different URLs go concurrently."""

    def __init__(self, run: _Run, lease: Lease, sender: _Sender, stop: threading.Event) -> None:
        self.run_ = run
        self.lease = lease
        self.sender = sender
        self.stop = stop
        self.halt = threading.Event()
        self.signal = _AnyEvent(stop, self.halt, run.lost)
        self.concurrency = run.job.concurrency
        self.window = threading.Semaphore(self.concurrency)
        self.todo: queue.Queue[_Item | None] = queue.Queue()
        self.last_to: dict[str, threading.Event] = {}  # per URL, its latest request's end
        self.done: queue.Queue[Any] = queue.Queue()
        self.interrupted = False

    def run(self, produced: Iterator[tuple[Batch, str]]) -> bool:
        """Deliver every batch; return True if stopped early. Raises the first error."""
        # Each thread runs in a copy of this context, so its log lines carry the run id.
        threads = [
            threading.Thread(
                target=contextvars.copy_context().run, args=(self.read, produced),
                name="loader-read",
            )
        ]  # fmt: skip
        threads += [
            threading.Thread(
                target=contextvars.copy_context().run, args=(self.send,), name=f"loader-send-{i}"
            )
            for i in range(self.concurrency)
        ]
        for thread in threads:
            thread.start()
        error: BaseException | None = None
        finished: dict[int, tuple[Batch, Rejected]] = {}
        next_seq, running = 1, len(threads)
        try:
            while running:
                item = self.done.get()
                if item is _DONE:
                    running -= 1
                    continue
                if isinstance(item, BaseException):
                    error = error or item
                    self.halt.set()
                    continue
                finished[item[0].seq] = item
                group = []
                while next_seq in finished:
                    group.append(finished.pop(next_seq))
                    next_seq += 1
                if group and error is None:
                    try:
                        self.commit(group)
                    except BaseException as exc:
                        error = exc
                        self.halt.set()
                for _ in group:
                    self.window.release()
        finally:
            self.halt.set()
            for thread in threads:
                thread.join()
        if error is not None:
            raise error
        return self.interrupted

    def read(self, produced: Iterator[tuple[Batch, str]]) -> None:
        try:
            for item in produced:
                while not self.window.acquire(timeout=0.05):
                    if self.signal.is_set():
                        break
                if self.signal.is_set():
                    self.interrupted = self.interrupted or self.stop.is_set()
                    break
                self.todo.put(self.ordered(*item))
        except BaseException as exc:
            self.done.put(exc)
        finally:
            for _ in range(self.concurrency):
                self.todo.put(None)
            self.done.put(_DONE)

    def ordered(self, batch: Batch, scope: str) -> _Item:
        """The item for ``batch``, chained after the previous request to its URL."""
        if batch.url is None:
            return _Item(batch, scope)
        if len(self.last_to) > 4 * self.concurrency:  # forget requests long finished
            self.last_to = {url: e for url, e in self.last_to.items() if not e.is_set()}
        done = threading.Event()
        after = self.last_to.get(batch.url)
        self.last_to[batch.url] = done
        return _Item(batch, scope, after, done)

    def send(self) -> None:
        while (item := self.todo.get()) is not None:
            try:
                self.send_one(item)
            finally:
                if item.done is not None:
                    item.done.set()
        self.done.put(_DONE)

    def send_one(self, item: _Item) -> None:
        batch = item.batch
        # Items are taken in order, so the one this waits for is already being sent.
        while item.after is not None and not item.after.wait(0.05):
            if self.signal.is_set():
                break
        if self.signal.is_set():
            self.interrupted = self.interrupted or self.stop.is_set()
            return
        try:
            rejected = self.sender.send(batch.rows, batch.body, item.scope, self.signal, batch.url)
        except Interrupted:
            self.interrupted = True
            return
        except BaseException as exc:
            # Halt now, before the next request to this URL is let go (it waits on this
            # one's end): the run stops at its first failure.
            self.halt.set()
            self.done.put(exc)
            return
        self.done.put((batch, rejected))

    def commit(self, group: list[tuple[Batch, Rejected]]) -> None:
        """Record batches acknowledged in order: their dead letters and the checkpoint
        after the last one, in one transaction."""
        run, counters = self.run_, self.run_.counters
        dead_letters = [
            (row, error.status, error.body_excerpt)
            for _, rejected in group
            for row, error in rejected
        ]
        position = group[-1][0].position
        if position is not None or dead_letters:
            run.store.record_batch(
                self.lease,
                run.run_id,
                fingerprint=run.fingerprint,
                position=position,
                dead_letters=dead_letters,
                ttl=run.lock_ttl,
            )
        for batch, rejected in group:
            counters.rows_posted += len(batch.rows) - len(rejected)
            counters.rows_rejected += len(rejected)
        if position is not None:
            counters.checkpoint = position
        if run.progress is not None:
            run.progress(run.result(Status.RUNNING))


class _Sender:
    """Delivers one batch: retries, then bisects a rejected batch to isolate bad rows.
    Used from several threads at once."""

    def __init__(
        self,
        job: Job,
        sink: Sink,
        frame: Framing,
        counters: _Counters,
        redactor: Redactor,
        sleep: Callable[[float], None] | None,
    ) -> None:
        self.job = job
        self.sink = sink
        self.frame = frame
        self.counters = counters
        self.redactor = redactor
        self.sleep = sleep
        self.policy = RetryPolicy.from_config(job.retry)
        self.lock = threading.Lock()
        self.rejected_seen = 0

    def send(
        self, rows: list[bytes], body: bytes, scope: str, stop: _AnyEvent, url: str | None = None
    ) -> Rejected:
        """Deliver ``rows`` (to ``url``, for a per-row request); return the rows the
        endpoint rejected, with the rejection.

        ``scope`` keys the idempotency keys (see :func:`loader.sink.idempotency_key`).
        Raises :class:`RejectedError` when rejections are not row-specific (401, 403...)
        or ``on_reject: fail``, and :class:`TooManyRejectionsError` past ``max_rejected``.
        """
        try:
            return self.refused(rows, self.attempt(body, scope, stop, len(rows), url))
        except RejectedError as exc:
            if self.about_request(exc) or self.job.on_reject == "fail":
                raise
            if len(rows) == 1:
                return self.reject(rows[0], exc)
        rejected: Rejected = []
        self.bisect(rows, 0, scope, rejected, stop)
        return rejected

    def bisect(
        self, rows: list[bytes], offset: int, scope: str, rejected: Rejected, stop: _AnyEvent
    ) -> None:
        """Send each half of ``rows`` (at ``offset`` in the batch) on its own, recursing
        into rejected halves until the rejected rows stand alone."""
        middle = len(rows) // 2
        for start, half in ((offset, rows[:middle]), (offset + middle, rows[middle:])):
            try:
                errors = self.attempt(self.frame.body(half), f"{scope}/{start}+{len(half)}",
                                      stop, len(half))  # fmt: skip
                rejected.extend(self.refused(half, errors))
            except RejectedError as exc:
                if self.about_request(exc):
                    raise
                if len(half) == 1:
                    rejected.extend(self.reject(half[0], exc))
                else:
                    self.bisect(half, start, scope, rejected, stop)

    def refused(self, rows: list[bytes], errors: list[ItemError]) -> Rejected:
        """Rows a 2xx answer refused (``target.item_errors``), as rejections."""
        rejected: Rejected = []
        for error in errors:
            if not 0 <= error.index < len(rows):
                continue
            rejection = RejectedError(
                f"{self.sink.safe_url} refused row {error.index} of the request: {error.message}",
                url=self.sink.safe_url, status=error.status, body_excerpt=error.message,
            )  # fmt: skip
            if self.job.on_reject == "fail":
                raise rejection
            rejected.extend(self.reject(rows[error.index], rejection))
        return rejected

    def about_request(self, error: RejectedError) -> bool:
        """True for rejections of the request rather than a row (401, 403...), unless
        ``target.statuses`` says the status is a row's rejection."""
        about = NOT_ROW_STATUSES_PER_ROW if self.job.target.per_row else NOT_ROW_STATUSES
        return error.status in about and error.status not in self.job.target.statuses

    def reject(self, row: bytes, error: RejectedError) -> Rejected:
        with self.lock:
            self.rejected_seen += 1
            total = self.rejected_seen
        log.warning("row rejected (%d so far this run): %s", total, error)
        if total > self.job.max_rejected:
            raise TooManyRejectionsError(
                f"{total} rows rejected in this run, more than max_rejected "
                f"({self.job.max_rejected}); stopping so a broken mapping does not burn "
                f"through the table. Last rejection: {error}",
                url=error.url,
                status=error.status or 0,
                body_excerpt=error.body_excerpt,
            ) from error
        return [(row, error)]

    def attempt(
        self, body: bytes, scope: str, stop: _AnyEvent, rows: int = 1, url: str | None = None
    ) -> list[ItemError]:
        key = idempotency_key(self.job.name, scope, body)

        def once() -> list[ItemError]:
            with self.lock:
                self.counters.requests += 1
                self.counters.in_flight += 1
            try:
                return self.sink.send(body, key, rows, url)
            finally:
                with self.lock:
                    self.counters.in_flight -= 1

        def on_retry(attempt: int, wait: float, error: Exception) -> None:
            with self.lock:
                self.counters.retries += 1
                if getattr(error, "status", None) == 429:
                    self.counters.throttled += 1
            log.warning(
                "attempt %d/%d failed: %s; retrying in %.2fs",
                attempt, self.policy.attempts, self.redactor.text(str(error)), wait,
            )  # fmt: skip

        return self.policy.call(once, sleep=self.sleep, stop=stop, on_retry=on_retry)


class _LockKeeper:
    """Renews a run's lease in the background. A renewal that fails is retried until the
    lease is about to expire; then ``lost`` is set and the run stops, and fails."""

    def __init__(self, store: StateStore, lease: Lease, ttl: float, lost: threading.Event) -> None:
        self._store = store
        self._lease = lease
        self._ttl = ttl
        self._lost = lost
        self._done = threading.Event()
        self._error: StateError | None = None
        self._thread = threading.Thread(target=self._renew, name="loader-lock", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        renewed = time.monotonic()
        pause = self._ttl / 3
        while not self._done.wait(pause):
            try:
                self._store.renew(self._lease, ttl=self._ttl)
            except StateError as exc:
                if isinstance(exc, LockLostError) or time.monotonic() - renewed > self._ttl * 0.8:
                    self._error = exc
                    self._lost.set()
                    return
                log.warning("could not renew the lock (retrying): %s", exc)
                pause = self._ttl / 12
                continue
            renewed, pause = time.monotonic(), self._ttl / 3

    def check(self) -> None:
        """Raise the renewal error, if the lease was lost."""
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        self._done.set()
        self._thread.join()
