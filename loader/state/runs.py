"""The run history: one record per run id, written when it starts and when it ends.

A run resumed under the same id (a retried worker task) starts its record again. Of
several processes ending the same run, ``finish_run(..., only_running=True)`` lets one
record how it ended.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any

import sqlalchemy as sa

from loader.result import Position, Status
from loader.state.base import SqlBase
from loader.state.records import RunRecord, decode_position, encode_position
from loader.state.schema import locks, runs


class RunSql(SqlBase):
    """Recording runs and reading them back."""

    def start_run(self, run_id: str, job: str, cursor_from: Position | None) -> None:
        """Record that a run started (again, for a run resumed under the same id)."""
        values = {
            "status": Status.RUNNING,
            "started_at": self._clock(),
            "ended_at": None,
            "error": None,
            "host": self._host,
            "pid": self._pid,
            "cursor_from": encode_position(cursor_from) if cursor_from else None,
        }
        with self._transaction("recording the run") as conn:
            again = conn.execute(sa.update(runs).where(runs.c.run_id == run_id).values(**values))
            if not again.rowcount:
                conn.execute(sa.insert(runs).values(run_id=run_id, job=job, **values))

    def finish_run(
        self, run_id: str, status: str, *, only_running: bool = False, **counts: Any
    ) -> bool:
        """Record how a run ended: ``status`` and the counters in ``counts``; ``False``
        when no record changed. With ``only_running``, a run that already ended is left
        as it is, so of several processes ending one run, one records it."""
        cursor_to = counts.pop("cursor_to", None)
        values = {**counts, "status": status, "ended_at": self._clock()}
        if cursor_to is not None:
            values["cursor_to"] = encode_position(cursor_to)
        with self._transaction("recording the run") as conn:
            update = sa.update(runs).where(runs.c.run_id == run_id)
            if only_running:
                update = update.where(runs.c.status == Status.RUNNING)
            done = conn.execute(update.values(**values))
        return bool(done.rowcount)

    def history(self, job: str, limit: int = 20) -> list[RunRecord]:
        """``job``'s most recent runs, newest first."""
        query = _with_lock().where(runs.c.job == job)
        query = query.order_by(runs.c.started_at.desc()).limit(limit)
        with self._transaction("reading the history") as conn:
            rows = conn.execute(query).all()
        return [self._record(row) for row in rows]

    def run_record(self, run_id: str) -> RunRecord | None:
        """The run ``run_id``, or ``None`` if it was never recorded."""
        with self._transaction("reading the history") as conn:
            row = conn.execute(_with_lock().where(runs.c.run_id == run_id)).first()
        return self._record(row) if row is not None else None

    def _record(self, row: Any) -> RunRecord:
        """The run of ``row`` (from :func:`_with_lock`); if still recorded as running but
        no longer holding the lock it took, with ``lock_lapsed_at`` set: a killed process
        leaves its record running until the next run takes the lock and records it
        abandoned."""
        record = _run_record(row)
        expires = row.lock_expires_at
        if record.status != Status.RUNNING or expires is None:
            # No lock of its own: a run taken over is already recorded abandoned, and a
            # run waiting on its ranges (workers) holds none.
            return record
        now = self._clock()
        if 0 < expires <= now:
            return replace(record, lock_lapsed_at=expires)
        if expires <= 0 or self._dead(row.lock_host, row.lock_pid, row.lock_started):
            return replace(record, lock_lapsed_at=now)
        return record


def _with_lock() -> sa.Select[Any]:
    """Runs with the lock each took, if it still names them (one statement: a run that
    ends and gives its lock up meanwhile is never seen running without it)."""
    owned = (locks.c.job == runs.c.job) & (locks.c.owner == runs.c.run_id)
    return sa.select(
        runs,
        locks.c.expires_at.label("lock_expires_at"),
        locks.c.host.label("lock_host"),
        locks.c.pid.label("lock_pid"),
        locks.c.started.label("lock_started"),
    ).select_from(runs.outerjoin(locks, owned))


def _run_record(row: Any) -> RunRecord:
    return RunRecord(
        **{
            **{column.name: row._mapping[column.name] for column in runs.c},
            "cursor_from": decode_position(row.cursor_from) if row.cursor_from else None,
            "cursor_to": decode_position(row.cursor_to) if row.cursor_to else None,
            "splits": row.splits or 0,
        }
    )


def save_counts(conn: sa.Connection, run_id: str, counts: dict[str, Any]) -> None:
    """Keep run ``run_id``'s counts so far in its record, in the transaction of the
    checkpoint they go with: a run whose process dies is then recorded with what its
    checkpoint proves it delivered. ``cursor_to`` is a position."""
    values = dict(counts)
    if values.get("cursor_to") is not None:
        values["cursor_to"] = encode_position(values["cursor_to"])
    if values:
        conn.execute(_counting(frozenset(values)), {"counted_run": run_id, **values})


@functools.cache
def _counting(names: frozenset[str]) -> sa.Update:
    """The update of a run's ``names`` counts, built once per set of names (a run
    saves the same ones with every checkpoint)."""
    where = runs.c.run_id == sa.bindparam("counted_run")
    return sa.update(runs).where(where).values({name: sa.bindparam(name) for name in names})
