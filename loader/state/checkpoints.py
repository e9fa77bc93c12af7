"""Checkpoints: how far each job (and each key range of a partitioned job) got.

A checkpoint moves only in :meth:`CheckpointSql.record_batch`, in the same transaction
that checks the writer's lease and keeps the batch's dead letters, so a checkpoint never
runs ahead of what the endpoint acknowledged, and a run that lost its lock moves nothing.
Alongside live, in ``loader_meta``, each job's epoch (how many resets; part of the
idempotency keys) and the kept boundaries of its key ranges.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa

from loader import defaults
from loader.errors import StateError
from loader.result import Position
from loader.state.cuts import CutSql, drop_cuts
from loader.state.deadletters import insert_dead_letters
from loader.state.fingerprints import (
    FingerprintSql,
    drop_fingerprints,
    drop_job_fingerprints,
)
from loader.state.records import (
    Checkpoint,
    Lease,
    NewDeadLetter,
    decode_position,
    encode_position,
)
from loader.state.runs import save_counts
from loader.state.schema import checkpoints, cuts, meta


class CheckpointSql(CutSql, FingerprintSql):
    """Reading, moving and resetting checkpoints, epochs and partition boundaries."""

    def checkpoint(self, job: str) -> Checkpoint | None:
        """``job``'s checkpoint, or ``None`` before its first acknowledged batch."""
        with self._transaction("reading the checkpoint") as conn:
            row = conn.execute(sa.select(checkpoints).where(checkpoints.c.job == job)).first()
        if row is None:
            return None
        return Checkpoint(
            row.job, row.fingerprint, decode_position(row.position), row.run_id, row.updated_at
        )

    def lag_position(self, job: str) -> Position | None:
        """The position that tells how far ``job`` lags: its checkpoint's, or, for a
        partitioned job, that of its least advanced range."""
        with self._transaction("reading the checkpoint") as conn:
            rows = conn.execute(
                sa.select(checkpoints.c.position).where(
                    (checkpoints.c.job == job)
                    | checkpoints.c.job.startswith(f"{job}#", autoescape=True)
                )
            ).all()
        positions = [decode_position(row.position) for row in rows]
        try:
            return min((p for p in positions if p), default=None, key=lambda p: p[0])
        except TypeError:  # values of different types: none is comparable
            return None

    def record_batch(
        self,
        lease: Lease,
        run_id: str,
        *,
        fingerprint: str,
        position: Position | None,
        dead_letters: Sequence[NewDeadLetter | tuple[bytes, int | None, str]] = (),
        ttl: float = defaults.LOCK_TTL,
        cuts: Sequence[int] = (),
        counts: dict[str, Any] | None = None,
        diffed: tuple[int, Sequence[tuple[str, bytes]], Sequence[str]] | None = None,
    ) -> None:
        """Record a batch as done, in one transaction: keep its rejected rows as dead
        letters and move the checkpoint to ``position`` (when the job has a cursor),
        drop the ``cuts`` recorded for the batches acknowledged, and keep the run's
        ``counts`` so far in its record. A diff sync passes ``diffed``: its generation,
        the ``(key, fingerprint)`` of each row acknowledged, and the keys whose deletes
        were acknowledged.

        Only while ``lease`` still holds the lock: a run that lost it writes nothing.
        """
        now = self._clock()
        with self._transaction("saving the checkpoint") as conn:
            self._fence(conn, lease, ttl)
            insert_dead_letters(conn, lease.job, run_id, dead_letters, now)
            if position is not None:
                _save_checkpoint(conn, lease.job, fingerprint, position, run_id, now)
            drop_cuts(conn, lease.job, cuts)
            if diffed is not None:
                self._save_fingerprints(conn, lease.job, diffed[1], diffed[0])
                drop_fingerprints(conn, lease.job, diffed[2])
            if counts:
                save_counts(conn, run_id, counts)

    def reset(self, job: str) -> bool:
        """Forget ``job``'s checkpoint: the next run starts from ``cursor.start``.

        Takes the job's lock (raises :class:`JobLockedError` while a run holds it, which
        would write its checkpoint back) and starts a new epoch, so the batches sent
        again do not reuse the idempotency keys of their first sending."""
        lease = self.acquire(job, f"reset-{uuid.uuid4().hex[:8]}")
        try:
            with self._transaction("resetting the checkpoint") as conn:
                forgot = _forget_checkpoints(conn, job)
                _next_epoch(conn, job)
        finally:
            self.release(lease)
        return forgot

    def epoch(self, job: str) -> int:
        """How many times ``job``'s checkpoint was reset (part of idempotency keys); a
        partition (``NAME#pN``) shares its job's."""
        job = job.split("#", 1)[0]
        with self._transaction("reading the checkpoint") as conn:
            value = conn.execute(
                sa.select(meta.c.value).where(meta.c.key == f"epoch:{job}")
            ).scalar()
        return int(value) if value is not None else 0

    def partition_bounds(
        self,
        job: str,
        count: int,
        compute: Callable[[], tuple[int, ...]],
        *,
        keep: bool = True,
    ) -> tuple[int, ...]:
        """The boundaries of ``job``'s ``count`` key ranges: computed (by ``compute``) and
        kept at the first partitioned run, then the same for every run, so each range's
        checkpoint keeps its meaning (``reset`` forgets them). ``keep=False`` (a dry run)
        computes them without keeping them."""
        key = f"partitions:{job}:{count}"
        read = sa.select(meta.c.value).where(meta.c.key == key)
        with self._transaction("reading the partitions") as conn:
            stored = conn.execute(read).scalar()
        if stored is None:
            bounds = compute()
            if not keep:
                return bounds
            try:
                with self._transaction("saving the partitions") as conn:
                    conn.execute(sa.insert(meta).values(key=key, value=json.dumps(bounds)))
                return bounds
            except StateError:  # another run saved them first: use those
                with self._transaction("reading the partitions") as conn:
                    stored = conn.execute(read).scalar()
                if stored is None:
                    raise
        return tuple(int(bound) for bound in json.loads(stored))


# Built once: the checkpoint moves with every group of batches acknowledged (parameters:
# exactly its bind parameters; another key naming a column would be set too).
_MOVE = (
    sa.update(checkpoints)
    .where(checkpoints.c.job == sa.bindparam("checkpoint_job"))
    .values(
        {name: sa.bindparam(name) for name in ("fingerprint", "position", "run_id", "updated_at")}
    )
)


def _save_checkpoint(
    conn: sa.Connection,
    job: str,
    fingerprint: str,
    position: Position,
    run_id: str,
    now: float,
) -> None:
    """Move ``job``'s checkpoint to ``position`` (creating it the first time)."""
    values = {
        "fingerprint": fingerprint,
        "position": encode_position(position),
        "run_id": run_id,
        "updated_at": now,
    }
    updated = conn.execute(_MOVE, {"checkpoint_job": job, **values})
    if updated.rowcount == 0:
        conn.execute(sa.insert(checkpoints).values(job=job, **values))


def _forget_checkpoints(conn: sa.Connection, job: str) -> bool:
    """Delete ``job``'s checkpoint, its partitions' checkpoints and its kept key
    ranges; ``True`` if there was a checkpoint to delete."""
    deleted = conn.execute(sa.delete(checkpoints).where(checkpoints.c.job == job))
    forgot_keys = drop_job_fingerprints(conn, job)
    ranges = conn.execute(
        sa.delete(checkpoints).where(checkpoints.c.job.startswith(f"{job}#", autoescape=True))
    )
    conn.execute(
        sa.delete(meta).where(meta.c.key.startswith(f"partitions:{job}:", autoescape=True))
    )
    conn.execute(
        sa.delete(cuts).where(
            (cuts.c.job == job) | cuts.c.job.startswith(f"{job}#", autoescape=True)
        )
    )
    return bool(deleted.rowcount or ranges.rowcount or forgot_keys)


def _next_epoch(conn: sa.Connection, job: str) -> None:
    """Count one more reset of ``job``."""
    key = f"epoch:{job}"
    epoch = conn.execute(sa.select(meta.c.value).where(meta.c.key == key)).scalar()
    if epoch is None:
        conn.execute(sa.insert(meta).values(key=key, value="1"))
    else:
        conn.execute(sa.update(meta).where(meta.c.key == key).values(value=str(int(epoch) + 1)))
