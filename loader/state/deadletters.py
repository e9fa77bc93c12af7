"""Dead letters: rows the endpoint rejected, kept with the answer for inspection and replay.

They are written with the batch they came from (:func:`insert_dead_letters`, inside the
checkpoint's transaction), counted and listed by the CLI, and updated or deleted as a
replay tries them again.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from loader.state.base import SqlBase
from loader.state.records import DeadLetter
from loader.state.schema import dead_letters


class DeadLetterSql(SqlBase):
    """Reading, updating and removing a job's dead letters."""

    def dead_letters(self, job: str, limit: int | None = None) -> list[DeadLetter]:
        """``job``'s dead letters, oldest first."""
        query = sa.select(dead_letters).where(dead_letters.c.job == job)
        with self._transaction("reading dead letters") as conn:
            rows = conn.execute(query.order_by(dead_letters.c.id).limit(limit)).all()
        return [DeadLetter(**{**row._asdict(), "row": row.row.encode("utf-8")}) for row in rows]

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
        """Remove all of ``job``'s dead letters; return how many there were."""
        with self._transaction("purging dead letters") as conn:
            result = conn.execute(sa.delete(dead_letters).where(dead_letters.c.job == job))
        return int(result.rowcount)


def insert_dead_letters(
    conn: sa.Connection,
    job: str,
    run_id: str,
    letters: Sequence[tuple[bytes, int | None, str]],
    now: float,
) -> None:
    """Keep ``letters`` (row as UTF-8 JSON, HTTP status or ``None``, answer excerpt) as
    ``job``'s dead letters from ``run_id``, each at its first attempt, in ``conn``'s
    transaction. Nothing is written for no letters."""
    if not letters:
        return
    conn.execute(
        sa.insert(dead_letters),
        [
            {
                "job": job,
                "run_id": run_id,
                "row": row.decode("utf-8"),
                "status": status,
                "excerpt": excerpt,
                "attempts": 1,
                "created_at": now,
                "updated_at": now,
            }
            for row, status, excerpt in letters
        ],
    )
