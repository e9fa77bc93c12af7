"""Scheduled slots: the clock's record of which slot of which job ran, and how.

The primary key ``(job, slot_at)`` makes a claim succeed at most once per slot, however
many clocks run; slots that passed while no clock ran are recorded as ``missed`` rather
than run late or dropped silently.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from loader.errors import StateError
from loader.result import Status
from loader.state.base import SqlBase
from loader.state.records import SlotRecord
from loader.state.schema import slots as slot_table


class SlotSql(SqlBase):
    """Claiming, finishing and listing a job's scheduled slots."""

    def claim_slot(self, job: str, slot_at: float, run_id: str, clock: str) -> bool:
        """Claim ``job``'s slot for ``clock``; ``False`` if another clock already did.

        The primary key makes this at most once per slot, however many clocks run."""
        try:
            with self._transaction("claiming a slot") as conn:
                conn.execute(
                    sa.insert(slot_table).values(
                        job=job, slot_at=slot_at, run_id=run_id, clock=clock,
                        status=Status.CLAIMED, claimed_at=self._clock(),
                    )
                )  # fmt: skip
        except StateError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                return False
            raise
        return True

    def finish_slot(self, job: str, slot_at: float, status: str, detail: str | None = None) -> None:
        """Record how a claimed slot ended (the run's status, or ``skipped``)."""
        with self._transaction("recording a slot") as conn:
            conn.execute(
                sa.update(slot_table)
                .where(slot_table.c.job == job, slot_table.c.slot_at == slot_at)
                .values(status=status, detail=detail)
            )

    def record_missed(self, job: str, slots: Sequence[float], clock: str, detail: str) -> None:
        """Record slots that passed while no clock ran (never run, never dropped silently)."""
        now = self._clock()
        for slot_at in slots:
            run_id = f"{job}@missed@{slot_at!r}"
            with contextlib.suppress(StateError), self._transaction("recording a slot") as conn:
                conn.execute(
                    sa.insert(slot_table).values(
                        job=job, slot_at=slot_at, run_id=run_id, clock=clock,
                        status=Status.MISSED, claimed_at=now, detail=detail,
                    )
                )  # fmt: skip

    def last_slot(self, job: str) -> float | None:
        """The latest slot of ``job`` any clock claimed or recorded."""
        with self._transaction("reading slots") as conn:
            value = conn.execute(
                sa.select(sa.func.max(slot_table.c.slot_at)).where(slot_table.c.job == job)
            ).scalar()
        return None if value is None else float(value)

    def slots(self, job: str, limit: int = 50) -> list[SlotRecord]:
        """``job``'s most recent slots, newest first."""
        rows = self._newest(slot_table, slot_table.c.slot_at, job, limit, "reading slots")
        return [SlotRecord(**row._asdict()) for row in rows]
