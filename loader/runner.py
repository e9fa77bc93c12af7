"""One run's life: take the lock, resume after the checkpoint, deliver, record the end.

The only module that puts the source, batching, delivery and the state store together.
Stages are generators chained end to end (rows -> encoded rows -> batches -> requests),
so memory stays bounded by ``fetch_size`` and one batch, whatever the size of the result.
A batch is done when the endpoint acknowledged it, or when its rejected rows are isolated
(by bisection) and kept as dead letters; only then does the checkpoint move past it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace

from loader.batching import Batch, Chunk, batches, singles
from loader.dbdiff import Compare, key_ordered
from loader.delivery import Counters, Delivery, Rejected, framing_for, open_sink
from loader.diff import Differ, KeyCheck
from loader.errors import LoaderError, StateError
from loader.job import Job
from loader.journal import Journal
from loader.lease import LockKeeper, held
from loader.letters import kept_letters
from loader.logs import RUN_ID, event
from loader.options import RunOptions
from loader.pipeline import Pipeline
from loader.recut import recut
from loader.result import Position, RunResult, Status
from loader.resume import deliver_resuming
from loader.rows import encoded_chunks
from loader.sink import Sink, idempotency_key
from loader.source import RowStream, open_stream
from loader.state import Cut, Lease, StateStore, encode_position
from loader.vanished import send_deletes, would_delete

log = logging.getLogger("loader")


def run_once(job: Job, store: StateStore, run_id: str, options: RunOptions) -> RunResult:
    """Run ``job`` (not partitioned) once as run ``run_id``; see :func:`loader.run_job`.
    Log lines of the run, in every thread it starts, carry ``run_id``.

    Raises :class:`JobLockedError` when another run holds the job, and the run's
    :class:`LoaderError` (its ``result`` attached) when it fails; the failure is
    recorded in the history first (a dry run records nothing).
    """
    token = RUN_ID.set(run_id)
    try:
        return _Run(job, store, run_id, options).run()
    finally:
        RUN_ID.reset(token)


class _Run:
    """One run's bookkeeping: counters, the lock, the checkpoint and the result."""

    def __init__(self, job: Job, store: StateStore, run_id: str, options: RunOptions) -> None:
        self.job = job
        self.store = store
        self.run_id = run_id
        self.options = options
        self.counters = Counters()
        self.lost = threading.Event()  # set when the run's lock was lost: stop, and fail
        self.journal = Journal(job, store, run_id, monitor=options.monitor and not options.dry_run)
        self.epoch = 0
        self.fingerprint = job.fingerprint()
        self.redactor = job.redactor()
        self.started = options.monotonic()
        self.incremental = job.source.cursor is not None and not options.full_refresh
        self.pending: list[Cut] = []  # batches a crashed run left in flight, to re-cut
        self.cuts: dict[int, int] = {}  # the recorded cut of each batch in flight, by seq
        self.columns: tuple[str, ...] = ()
        self.differ: Differ | None = None  # a diff sync's, for the stream being read
        self.generation: int | None = None  # a diff sync's mark of the keys it saw
        self.known = 0  # a diff sync's keys tracked when the run started
        self.keys = job.source.diff.key if job.source.diff else ()
        self.check: KeyCheck | None = None  # a diff sync's check of its keys

    def result(self, status: Status, error: str | None = None) -> RunResult:
        """The result so far, with ``status``."""
        c = self.counters
        return RunResult(
            job=self.job.name, run_id=self.run_id, status=status, rows_read=c.rows_read,
            rows_posted=c.rows_posted, requests=c.requests, retries=c.retries,
            duration=self.options.monotonic() - self.started, rows_rejected=c.rows_rejected,
            throttled=c.throttled, in_flight=c.in_flight, checkpoint=c.checkpoint,
            splits=c.splits, split_size=c.split_size,
            error=error, preview=tuple(c.preview),
            rows_unchanged=c.rows_unchanged, rows_deleted=c.rows_deleted,
        )  # fmt: skip

    def failed(self, exc: LoaderError) -> RunResult:
        """Attach the result so far to ``exc`` (the caller re-raises it)."""
        exc.result = self.result(Status.FAILED, self.redactor.text(str(exc)))
        return exc.result

    def run(self) -> RunResult:
        """Run once; see :func:`run_job`."""
        if self.options.dry_run:
            position = self.start_position()
            event(log, "run.started", job=self.job.name, run_id=self.run_id, after=position,
                  dry_run=True)  # fmt: skip
            try:
                self.start_diff(None)
                status = self.deliver(None, position)
                if self.differ is not None and not self.options.limit:
                    self.counters.rows_deleted = would_delete(self.job, self.known,
                                                              self.differ.matched)  # fmt: skip
                return self.result(status)
            except LoaderError as exc:
                self.failed(exc)
                raise
        with held(self.store, self.job.name, self.run_id, self.options.lock_ttl, self.lost) as (
            lease,
            keeper,
        ):
            self.journal.started()
            return self.locked(lease, keeper)

    def locked(self, lease: Lease, keeper: LockKeeper) -> RunResult:
        """The run under its lock: from the checkpoint to the end, recorded."""
        try:
            position = self.start_position()
            self.counters.checkpoint = position
            self.journal.began(position)
            self.pending = self.in_flight(lease, position)
            event(log, "run.started", job=self.job.name, run_id=self.run_id, after=position)
            self.start_diff(lease)
            status = deliver_resuming(
                self.job, self.counters, self.options, lambda after: self.deliver(lease, after),
                position, resumable=self.job.source.cursor is not None,
            )  # fmt: skip
            status = self.deletes(lease, status)
            keeper.check()
        except LoaderError as exc:
            self.journal.ended(self.failed(exc), exc, cursor=True)
            raise
        result = self.result(status)
        self.journal.ended(result, cursor=True)
        return result

    def start_diff(self, lease: Lease | None) -> None:
        """For a diff sync: start checking for NULL or repeated keys (nothing is sent
        before it passed, see :class:`KeyCheck`), count the keys tracked and (with
        ``lease``) take a generation to mark those seen. The keys its key ranges
        (``NAME#pN``) may have left are not its own: they never match its rows."""
        if self.job.source.diff is None:
            return
        self.check = KeyCheck(self.job.source, self.redactor)
        self.known = self.store.fingerprint_count(self.job.name, own=True)
        if lease is not None:
            self.generation = self.store.next_generation(self.job.name)

    def compare(self, lease: Lease | None) -> Compare | None:
        """What lets the database compare a diff sync when the state store is on
        PostgreSQL (see :mod:`loader.dbdiff`); the source checks that it sees the store,
        that it writes the rows' JSON and the key columns' types."""
        diff = self.job.source.diff
        if diff is None:
            return None
        tables = self.store.fingerprint_tables()
        generation = self.generation if lease is not None else self.store.generation(self.job.name)
        if tables is None or generation is None:
            return None
        return Compare(*tables, self.job.name, generation, everything=self.options.full_refresh,
                       vanished=diff.deletes is not None)  # fmt: skip

    def deletes(self, lease: Lease, status: Status) -> Status:
        """A diff sync's deletes, once every row was read and acknowledged (not after
        an interrupted or ``--limit`` run): see :mod:`loader.vanished`."""
        if self.generation is None or status is Status.INTERRUPTED or self.options.limit:
            return status
        if self.counters.rows_posted >= max(1000, self.known // 10):
            # Many new fingerprints: fresh statistics, so the database's next comparison
            # is planned as a hash join rather than for the few rows it last counted.
            self.store.analyze_fingerprints()
        differ = self.differ
        assert differ is not None
        merged = differ.vanished if differ.merged else None
        seen = (self.generation, self.known, differ.matched, merged)
        interrupted = send_deletes(self.job, self.store, lease, self.run_id, seen,
                                   self.counters, self.options, self.lost)  # fmt: skip
        return Status.INTERRUPTED if interrupted else status

    def start_position(self) -> Position | None:
        """Where the run starts: after the checkpoint, unless it no longer fits the job."""
        job = self.job
        if job.source.cursor is None or self.options.full_refresh:
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

    def in_flight(self, lease: Lease, position: Position | None) -> list[Cut]:
        """The batches recorded in flight from ``position`` by a run that did not end
        them, to re-cut first (none without a resumable cursor, or from another epoch)."""
        if not self.incremental:
            return []
        start = encode_position(position) if position is not None else "start"
        scope = f"{self.fingerprint}:{self.epoch}:"
        pending = self.store.pending_cuts(lease, start, ttl=self.options.lock_ttl)
        pending = pending if all(cut.scope.startswith(scope) for cut in pending) else []
        if pending:
            event(log, "batch.recut", job=self.job.name, run_id=self.run_id,
                  batches=len(pending), previous_run_id=pending[0].run_id)  # fmt: skip
        return pending

    def deliver(self, lease: Lease | None, position: Position | None) -> Status:
        """Stream, batch and send every row after ``position`` (encode only, keeping a
        preview, on a dry run, when ``lease`` is ``None``)."""
        job, target = self.job, self.job.target
        frame = framing_for(job)
        compare = self.compare(lease)
        with (
            open_stream(job.source if compare else key_ordered(job.source), self.redactor,
                        position=position, decimals=target.decimals, omit=target.omit,
                        values=(*target.placeholders, *self.keys), compare=compare,
                        fast=self.options.database_json and not target.shape) as stream,
            open_sink(job, self.redactor, frame, self.options.transport) as sink,
        ):  # fmt: skip
            self.columns = stream.columns  # for the dead letters (see kept_letters)
            chunks = self.diffed(stream)

            def cutter(rows: Iterable[Chunk]) -> Iterator[Batch]:
                """The job's batches of ``rows``."""
                if target.per_row:
                    return singles(rows, frame, max_bytes=job.batch.max_bytes)
                return batches(rows, frame, max_rows=job.batch.size, max_bytes=job.batch.max_bytes)

            produced = self.scoped(recut(chunks, self.pending, cutter), position, lease)
            if lease is None:
                self.preview(produced, sink)
                return Status.DRY_RUN
            delivery = Delivery(job, sink, frame, self.counters, self.redactor, self.options.sleep)
            pipeline = Pipeline(job.concurrency, delivery.send, self.committer(lease),
                                self.options.stop, self.lost)  # fmt: skip
            interrupted = pipeline.run(produced)
        if interrupted:
            return Status.INTERRUPTED
        return Status.PARTIAL if self.counters.rows_rejected else Status.SUCCEEDED

    def diffed(self, stream: RowStream) -> Iterator[Chunk]:
        """The encoded chunks of ``stream``; for a diff sync, only the changed rows."""
        diff = self.job.source.diff
        if diff is None:
            return encoded_chunks(self.job, stream, self.counters, self.options.limit)
        mark = -self.generation if self.generation is not None else None
        self.differ = Differ(diff, self.store, self.job.name,
                             everything=self.options.full_refresh, ordered=True, mark=mark,
                             check=self.check, known=self.known)  # fmt: skip
        by = "database" if stream.known_index is not None else "loader"
        event(log, "diff.compare", logging.DEBUG, job=self.job.name, by=by)
        chunks = encoded_chunks(self.job, self.differ.watch(stream), self.counters,
                                self.options.limit)  # fmt: skip
        return self.differ.changed(chunks, self.counters)

    def preview(self, produced: Iterator[tuple[Batch, str]], sink: Sink) -> None:
        """Encode every batch; keep the first ``preview`` requests."""
        for batch, scope in produced:
            if len(self.counters.preview) < self.options.preview:
                key = idempotency_key(self.job.name, scope, batch.body)
                self.counters.preview.append(sink.prepare(batch.body, key, batch.url))

    def scoped(
        self,
        produced: Iterator[tuple[Batch, Cut | None]],
        position: Position | None,
        lease: Lease | None,
    ) -> Iterator[tuple[Batch, str]]:
        """Each batch with the scope of its idempotency key (see ``idempotency_key``);
        with ``lease``, its cut is recorded before it is handed on to be sent."""
        after = position
        # Incremental keys depend only on the job, its epoch, where the batch starts and
        # its body; a batch re-cut from a crashed run's record keeps its first scope, so
        # when its rows did not change it goes out again under its first key and the
        # endpoint can drop the duplicate. Without a resumable cursor nothing is resumed,
        # so the run id keys them.
        for batch, cut in produced:
            if not self.incremental:
                yield batch, f"run:{self.run_id}:{batch.seq}"
                continue
            start = encode_position(after) if after is not None else "start"
            scope = cut.scope if cut is not None else f"{self.fingerprint}:{self.epoch}:{start}"
            if lease is not None:
                batch = self.record_cut(
                    lease, batch, scope, cut.after if cut is not None else start
                )
            yield batch, scope
            after = batch.position

    def record_cut(self, lease: Lease, batch: Batch, scope: str, start: str) -> Batch:
        """Write ``batch``'s cut ahead of sending it (see :mod:`loader.recut`); return
        the batch with the key the cut holds, so that its body is hashed once."""
        key = idempotency_key(self.job.name, scope, batch.body)
        self.cuts[batch.seq] = self.store.record_cut(
            lease, self.run_id, scope=scope, after=start, last=encode_position(batch.position),
            rows=len(batch.rows), key=key, ttl=self.options.lock_ttl,
        )  # fmt: skip
        return replace(batch, key=key)

    def committer(self, lease: Lease) -> Callable[[list[tuple[Batch, Rejected]]], None]:
        """What records batches acknowledged in order: their dead letters and the
        checkpoint after the last one, in one transaction, then the counts."""
        counters, progress = self.counters, self.options.progress

        def commit(group: list[tuple[Batch, Rejected]]) -> None:
            """Record ``group`` (acknowledged, in read order); runs in the pipeline's
            committing thread only, so the counts it writes need no lock."""
            dead_letters = kept_letters(
                group,
                self.columns,
                self.redactor,
                self.job.target.url,
                self.job.target.placeholders,
            ) if any(rejected for _, rejected in group) else []  # fmt: skip
            position = group[-1][0].position
            diffed = None
            if self.differ is not None and self.generation is not None:
                diffed = (self.generation, self.differ.acknowledged(group), ())
            posted = counters.rows_posted + sum(len(b.rows) - len(r) for b, r in group)
            rejected = counters.rows_rejected + sum(len(r) for _, r in group)
            if position is not None or dead_letters or diffed:
                # The run's counts go with the checkpoint: a run whose process dies is
                # recorded with what was acknowledged.
                counts = {"rows_posted": posted, "rows_rejected": rejected, "cursor_to": position}
                self.store.record_batch(lease, self.run_id, fingerprint=self.fingerprint,
                                        position=position, dead_letters=dead_letters,
                                        ttl=self.options.lock_ttl, counts=counts, diffed=diffed,
                                        cuts=[self.cuts.pop(b.seq) for b, _ in group
                                              if b.seq in self.cuts])  # fmt: skip
            # Counted only once durable: a crash before this line re-sends these rows.
            counters.rows_posted, counters.rows_rejected = posted, rejected
            if position is not None:
                counters.checkpoint = position
            if progress is not None:
                progress(self.result(Status.RUNNING))

        return commit
