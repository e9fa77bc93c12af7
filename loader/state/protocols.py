"""What callers may ask of a state store, one narrow Protocol per concern.

A caller that only reads checkpoints can ask for a :class:`CheckpointStore`; one that
needs everything asks for a :class:`StateStore`, the union. :class:`SqlStateStore`
satisfies them all; a test may pass any object with the methods it uses. The contracts
of each method are stated on the SQL implementations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from loader.result import Position
from loader.state.records import (
    AlertState,
    Checkpoint,
    DeadLetter,
    Lease,
    RunRecord,
    SlotRecord,
)


class LockStore(Protocol):
    """Run locks as fenced leases: one run of a job at a time."""

    def acquire(self, job: str, owner: str, *, ttl: float = ...) -> Lease: ...
    def renew(self, lease: Lease, *, ttl: float = ...) -> None: ...
    def release(self, lease: Lease) -> None: ...
    def break_lock(self, job: str, owner: str) -> bool: ...


class CheckpointStore(Protocol):
    """How far each job got, moved only under its lease; epochs and key ranges."""

    def checkpoint(self, job: str) -> Checkpoint | None: ...
    def lag_position(self, job: str) -> Position | None: ...
    def record_batch(
        self,
        lease: Lease,
        run_id: str,
        *,
        fingerprint: str,
        position: Position | None,
        dead_letters: Sequence[tuple[bytes, int | None, str]] = ...,
        ttl: float = ...,
    ) -> None: ...
    def reset(self, job: str) -> bool: ...
    def epoch(self, job: str) -> int: ...
    def partition_bounds(
        self, job: str, count: int, compute: Callable[[], tuple[int, ...]], *, keep: bool = ...
    ) -> tuple[int, ...]: ...


class RunLog(Protocol):
    """The run history."""

    def start_run(self, run_id: str, job: str, cursor_from: Position | None) -> None: ...
    def finish_run(
        self, run_id: str, status: str, *, only_running: bool = ..., **counts: Any
    ) -> bool: ...
    def history(self, job: str, limit: int = ...) -> list[RunRecord]: ...
    def run_record(self, run_id: str) -> RunRecord | None: ...


class DeadLetterStore(Protocol):
    """Rejected rows, for inspection and replay."""

    def dead_letters(self, job: str, limit: int | None = ...) -> list[DeadLetter]: ...
    def dead_letter_count(self, job: str) -> int: ...
    def update_dead_letter(self, letter_id: int, status: int | None, excerpt: str) -> None: ...
    def delete_dead_letters(self, ids: Sequence[int]) -> None: ...
    def purge_dead_letters(self, job: str) -> int: ...


class SlotStore(Protocol):
    """The clock's scheduled slots, each claimed at most once."""

    def claim_slot(self, job: str, slot_at: float, run_id: str, clock: str) -> bool: ...
    def finish_slot(
        self, job: str, slot_at: float, status: str, detail: str | None = ...
    ) -> None: ...
    def record_missed(self, job: str, slots: Sequence[float], clock: str, detail: str) -> None: ...
    def last_slot(self, job: str) -> float | None: ...
    def slots(self, job: str, limit: int = ...) -> list[SlotRecord]: ...


class AlertStore(Protocol):
    """What alerting remembers of a job between runs."""

    def alert_state(self, job: str) -> AlertState: ...
    def save_alert_state(self, state: AlertState) -> None: ...


class StateStore(
    LockStore, CheckpointStore, RunLog, DeadLetterStore, SlotStore, AlertStore, Protocol
):
    """What the runner and the CLI need from a state store: every concern, and closing."""

    def close(self) -> None: ...
