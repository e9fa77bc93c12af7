"""Dead letters: rows the endpoint rejected, kept with the answer for inspection and replay.

They are written with the batch they came from (:func:`insert_dead_letters`, inside the
checkpoint's transaction), counted and listed by the CLI, and updated or deleted as a
replay tries them again.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import sqlalchemy as sa

from loader.state.locks import LockSql
from loader.state.records import DeadLetter, NewDeadLetter
from loader.state.schema import dead_letters


class DeadLetterSql(LockSql):
    """Reading, updating and removing a job's dead letters."""

    def dead_letters(self, job: str, limit: int | None = None) -> list[DeadLetter]:
        """``job``'s dead letters, oldest first."""
        query = sa.select(dead_letters).where(dead_letters.c.job == job)
        with self._transaction("reading dead letters") as conn:
            rows = conn.execute(query.order_by(dead_letters.c.id).limit(limit)).all()
        return [
            DeadLetter(**{
                **row._asdict(),
                "row": row.row.encode("utf-8"),
                "full_row": row.full_row.encode("utf-8") if row.full_row is not None else None,
            })
            for row in rows
        ]  # fmt: skip

    def dead_letter_count(self, job: str) -> int:
        """How many dead letters ``job`` has."""
        query = sa.select(sa.func.count()).where(dead_letters.c.job == job)
        with self._transaction("counting dead letters") as conn:
            return int(conn.execute(query).scalar_one())

    def update_dead_letter(self, letter_id: int, status: int | None, excerpt: str) -> None:
        """Record another failed delivery of a dead letter."""
        with self._transaction("updating a dead letter") as conn:
            conn.execute(
                sa.update(dead_letters)
                .where(dead_letters.c.id == letter_id)
                .values(
                    status=status,
                    excerpt=excerpt,
                    attempts=dead_letters.c.attempts + 1,
                    updated_at=self._clock(),
                )
            )

    def delete_dead_letters(self, ids: Sequence[int]) -> None:
        """Remove dead letters (delivered on replay)."""
        with self._transaction("deleting dead letters") as conn:
            conn.execute(sa.delete(dead_letters).where(dead_letters.c.id.in_(list(ids))))

    def purge_dead_letters(self, job: str) -> int:
        """Remove all of ``job``'s dead letters; return how many there were.

        Takes the job's lock (raises :class:`JobLockedError` while a run or a replay
        holds it): a run adds letters and a replay resends them meanwhile."""
        lease = self.acquire(job, f"purge-{uuid.uuid4().hex[:8]}")
        try:
            with self._transaction("purging dead letters") as conn:
                result = conn.execute(sa.delete(dead_letters).where(dead_letters.c.job == job))
        finally:
            self.release(lease)
        return int(result.rowcount)


def insert_dead_letters(
    conn: sa.Connection,
    job: str,
    run_id: str,
    letters: Sequence[NewDeadLetter | tuple[bytes, int | None, str]],
    now: float,
) -> None:
    """Keep ``letters`` (see :class:`NewDeadLetter`; a plain ``(row, status, excerpt)``
    keeps no full row nor URL) as ``job``'s dead letters from ``run_id``, each at its
    first attempt, in ``conn``'s transaction. Nothing is written for no letters."""
    if not letters:
        return
    conn.execute(
        sa.insert(dead_letters),
        [
            {
                "job": job,
                "run_id": run_id,
                "row": letter.row.decode("utf-8"),
                "status": letter.status,
                "excerpt": letter.excerpt,
                "attempts": 1,
                "created_at": now,
                "updated_at": now,
                "full_row": letter.full_row.decode("utf-8") if letter.full_row else None,
                "url": letter.url,
            }
            for letter in map(_new, letters)
        ],
    )


def _new(letter: NewDeadLetter | tuple[bytes, int | None, str]) -> NewDeadLetter:
    return letter if isinstance(letter, NewDeadLetter) else NewDeadLetter(*letter)
