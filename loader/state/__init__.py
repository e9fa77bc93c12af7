"""Durable state: checkpoints, run history, dead letters, run locks, slots and alerts.

One implementation over SQLAlchemy serves both backends: a SQLite file by default
(``.loader/state.db``) and PostgreSQL when ``LOADER_STATE_URL`` is set. Every write is one
transaction, so a process killed at any moment leaves the state as it was before or after
that write, never in between. Tables are created on first use and carry a schema version.

Locks are leases: a run holds its job's lock until ``expires_at`` and renews it while it
runs. Each acquisition increments a fencing ``token``; a checkpoint is written only while
the writer's token is still the lock's, so a run that lost its lock cannot move the
checkpoint. A lease left by a killed process is taken over when it expires, or at once
when its process is known dead (same host, PID gone).

The modules, one concern each: ``schema`` (tables, version), ``records`` (what the store
returns, positions as text), ``liveness`` (is a lock's holder gone), ``base`` (the shared
engine and transactions), ``locks``, ``cuts``, ``fingerprints`` (diff syncs),
``checkpoints``, ``runs``, ``deadletters``, ``slots``, ``alerts`` (the SQL of each
concern), ``protocols`` (a narrow Protocol per concern and :class:`StateStore`, their
union) and ``store`` (the facade, and opening it).
"""

from __future__ import annotations

from loader.state.protocols import (
    AlertStore,
    CheckpointStore,
    CutStore,
    DeadLetterStore,
    FingerprintStore,
    LockStore,
    RunLog,
    SlotStore,
    StateStore,
)
from loader.state.records import (
    AlertState,
    Checkpoint,
    Cut,
    DeadLetter,
    Lease,
    NewDeadLetter,
    RunRecord,
    SlotRecord,
    decode_position,
    encode_position,
)
from loader.state.schema import SCHEMA_VERSION
from loader.state.store import SqlStateStore, open_state, state_url

__all__ = [
    "SCHEMA_VERSION",
    "AlertState",
    "AlertStore",
    "Checkpoint",
    "CheckpointStore",
    "Cut",
    "CutStore",
    "DeadLetter",
    "DeadLetterStore",
    "FingerprintStore",
    "Lease",
    "LockStore",
    "NewDeadLetter",
    "RunLog",
    "RunRecord",
    "SlotRecord",
    "SlotStore",
    "SqlStateStore",
    "StateStore",
    "decode_position",
    "encode_position",
    "open_state",
    "state_url",
]
