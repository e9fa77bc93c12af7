"""The run loop: the only module that knows the source, batching, the sink, retries and
the state store together.

Stages are generators chained end to end (rows -> encoded rows -> batches -> requests),
so memory stays bounded by ``fetch_size`` and one batch, whatever the size of the result.
A batch is done when the endpoint acknowledged it, or when its rejected rows are isolated
(by bisection) and kept as dead letters; only then does the checkpoint move past it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from loader import defaults
from loader._version import __version__
from loader.batching import batches
from loader.encoding import Framing, RowEncoder, framing
from loader.errors import (
    CursorOrderError,
    LoaderError,
    RejectedError,
    StateError,
    TooManyRejectionsError,
)
from loader.job import Job
from loader.redact import Redactor
from loader.retry import Interrupted, RetryPolicy
from loader.sink import Request, Sink, idempotency_key
from loader.source import RowStream, open_stream
from loader.state import Lease, Position, StateStore, encode_position, open_state

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("loader")

Status = Literal["succeeded", "partial", "failed", "interrupted", "dry-run"]
USER_AGENT = f"loader/{__version__}"
#: Rejections that are about the request, not a row: bisecting would not isolate anything.
NOT_ROW_STATUSES = frozenset({401, 403, 404, 405, 407})
_ORDERED_TYPES = frozenset({int, float, Decimal, datetime, date})


@dataclass(frozen=True)
class RunResult:
    """What one run did. ``requests`` counts HTTP attempts, retries included.

    ``status`` is ``succeeded`` (every row delivered), ``partial`` (every row delivered
    or dead-lettered, some dead-lettered), ``failed``, ``interrupted`` or ``dry-run``.
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
    checkpoint: Position | None = None
    error: str | None = None
    preview: tuple[Request, ...] = ()

    @property
    def ok(self) -> bool:
        """True when every row read was delivered (or it was a dry run)."""
        return self.status in ("succeeded", "dry-run")


@dataclass
class _Counters:
    rows_read: int = 0
    rows_posted: int = 0
    rows_rejected: int = 0
    requests: int = 0
    retries: int = 0
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
) -> RunResult:
    """Stream the job's rows to its endpoint and return what happened.

    ``state`` defaults to :func:`loader.open_state` (``$LOADER_STATE_URL`` or
    ``.loader/state.db``). With a cursor, the run resumes after the checkpoint unless
    ``full_refresh``. ``limit`` stops after that many rows. ``dry_run`` reads and encodes
    the rows but sends and records nothing; the first ``preview`` requests are kept in
    ``RunResult.preview``. ``stop`` ends the run between batches and wakes retry sleeps;
    the result is then ``interrupted``. ``sleep``, ``monotonic`` and ``transport`` are
    seams for tests.

    Raises a :class:`LoaderError` when the run fails (its ``result`` holds the counts up
    to the failure), :class:`JobLockedError` when another run holds the job. Never exits
    the process.
    """
    run_id = run_id or uuid.uuid4().hex[:12]
    store = state if state is not None else open_state()
    try:
        return _Run(job, store, run_id, monotonic, lock_ttl).run(
            full_refresh=full_refresh,
            limit=limit,
            dry_run=dry_run,
            preview=preview,
            stop=stop or threading.Event(),
            sleep=sleep,
            transport=transport,
        )
    finally:
        if state is None:
            store.close()


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
                exc.result = self.result("failed", self.redactor.text(str(exc)))
                raise
            return self.result(status)
        lease = self.store.acquire(job.name, self.run_id, ttl=self.lock_ttl)
        keeper = _LockKeeper(self.store, lease, self.lock_ttl, options["stop"])
        try:
            position = self.start_position(full_refresh)
            self.counters.checkpoint = position
            self.store.start_run(self.run_id, job.name, position)
            log.info("run %s of %s started after %s", self.run_id, job.name, position)
            try:
                status = self.deliver(lease, position, dry_run=False, **options)
                keeper.check()
            except LoaderError as exc:
                exc.result = self.result("failed", self.redactor.text(str(exc)))
                self.finish("failed", exc.result.error)
                raise
            result = self.result(status)
            self.finish(status, None)
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
        checkpoint = self.store.checkpoint(job.name)
        if checkpoint is None:
            return None
        if checkpoint.fingerprint != job.fingerprint():
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
        envelope = job.target.envelope
        frame = framing(
            job.target.format,
            envelope.key if envelope else None,
            dict(envelope.fields) if envelope else None,
        )
        with (
            open_stream(job.source, self.redactor, position=position) as stream,
            Sink(
                job.target,
                self.redactor,
                user_agent=USER_AGENT,
                content_type=frame.content_type,
                transport=transport,
            ) as sink,
        ):
            sender = _Sender(job, sink, frame, self.counters, self.redactor, stop, sleep)
            rows = self.encoded_rows(stream, limit)
            after = position
            for batch in batches(
                rows, frame, max_rows=job.batch.size, max_bytes=job.batch.max_bytes
            ):
                if stop.is_set():
                    return "interrupted"
                if job.source.cursor is not None and not self.full_refresh:
                    start = encode_position(after) if after is not None else "start"
                    scope = f"{job.fingerprint()}:{start}"
                else:
                    scope = f"run:{self.run_id}:{batch.seq}"
                after = batch.position
                if dry_run:
                    if len(self.counters.preview) < preview:
                        key = idempotency_key(job.name, scope, batch.body)
                        self.counters.preview.append(sink.prepare(batch.body, key))
                    continue
                try:
                    rejected = sender.send(batch.rows, batch.body, scope)
                except Interrupted:
                    return "interrupted"
                assert lease is not None
                self.store.record_batch(
                    lease,
                    self.run_id,
                    fingerprint=job.fingerprint(),
                    position=batch.position,
                    dead_letters=[
                        (row, error.status, error.body_excerpt) for row, error in rejected
                    ],
                    ttl=self.lock_ttl,
                )
                self.counters.rows_posted += len(batch.rows) - len(rejected)
                self.counters.rows_rejected += len(rejected)
                if batch.position is not None:
                    self.counters.checkpoint = batch.position
        if dry_run:
            return "dry-run"
        return "partial" if self.counters.rows_rejected else "succeeded"

    def encoded_rows(
        self, stream: RowStream, limit: int | None
    ) -> Iterator[tuple[bytes, Position | None]]:
        """Encoded rows with their cursor positions, checked for NULLs and order."""
        encoder = RowEncoder(
            stream.columns, decimals=self.job.target.decimals, utc_datetimes=stream.utc_datetimes
        )
        indexes = stream.cursor_indexes
        previous: Any = None
        counters = self.counters
        for chunk in stream.chunks:
            for row in chunk:
                if limit is not None and counters.rows_read >= limit:
                    return
                counters.rows_read += 1
                if not indexes:
                    yield encoder.encode(row), None
                    continue
                position = tuple(row[i] for i in indexes)
                self.check_cursor(position, previous, counters.rows_read)
                previous = position[0]
                yield encoder.encode(row), position

    def check_cursor(self, position: Position, previous: Any, row_number: int) -> None:
        cursor = self.job.source.cursor
        assert cursor is not None
        names = [cursor.column] + ([cursor.key] if cursor.key else [])
        for name, item in zip(names, position, strict=True):
            if item is None:
                raise CursorOrderError(
                    f"row {row_number}: cursor column {name!r} is NULL; loader cannot place "
                    "it after the checkpoint. Fix the data, or set source.cursor.on_null: "
                    "skip to leave such rows out"
                )
        value: Any = position[0]
        # Only types whose Python order is the database's order; text collations differ.
        if type(value) in _ORDERED_TYPES and type(value) is type(previous) and value < previous:
            raise CursorOrderError(
                f"row {row_number}: cursor column {cursor.column!r} went backwards "
                f"({previous!r} then {value!r}); is it non-decreasing?"
            )


class _Sender:
    """Delivers one batch: retries, then bisects a rejected batch to isolate bad rows."""

    def __init__(
        self,
        job: Job,
        sink: Sink,
        frame: Framing,
        counters: _Counters,
        redactor: Redactor,
        stop: threading.Event,
        sleep: Callable[[float], None] | None,
    ) -> None:
        self.job = job
        self.sink = sink
        self.frame = frame
        self.counters = counters
        self.redactor = redactor
        self.stop = stop
        self.sleep = sleep
        self.policy = RetryPolicy.from_config(job.retry)

    def send(self, rows: list[bytes], body: bytes, scope: str) -> list[tuple[bytes, RejectedError]]:
        """Deliver ``rows``; return the rows the endpoint rejected, with the rejection.

        ``scope`` keys the idempotency keys (see :func:`loader.sink.idempotency_key`).
        Raises :class:`RejectedError` when rejections are not row-specific (401, 403...)
        or ``on_reject: fail``, and :class:`TooManyRejectionsError` past ``max_rejected``.
        """
        try:
            self.attempt(body, scope)
            return []
        except RejectedError as exc:
            if exc.status in NOT_ROW_STATUSES or self.job.on_reject == "fail":
                raise
            if len(rows) == 1:
                return self.reject(rows[0], exc, 0)
        rejected: list[tuple[bytes, RejectedError]] = []
        self.bisect(rows, 0, scope, rejected)
        return rejected

    def bisect(
        self,
        rows: list[bytes],
        offset: int,
        scope: str,
        rejected: list[tuple[bytes, RejectedError]],
    ) -> None:
        """Send each half of ``rows`` (at ``offset`` in the batch) on its own, recursing
        into rejected halves until the rejected rows stand alone."""
        middle = len(rows) // 2
        for start, half in ((offset, rows[:middle]), (offset + middle, rows[middle:])):
            try:
                self.attempt(self.frame.body(half), f"{scope}/{start}+{len(half)}")
            except RejectedError as exc:
                if exc.status in NOT_ROW_STATUSES:
                    raise
                if len(half) == 1:
                    rejected.extend(self.reject(half[0], exc, len(rejected)))
                else:
                    self.bisect(half, start, scope, rejected)

    def reject(
        self, row: bytes, error: RejectedError, earlier: int
    ) -> list[tuple[bytes, RejectedError]]:
        total = self.counters.rows_rejected + earlier + 1
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

    def attempt(self, body: bytes, scope: str) -> None:
        key = idempotency_key(self.job.name, scope, body)

        def once() -> None:
            self.counters.requests += 1
            self.sink.send(body, key)

        def on_retry(attempt: int, wait: float, error: Exception) -> None:
            self.counters.retries += 1
            log.warning(
                "attempt %d/%d failed: %s; retrying in %.2fs",
                attempt, self.policy.attempts, self.redactor.text(str(error)), wait,
            )  # fmt: skip

        self.policy.call(once, sleep=self.sleep, stop=self.stop, on_retry=on_retry)


class _LockKeeper:
    """Renews a run's lease in the background; a lost lease stops the run."""

    def __init__(self, store: StateStore, lease: Lease, ttl: float, stop: threading.Event) -> None:
        self._store = store
        self._lease = lease
        self._ttl = ttl
        self._run_stop = stop
        self._done = threading.Event()
        self._error: StateError | None = None
        self._thread = threading.Thread(target=self._renew, name="loader-lock", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._done.wait(self._ttl / 3):
            try:
                self._store.renew(self._lease, ttl=self._ttl)
            except StateError as exc:
                self._error = exc
                self._run_stop.set()
                return

    def check(self) -> None:
        """Raise the renewal error, if the lease was lost."""
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        self._done.set()
        self._thread.join()
