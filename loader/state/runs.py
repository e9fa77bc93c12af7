"""The run history: one record per run id, written when it starts and when it ends.

A run resumed under the same id (a retried worker task) starts its record again. Of
several processes ending the same run, ``finish_run(..., only_running=True)`` lets one
record how it ended.
"""

from __future__ import annotations

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
        rows = self._newest(runs, runs.c.started_at, job, limit, "reading the history")
        return self._lapsed([_run_record(row) for row in rows])

    def run_record(self, run_id: str) -> RunRecord | None:
        """The run ``run_id``, or ``None`` if it was never recorded."""
        with self._transaction("reading the history") as conn:
            row = conn.execute(sa.select(runs).where(runs.c.run_id == run_id)).first()
        return self._lapsed([_run_record(row)])[0] if row is not None else None

    def _lapsed(self, records: list[RunRecord]) -> list[RunRecord]:
        """``records``, each run still recorded as running but no longer holding its
        job's lock with ``lock_lapsed_at`` set: a killed process leaves its record
        running until the next run of the job takes the lock and records it abandoned."""
        jobs = {r.job for r in records if r.status == Status.RUNNING}
        if not jobs:
            return records
        with self._transaction("reading the locks") as conn:
            held = {
                row.job: row for row in conn.execute(sa.select(locks).where(locks.c.job.in_(jobs)))
            }
        now = self._clock()
        lapsed = []
        for record in records:
            lock = held.get(record.job) if record.status == Status.RUNNING else None
            # Only a lock the run itself took tells: a run taken over is already
            # recorded abandoned, and a run waiting on its ranges (workers) holds none.
            if lock is not None and lock.owner == record.run_id:
                if 0 < lock.expires_at <= now:
                    record = replace(record, lock_lapsed_at=lock.expires_at)
                elif lock.expires_at <= 0 or self._dead(lock.host, lock.pid, lock.started):
                    record = replace(record, lock_lapsed_at=now)
            lapsed.append(record)
        return lapsed


def _run_record(row: Any) -> RunRecord:
    return RunRecord(
        **{
            **row._asdict(),
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
        conn.execute(sa.update(runs).where(runs.c.run_id == run_id).values(**values))
