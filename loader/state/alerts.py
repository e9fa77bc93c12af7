"""What alerting remembers of a job between runs: since when it fails or lags, when it
last alerted and last succeeded. One row per job, replaced whole on each save."""

from __future__ import annotations

import sqlalchemy as sa

from loader.state.base import SqlBase
from loader.state.records import AlertState
from loader.state.schema import alert_states


class AlertSql(SqlBase):
    """Reading and saving a job's :class:`AlertState`."""

    def alert_state(self, job: str) -> AlertState:
        """What alerting remembers of ``job`` (a fresh state for a new job)."""
        with self._transaction("reading the alert state") as conn:
            row = conn.execute(sa.select(alert_states).where(alert_states.c.job == job)).first()
        return AlertState(**row._asdict()) if row is not None else AlertState(job)

    def save_alert_state(self, state: AlertState) -> None:
        """Keep ``state`` for the job's next run."""
        values = {k: v for k, v in state.__dict__.items() if k != "job"}
        with self._transaction("saving the alert state") as conn:
            updated = conn.execute(
                sa.update(alert_states).where(alert_states.c.job == state.job).values(**values)
            )
            if updated.rowcount == 0:
                conn.execute(sa.insert(alert_states).values(job=state.job, **values))
