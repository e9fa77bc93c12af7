"""Partitioned runs: a load split into stored key ranges, each a run of its own.

``source.partition`` splits the query's rows by an integer column into ``count`` ranges.
The boundaries are computed once, at the first run, and kept in the state store, so a
range keeps its own checkpoint and lock across runs. Inline, up to
``parallel_partitions`` ranges run at once in threads under the job's own lock and run
record; workers run one queued run per range instead (see :mod:`loader.workers`), in
lanes that cap the ranges at once.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from loader.errors import LoaderError, QueryError, StateError
from loader.job import Job
from loader.journal import Journal
from loader.lease import LockKeeper, held
from loader.options import RunOptions
from loader.probes import key_range
from loader.result import RunResult, Status, combine
from loader.runner import run_once
from loader.state import StateStore

log = logging.getLogger("loader")


class _NoRows(Exception):
    """The partition column has no values yet: nothing to split, nothing to keep."""


def partition_run_id(run_id: str, index: int) -> str:
    """The run id of partition ``index`` of run ``run_id``."""
    return f"{run_id}#p{index}"


def lane(job: Job, index: int) -> int:
    """The lane of ``job``'s range ``index``: ranges of one lane run one at a time."""
    return index % max(1, job.parallel_partitions)


def range_job(job: Job, index: int, bounds: tuple[int, ...]) -> Job:
    """The job of partition ``index`` (of ``len(bounds) + 1``): the rows whose
    partition column is in ``[bounds[index - 1], bounds[index])``; the first range
    is open below (and takes NULLs), the last open above (and takes new rows).

    Its name, ``NAME#pINDEX``, keys its own checkpoint and lock; its share of
    ``concurrency`` keeps the requests in flight of all partitions within it."""
    partition = job.source.partition
    assert partition is not None and 0 <= index <= len(bounds)
    column = f"loader_part.{partition.column}"
    clauses, params = [], dict(job.source.params)
    if index > 0:
        clauses.append(f"{column} >= :loader_part_low")
        params["loader_part_low"] = bounds[index - 1]
    if index < len(bounds):
        clauses.append(f"{column} < :loader_part_high")
        params["loader_part_high"] = bounds[index]
    where = " AND ".join(clauses)
    if index == 0 and where:
        where = f"({where} OR {column} IS NULL)"
    inner = job.source.query.strip().rstrip(";").strip()
    query = f"SELECT * FROM (\n{inner}\n) AS loader_part"
    if where:
        query += f" WHERE {where}"
    source = job.source.model_copy(update={"query": query, "params": params, "partition": None})
    share = max(1, job.concurrency // job.parallel_partitions)
    # No bounds yet (no keys to split): one range of everything, under a name of its own
    # so its checkpoint is never taken for the first range's.
    name = f"{job.name}#p{index}" if bounds else f"{job.name}#all"
    # model_copy keeps the private secrets interpolated from the environment.
    return job.model_copy(update={"name": name, "source": source, "concurrency": share})


def plan_partitions(job: Job, store: StateStore, *, keep: bool = True) -> list[Job]:
    """The jobs of ``job``'s key ranges (see :func:`range_job`). The boundaries are
    computed from the partition column's range at the first run and kept in ``store``
    (unless not ``keep``); while the partition column has no values yet, one range of
    every row, kept nowhere.

    Raises :class:`QueryError` for a column that is not an integer, and the source's or
    the store's errors while reading the column's range or the kept boundaries.
    """
    partition = job.source.partition
    assert partition is not None

    def even_split() -> tuple[int, ...]:
        """``count - 1`` boundaries splitting the column's ``[low, high]`` evenly."""
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
        return [range_job(job, 0, ())]
    return [range_job(job, index, bounds) for index in range(partition.count)]


def run_partitions(job: Job, store: StateStore, run_id: str, options: RunOptions) -> RunResult:
    """Run each key range as a run of its own (own lock, checkpoint and history), up to
    ``parallel_partitions`` at once, under the job's own lock and run record (no lock
    and no record on a dry run); see :func:`loader.run_job` for ``options``.

    Raises :class:`JobLockedError` if another run holds the job, else the first failed
    range's error (in range order) once every range has ended, with the whole run's
    result attached; a lost lock of the whole run fails it too.
    """
    whole = _Whole(job, store, run_id, options)
    lock = (
        contextlib.nullcontext(None)
        if options.dry_run
        else held(store, job.name, run_id, options.lock_ttl)
    )
    with lock as held_lock:
        return whole.run(held_lock[1] if held_lock else None)


class _Whole:
    """A partitioned run as a whole: its ranges' results, its record and its progress."""

    def __init__(self, job: Job, store: StateStore, run_id: str, options: RunOptions) -> None:
        self.job, self.store, self.run_id, self.options = job, store, run_id, options
        self.started = options.monotonic()
        self.journal = Journal(job, store, run_id, monitor=options.monitor and not options.dry_run)
        self.results: list[RunResult] = []
        self.errors: list[LoaderError] = []
        self.running: dict[int, RunResult] = {}  # each range's latest report
        self.lock = threading.Lock()

    def run(self, keeper: LockKeeper | None) -> RunResult:
        """Plan the ranges, run them, record the whole run's end."""
        self.journal.started()
        if not self.options.dry_run:
            self.journal.began(None)
        try:
            parts = plan_partitions(self.job, self.store, keep=not self.options.dry_run)
        except LoaderError as exc:
            detail = self.job.redactor().text(str(exc))
            exc.result = replace(self.result(), status=Status.FAILED, error=detail)
            self.end(exc.result, exc)
            raise
        if self.options.limit is not None:
            self.one_after_another(parts, self.options.limit)
        else:
            self.side_by_side(parts)
        result = self.result()
        if keeper is not None and not self.errors:
            try:
                keeper.check()
            except StateError as exc:
                self.errors.append(exc)
        if self.errors:
            self.errors[0].result = result
            self.end(result, self.errors[0])
            raise self.errors[0]
        self.end(result, None)
        return result

    def result(self) -> RunResult:
        """The whole run's result from its ranges' so far."""
        duration = self.options.monotonic() - self.started
        return combine(self.job.name, self.run_id, self.results, duration)

    def end(self, result: RunResult, error: LoaderError | None) -> None:
        """Record the whole run's end (nothing on a dry run)."""
        if not self.options.dry_run:
            self.journal.ended(result, error)

    def one_after_another(self, parts: list[Job], limit: int) -> None:
        """A row limit is the whole run's: one range after the other, each with what is
        left of it."""
        for index, part in enumerate(parts):
            room = limit - sum(result.rows_read for result in self.results)
            if room <= 0 or self.errors:
                break
            self.collect(functools.partial(self.run_part, part, index, room))

    def side_by_side(self, parts: list[Job]) -> None:
        """Up to ``parallel_partitions`` ranges at once, each in a copy of this context
        (its log lines carry its run id)."""
        with ThreadPoolExecutor(max(1, self.job.parallel_partitions)) as pool:
            futures = [
                pool.submit(contextvars.copy_context().run, self.run_part, part, index, None)
                for index, part in enumerate(parts)
            ]
            # Collected in range order, not finishing order: the error raised is the
            # lowest failed range's, whatever the timing.
            for future in futures:
                self.collect(future.result)

    def collect(self, call: Callable[[], RunResult]) -> None:
        """Keep a range's result, or its error and the result attached to it."""
        try:
            self.results.append(call())
        except LoaderError as exc:
            self.errors.append(exc)
            if exc.result is not None:
                self.results.append(exc.result)

    def run_part(self, part: Job, index: int, limit: int | None) -> RunResult:
        """Run range ``index`` with the whole run's options."""
        options = replace(
            self.options, limit=limit, monitor=False,
            progress=self.progress(index) if self.options.progress else None,
        )  # fmt: skip
        return run_once(part, self.store, partition_run_id(self.run_id, index), options)

    def progress(self, index: int) -> Callable[[RunResult], None]:
        """Report range ``index``'s progress as the whole run's: the ranges' sums."""
        report = self.options.progress
        assert report is not None

        def update(result: RunResult) -> None:
            with self.lock:
                # A range reports after each commit, so its latest report is its count
                # so far, and its final one once it ended.
                self.running[index] = result
                whole = combine(self.job.name, self.run_id, list(self.running.values()),
                                self.options.monotonic() - self.started)  # fmt: skip
                report(whole)  # under the lock: reports arrive in order, never going back

        return update
