"""The run loop: the only module that knows the source, batching, the sink and retries.

Stages are generators chained end to end (rows -> encoded rows -> batches -> requests),
so memory stays bounded by ``fetch_size`` and one batch, whatever the size of the result.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from loader._version import __version__
from loader.batching import Batch, batches
from loader.encoding import RowEncoder, framing
from loader.errors import LoaderError
from loader.job import Job
from loader.redact import Redactor
from loader.retry import Interrupted, RetryPolicy
from loader.sink import Request, Sink, idempotency_key
from loader.source import RowStream, open_stream

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("loader")

Status = Literal["succeeded", "failed", "interrupted", "dry-run"]
USER_AGENT = f"loader/{__version__}"


@dataclass(frozen=True)
class RunResult:
    """What one run did. ``requests`` counts HTTP attempts, retries included."""

    job: str
    run_id: str
    status: Status
    rows_read: int
    rows_posted: int
    requests: int
    retries: int
    duration: float
    error: str | None = None
    preview: tuple[Request, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the run delivered every row it read (or was a dry run)."""
        return self.status in ("succeeded", "dry-run")


@dataclass
class _Counters:
    rows_read: int = 0
    rows_posted: int = 0
    requests: int = 0
    retries: int = 0
    preview: list[Request] = field(default_factory=list)


def run_job(
    job: Job,
    *,
    limit: int | None = None,
    dry_run: bool = False,
    preview: int = 3,
    stop: threading.Event | None = None,
    sleep: Callable[[float], None] | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    transport: httpx.BaseTransport | None = None,
    run_id: str | None = None,
) -> RunResult:
    """Stream the job's rows to its endpoint and return what happened.

    ``limit`` stops after that many rows. ``dry_run`` reads and encodes every row but
    sends nothing; the first ``preview`` requests are kept in ``RunResult.preview``.
    ``stop`` ends the run between batches (and wakes retry sleeps); the result is then
    ``interrupted``. ``sleep``, ``monotonic`` and ``transport`` are seams for tests.

    Raises a :class:`LoaderError` when the run fails; its ``result`` holds the counts
    up to the failure. Never exits the process.
    """
    run_id = run_id or uuid.uuid4().hex[:12]
    stop = stop or threading.Event()
    redactor = job.redactor()
    counters = _Counters()
    started = monotonic()

    def finish(status: Status, error: str | None = None) -> RunResult:
        return RunResult(
            job=job.name,
            run_id=run_id,
            status=status,
            rows_read=counters.rows_read,
            rows_posted=counters.rows_posted,
            requests=counters.requests,
            retries=counters.retries,
            duration=monotonic() - started,
            error=error,
            preview=tuple(counters.preview),
        )

    log.info("run %s of %s started%s", run_id, job.name, " (dry run)" if dry_run else "")
    try:
        with open_stream(job.source, redactor) as stream:
            status = _deliver(
                job, stream, counters, redactor,
                limit=limit, dry_run=dry_run, preview=preview, stop=stop,
                sleep=sleep, transport=transport,
            )  # fmt: skip
    except LoaderError as exc:
        exc.result = finish("failed", redactor.text(str(exc)))
        log.error("run %s of %s failed: %s", run_id, job.name, exc.result.error)
        raise
    result = finish(status)
    log.info(
        "run %s of %s %s: %d rows read, %d posted, %d requests, %d retries, %.2fs",
        run_id, job.name, status, result.rows_read, result.rows_posted,
        result.requests, result.retries, result.duration,
    )  # fmt: skip
    return result


def _deliver(
    job: Job,
    stream: RowStream,
    counters: _Counters,
    redactor: Redactor,
    *,
    limit: int | None,
    dry_run: bool,
    preview: int,
    stop: threading.Event,
    sleep: Callable[[float], None] | None,
    transport: httpx.BaseTransport | None,
) -> Status:
    envelope = job.target.envelope
    frame = framing(
        job.target.format,
        envelope.key if envelope else None,
        dict(envelope.fields) if envelope else None,
    )
    encoder = RowEncoder(
        stream.columns, decimals=job.target.decimals, utc_datetimes=stream.utc_datetimes
    )
    policy = RetryPolicy.from_config(job.retry)

    def encoded_rows() -> Iterator[bytes]:
        for chunk in stream.chunks:
            for row in chunk:
                if limit is not None and counters.rows_read >= limit:
                    return
                counters.rows_read += 1
                yield encoder.encode(row)

    def on_retry(attempt: int, wait: float, error: Exception) -> None:
        counters.retries += 1
        log.warning(
            "attempt %d/%d failed: %s; retrying in %.2fs",
            attempt, policy.attempts, redactor.text(str(error)), wait,
        )  # fmt: skip

    with Sink(
        job.target,
        redactor,
        user_agent=USER_AGENT,
        content_type=frame.content_type,
        transport=transport,
    ) as sink:
        for batch in batches(
            encoded_rows(), frame, max_rows=job.batch.size, max_bytes=job.batch.max_bytes
        ):
            if stop.is_set():
                return "interrupted"
            key = idempotency_key(job.name, batch.body)
            if dry_run:
                if len(counters.preview) < preview:
                    counters.preview.append(sink.prepare(batch.body, key))
                continue
            try:
                policy.call(
                    _attempt(sink, batch, key, counters), sleep=sleep, stop=stop, on_retry=on_retry
                )
            except Interrupted:
                return "interrupted"
            counters.rows_posted += batch.rows
    return "dry-run" if dry_run else "succeeded"


def _attempt(sink: Sink, batch: Batch, key: str, counters: _Counters) -> Callable[[], None]:
    def attempt() -> None:
        counters.requests += 1
        sink.send(batch.body, key)

    return attempt
