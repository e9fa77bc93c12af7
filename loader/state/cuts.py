"""Cuts written ahead: each batch's boundaries, recorded before it is sent.

A run of a job with a cursor records each batch it is about to send (where it starts,
its last position, its row count and idempotency key) under its lease. The record is
dropped in the transaction that moves the checkpoint past the batch, so what remains
after a crash is exactly the batches that may have reached the endpoint without being
acknowledged. The next run re-cuts those first, at the same boundaries, so each one whose
rows did not change goes out again with its first key.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from loader import defaults
from loader.state.locks import LockSql
from loader.state.records import Cut, Lease
from loader.state.schema import cuts

# Built once: a cut is written and dropped for every batch (parameters: exactly the
# columns, or the bind parameters, they name).
_INSERT = sa.insert(cuts)
_DROP = sa.delete(cuts).where(
    cuts.c.job == sa.bindparam("cut_job"), cuts.c.id.in_(sa.bindparam("ids", expanding=True))
)


class CutSql(LockSql):
    """Recording the cuts of batches about to be sent, and reading them back."""

    def record_cut(
        self,
        lease: Lease,
        run_id: str,
        *,
        scope: str,
        after: str,
        last: str,
        rows: int,
        key: str,
        ttl: float = defaults.LOCK_TTL,
    ) -> int:
        """Record, under ``lease``, a batch of ``lease.job`` about to be sent; return the
        record's id. It takes the place of any cut recorded earlier from the same
        ``after`` (the batch re-cut from an older record): see :meth:`pending_cuts`."""
        with self._transaction("recording a batch") as conn:
            self._fence(conn, lease, ttl)
            inserted = conn.execute(_INSERT, {
                "job": lease.job, "run_id": run_id, "scope": scope, "after": after, "last": last,
                "rows": rows, "key": key, "created_at": self._clock(),
            })  # fmt: skip
            primary = inserted.inserted_primary_key
            assert primary is not None
            return int(primary[0])

    def pending_cuts(
        self, lease: Lease, after: str, *, ttl: float = defaults.LOCK_TTL
    ) -> list[Cut]:
        """The cuts of ``lease.job`` still pending from ``after`` (the checkpoint): the
        one that starts there, then the one that starts at its end, and so on. The
        others (left by a reset, a full refresh or a changed job) are deleted."""
        with self._transaction("reading the batches in flight") as conn:
            self._fence(conn, lease, ttl)
            rows = conn.execute(
                sa.select(cuts).where(cuts.c.job == lease.job).order_by(cuts.c.id)
            ).all()
            # The latest cut from each start replaces the earlier ones (a re-cut batch).
            starting = {row.after: Cut(**row._asdict()) for row in rows}
            replaced = {row.id for row in rows} - {cut.id for cut in starting.values()}
            chain: list[Cut] = []
            while (cut := starting.pop(after, None)) is not None:
                chain.append(cut)
                after = cut.last
            stale = [cut.id for cut in starting.values()] + sorted(replaced)
            if stale:
                conn.execute(sa.delete(cuts).where(cuts.c.id.in_(stale)))
        return chain


def drop_cuts(conn: sa.Connection, job: str, ids: Sequence[int]) -> None:
    """Delete the cuts ``ids`` of ``job``: their batches were acknowledged."""
    if ids:
        conn.execute(_DROP, {"cut_job": job, "ids": list(ids)})
