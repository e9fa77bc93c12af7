"""Run locks as fenced leases.

A run holds its job's lock until ``expires_at`` and renews it while it runs. Each
acquisition increments a fencing ``token``; a write made under a lease first checks
(:meth:`LockSql._fence`) that the token is still the lock's, so a run that lost its lock
cannot move the checkpoint. A lease left by a killed process is taken over when it
expires, or at once when its process is known dead (same machine, PID gone); the run it
belonged to is then recorded as abandoned.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from loader import defaults
from loader.errors import JobLockedError, LockLostError, StateError
from loader.result import Status
from loader.state.base import SqlBase
from loader.state.records import Lease
from loader.state.schema import locks, runs, slots
from loader.units import when

# Statements run for every batch are built once: building one costs more than running it.
# Their parameters must be exactly their bind parameters: any other key that names a
# column would be set too.
_FENCE = (
    sa.update(locks)
    .where(locks.c.job == sa.bindparam("lease_job"), locks.c.token == sa.bindparam("lease_token"))
    .values(expires_at=sa.bindparam("expires"))
)


class LockSql(SqlBase):
    """Taking, renewing, fencing and giving up job locks."""

    def acquire(self, job: str, owner: str, *, ttl: float = defaults.LOCK_TTL) -> Lease:
        """Take ``job``'s lock for ``owner`` (a run id), or raise :class:`JobLockedError`."""
        now = self._clock()
        values = {
            "owner": owner,
            "host": self._host,
            "pid": self._pid,
            "started": self._started,
            "expires_at": now + ttl,
        }
        try:
            with self._transaction("taking the lock") as conn:
                row = conn.execute(
                    sa.select(locks).where(locks.c.job == job).with_for_update()
                ).first()
                if row is None:
                    conn.execute(sa.insert(locks).values(job=job, token=1, **values))
                    return Lease(job, owner, 1)
                self._refuse_if_held(job, row, now)
                _abandon(conn, row.owner, now)
                token = int(row.token) + 1
                conn.execute(
                    sa.update(locks).where(locks.c.job == job).values(token=token, **values)
                )
                return Lease(job, owner, token)
        except StateError as exc:
            if isinstance(exc.__cause__, IntegrityError):  # another run inserted it first
                raise JobLockedError(
                    f"job {job!r} is locked by another run that started just now",
                    holder="unknown",
                ) from exc
            raise

    def _refuse_if_held(self, job: str, row: Any, now: float) -> None:
        """Raise :class:`JobLockedError` while ``job``'s lock (``row``) is unexpired and
        its holder not known dead."""
        if row.expires_at > now and not self._dead(row.host, row.pid, row.started):
            raise JobLockedError(
                f"job {job!r} is locked by run {row.owner} (pid {row.pid} on "
                f"{row.host.split('|')[0]}) until {when(row.expires_at)}; "
                "wait for it to finish, or for the lock to expire",
                holder=f"{row.owner}@{row.host}:{row.pid}",
            )

    def renew(self, lease: Lease, *, ttl: float = defaults.LOCK_TTL) -> None:
        """Extend ``lease``; raise :class:`LockLostError` (a :class:`StateError`) if
        another run took the lock."""
        with self._transaction("renewing the lock") as conn:
            self._fence(conn, lease, ttl)

    def _fence(self, conn: sa.Connection, lease: Lease, ttl: float) -> None:
        """Extend ``lease`` inside ``conn``'s transaction, or raise
        :class:`LockLostError` so that nothing else in that transaction is written."""
        values = {"lease_job": lease.job, "lease_token": lease.token}
        result = conn.execute(_FENCE, {**values, "expires": self._clock() + ttl})
        if result.rowcount != 1:
            raise LockLostError(
                f"run {lease.owner} lost the lock of job {lease.job!r} to another run; "
                "it stops without moving the checkpoint"
            )

    def release(self, lease: Lease) -> None:
        """Give the lock up (if still held by ``lease``)."""
        with self._transaction("releasing the lock") as conn:
            conn.execute(
                sa.update(locks)
                .where(locks.c.job == lease.job, locks.c.token == lease.token)
                .values(expires_at=0.0)
            )

    def break_lock(self, job: str, owner: str) -> bool:
        """Expire ``job``'s lock if ``owner`` holds it (an attempt of that run that is
        known to be dead); ``True`` if it did. Its writes are fenced off from then on."""
        with self._transaction("releasing the lock") as conn:
            result = conn.execute(
                sa.update(locks)
                .where(locks.c.job == job, locks.c.owner == owner, locks.c.expires_at > 0)
                .values(expires_at=0.0)
            )
        return bool(result.rowcount)


def _abandon(conn: sa.Connection, run_id: str, now: float) -> None:
    """Record the run whose lock is being taken over as abandoned, if still running, and
    close the clock's slot it ran for. Its counts are those its last checkpoint saved
    (see ``record_batch``): what the endpoint acknowledged before its process died."""
    died = "the run's process died"
    abandoned = conn.execute(
        sa.update(runs)
        .where(runs.c.run_id == run_id, runs.c.status == Status.RUNNING)
        .values(status=Status.ABANDONED, ended_at=now, error=died)
    )
    if abandoned.rowcount:
        _count_ranges(conn, run_id)
        conn.execute(
            sa.update(slots)
            .where(slots.c.run_id == run_id, slots.c.status.in_([Status.CLAIMED, Status.QUEUED]))
            .values(status=Status.ABANDONED, detail=died)
        )


def _count_ranges(conn: sa.Connection, run_id: str) -> None:
    """A partitioned run's counts: the sums of its ranges' (``RUN#pN``), which each
    checkpoint of theirs keeps; a run without ranges is left as it is."""
    ranges = runs.c.run_id.startswith(f"{run_id}#p", autoescape=True)
    posted, rejected = conn.execute(
        sa.select(sa.func.sum(runs.c.rows_posted), sa.func.sum(runs.c.rows_rejected)).where(ranges)
    ).one()
    if posted is not None:
        conn.execute(
            sa.update(runs)
            .where(runs.c.run_id == run_id)
            .values(rows_posted=posted, rows_rejected=rejected)
        )
