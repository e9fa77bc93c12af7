"""The state store as one object: :class:`SqlStateStore`, and where to open it.

One implementation over SQLAlchemy serves both backends: a SQLite file by default
(``.loader/state.db``) and PostgreSQL when ``LOADER_STATE_URL`` is set.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from loader import defaults
from loader.state.alerts import AlertSql
from loader.state.checkpoints import CheckpointSql
from loader.state.deadletters import DeadLetterSql
from loader.state.runs import RunSql
from loader.state.slots import SlotSql


class SqlStateStore(CheckpointSql, RunSql, DeadLetterSql, SlotSql, AlertSql):
    """The state store on SQLite or PostgreSQL (any SQLAlchemy database in principle):
    locks, checkpoints, runs, dead letters, slots and alert states over one engine.

    Satisfies :class:`~loader.state.protocols.StateStore`."""


def state_url(url: str | None = None, env: dict[str, str] | None = None) -> str:
    """The state store URL: ``url``, else ``$LOADER_STATE_URL``, else the SQLite default."""
    environ = os.environ if env is None else env
    return url or environ.get(defaults.STATE_URL_ENV) or f"sqlite:///{defaults.STATE_PATH}"


def open_state(url: str | None = None, *, clock: Callable[[], float] = time.time) -> SqlStateStore:
    """Open (and create on first use) the state store at :func:`state_url`."""
    return SqlStateStore(state_url(url), clock=clock)
