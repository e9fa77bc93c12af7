"""What callers may ask of a state store, one narrow Protocol per concern.

A caller that only reads checkpoints can ask for a :class:`CheckpointStore`; one that
needs everything asks for a :class:`StateStore`, the union. :class:`SqlStateStore`
satisfies them all; a test may pass any object with the methods it uses. Each method's
contract is stated here, for every implementation; errors are those of
:mod:`loader.errors`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from loader.result import Position
from loader.state.records import (
    AlertState,
    Checkpoint,
    Cut,
    DeadLetter,
    Lease,
    NewDeadLetter,
    RunRecord,
    SlotRecord,
)


class LockStore(Protocol):
    """Run locks as fenced leases: one run of a job at a time.

    Every method is one transaction; any database failure raises :class:`StateError`.
    """

    def acquire(self, job: str, owner: str, *, ttl: float = ...) -> Lease:
        """Take ``job``'s lock for ``owner`` (a run id) for ``ttl`` seconds and return the
        lease, whose token is one more than the last holder's.

        Raises :class:`JobLockedError` while another lease is unexpired and its process
        not known dead (also when another process created the lock at the same moment).
        Taking over a lock records the run that held it as abandoned if still running.
        """

    def renew(self, lease: Lease, *, ttl: float = ...) -> None:
        """Extend ``lease`` to ``ttl`` seconds from now.

        Raises :class:`LockLostError` (a :class:`StateError`) if the lock's token is no
        longer ``lease.token``: another run took it over.
        """

    def release(self, lease: Lease) -> None:
        """Expire the lock if ``lease`` still holds it; a lost lease changes nothing."""

    def break_lock(self, job: str, owner: str) -> bool:
        """Expire ``job``'s lock if ``owner`` holds it unexpired; ``True`` if it did.

        For an attempt of a run known to be dead: the old holder's later writes fail
        their fence.
        """


class CheckpointStore(Protocol):
    """How far each job got, moved only under its lease; epochs and key ranges.

    Every method is one transaction; any database failure raises :class:`StateError`.
    """

    def checkpoint(self, job: str) -> Checkpoint | None:
        """``job``'s checkpoint (``job`` may name a partition, ``NAME#pN``), or ``None``
        before its first acknowledged batch."""

    def lag_position(self, job: str) -> Position | None:
        """The position that tells how far ``job`` lags: its checkpoint's or, for a
        partitioned job, that of its least advanced range; ``None`` when there is none
        or the positions' values cannot be compared."""

    def record_batch(
        self,
        lease: Lease,
        run_id: str,
        *,
        fingerprint: str,
        position: Position | None,
        dead_letters: Sequence[NewDeadLetter | tuple[bytes, int | None, str]] = ...,
        ttl: float = ...,
        cuts: Sequence[int] = ...,
        counts: dict[str, Any] | None = ...,
        diffed: tuple[int, Sequence[tuple[str, bytes]], Sequence[str]] | None = ...,
    ) -> None:
        """Record an acknowledged batch, atomically (with ``diffed``: a diff sync's
        generation, its acknowledged ``(key, fingerprint)`` pairs and deleted keys):
        renew ``lease`` for ``ttl``, keep its ``dead_letters`` (see
        :class:`~loader.state.records.NewDeadLetter`) and, unless ``position`` is
        ``None``, move ``lease.job``'s checkpoint there with ``fingerprint`` and
        ``run_id``; delete the ``cuts`` (ids from
        :meth:`CutStore.record_cut`) of the batches acknowledged; write ``counts``
        (columns of the run record, ``cursor_to`` as a position) into ``run_id``'s record.

        Either all of it is written or nothing: if the lease was lost it raises
        :class:`LockLostError` and writes nothing.
        """

    def reset(self, job: str) -> bool:
        """Forget ``job``'s checkpoint, its partitions' checkpoints and kept key ranges,
        and start a new epoch; ``True`` if there was a checkpoint to forget.

        Takes the job's lock for the duration, so raises :class:`JobLockedError` while a
        run holds it (that run would write its checkpoint back).
        """

    def epoch(self, job: str) -> int:
        """How many times ``job`` was reset (0 at first), part of every idempotency key;
        a partition (``NAME#pN``) shares its job's epoch."""

    def partition_bounds(
        self, job: str, count: int, compute: Callable[[], tuple[int, ...]], *, keep: bool = ...
    ) -> tuple[int, ...]:
        """The boundaries of ``job``'s ``count`` key ranges: those kept earlier, else
        ``compute()``'s, kept (unless ``keep`` is false, for a dry run) so every later
        run splits the same way. If two runs race, both return the first one kept."""


class CutStore(Protocol):
    """Batches recorded before they are sent, so the next run can re-cut them.

    Every method is one transaction under the writer's lease (renewed for ``ttl``);
    a lost lease raises :class:`LockLostError` and writes nothing; any database failure
    raises :class:`StateError`.
    """

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
        ttl: float = ...,
    ) -> int:
        """Record a batch of ``lease.job`` about to be sent: the rows after ``after`` up
        to ``last`` (encoded positions, ``"start"`` before any), how many, and its
        idempotency ``scope`` and ``key``; return the record's id. It takes the place of
        the job's earlier records with the same ``after`` (see :meth:`pending_cuts`)."""

    def pending_cuts(self, lease: Lease, after: str, *, ttl: float = ...) -> list[Cut]:
        """The recorded cuts of ``lease.job`` that chain from ``after`` (the latest one
        that starts there, then the latest starting at its ``last``...), in order; the
        job's other cuts are deleted."""


class RunLog(Protocol):
    """The run history, one record per run id.

    Every method is one transaction; any database failure raises :class:`StateError`.
    """

    def start_run(self, run_id: str, job: str, cursor_from: Position | None) -> None:
        """Record ``run_id`` as running from ``cursor_from``, on this host and process;
        a run resumed under the same id has its record started again."""

    def finish_run(
        self, run_id: str, status: str, *, only_running: bool = ..., **counts: Any
    ) -> bool:
        """Record how ``run_id`` ended: ``status``, the end time and the columns in
        ``counts`` (``cursor_to`` as a position); ``True`` if a record changed.

        With ``only_running``, a record no longer ``running`` is left as it is and
        ``False`` returned: of several processes ending one run, only the first records
        it.
        """

    def history(self, job: str, limit: int = ...) -> list[RunRecord]:
        """Up to ``limit`` of ``job``'s runs, most recently started first."""

    def run_record(self, run_id: str) -> RunRecord | None:
        """The record of ``run_id``, or ``None`` if it was never started."""


class DeadLetterStore(Protocol):
    """Rejected rows, for inspection and replay.

    Every method is one transaction; any database failure raises :class:`StateError`.
    """

    def dead_letters(self, job: str, limit: int | None = ...) -> list[DeadLetter]:
        """Up to ``limit`` (all with ``None``) of ``job``'s dead letters, oldest first."""

    def dead_letter_count(self, job: str) -> int:
        """How many dead letters ``job`` has."""

    def update_dead_letter(self, letter_id: int, status: int | None, excerpt: str) -> None:
        """Record one more failed delivery of a dead letter: the answer's ``status`` and
        ``excerpt``, one more attempt; an unknown id changes nothing."""

    def delete_dead_letters(self, ids: Sequence[int]) -> None:
        """Remove the dead letters ``ids`` (delivered on replay); unknown ids are ignored."""

    def purge_dead_letters(self, job: str) -> int:
        """Remove all of ``job``'s dead letters; return how many there were. Takes the
        job's lock for the duration (raises :class:`JobLockedError` while a run or a
        replay holds it)."""


class SlotStore(Protocol):
    """The clock's scheduled slots, each claimed at most once.

    Every method is one transaction; any database failure raises :class:`StateError`.
    """

    def claim_slot(self, job: str, slot_at: float, run_id: str, clock: str) -> bool:
        """Claim ``job``'s slot at ``slot_at`` for ``run_id`` on ``clock``; ``False`` if
        the slot was already claimed or recorded, by any clock."""

    def finish_slot(self, job: str, slot_at: float, status: str, detail: str | None = ...) -> None:
        """Record how a claimed slot ended (the run's status, or ``skipped``)."""

    def record_missed(self, job: str, slots: Sequence[float], clock: str, detail: str) -> None:
        """Record ``slots`` as ``missed`` with ``detail``: they passed while no clock ran
        and are not run late. A slot already recorded is left as it is."""

    def last_slot(self, job: str) -> float | None:
        """The latest slot of ``job`` claimed or recorded, or ``None`` if none was."""

    def slots(self, job: str, limit: int = ...) -> list[SlotRecord]:
        """Up to ``limit`` of ``job``'s slots, latest first."""


class AlertStore(Protocol):
    """What alerting remembers of a job between runs."""

    def alert_state(self, job: str) -> AlertState:
        """``job``'s alert state; a fresh :class:`AlertState` for a job never saved.
        Raises :class:`StateError` if the store cannot be read."""

    def save_alert_state(self, state: AlertState) -> None:
        """Replace the job's alert state with ``state``, whole. Raises
        :class:`StateError` if the store cannot be written."""


class FingerprintStore(Protocol):
    """The keys of diff syncs and their fingerprints (see :mod:`loader.state.fingerprints`);
    written by :meth:`CheckpointStore.record_batch`, forgotten by its ``reset``."""

    def next_generation(self, job: str) -> int:
        """A number for the run of ``job`` about to read, higher than any before."""

    def seen_fingerprints(self, job: str, keys: Sequence[str]) -> dict[str, bytes]:
        """The stored fingerprints of those of ``keys`` that ``job`` tracks."""

    def mark_seen(self, job: str, keys: Sequence[str], generation: int) -> None:
        """Mark those of ``keys`` that ``job`` tracks as seen by ``generation``."""

    def fingerprint_count(
        self,
        job: str,
        *,
        not_seen_by: int | None = ...,
        marked: int | None = ...,
        own: bool = ...,
    ) -> int:
        """How many keys ``job`` tracks (that ``not_seen_by`` did not see, that carry
        the mark ``marked``; ``own``: not those of its key ranges)."""

    def vanished_keys(
        self, job: str, generation: int, page: int = ..., *, marked: bool = ...
    ) -> Iterator[list[str]]:
        """Pages of the keys ``generation`` did not see (``marked``: marked with it)."""

    def ordered_fingerprints(self, job: str, page: int = ...) -> Iterator[tuple[int, bytes]]:
        """``(integer key, fingerprint)`` of ``job``'s keys, in key order."""

    def mark_vanished(self, job: str, keys: Sequence[str], mark: int) -> None:
        """Mark ``keys`` of ``job`` as vanished with ``mark``."""

    def forget_fingerprints(self, job: str) -> int:
        """Forget every key of ``job``; return how many."""

    def analyze_fingerprints(self) -> None:
        """Refresh the database's statistics of the fingerprints (PostgreSQL)."""

    def generation(self, job: str) -> int | None:
        """The generation of ``job``'s last run (``None`` before its first)."""

    def fingerprint_tables(self) -> tuple[str, str, str] | None:
        """On PostgreSQL, the fingerprints' and the meta table's schema-qualified names
        (for a source that can read them, see :mod:`loader.dbdiff`) and the database
        they are in; else ``None``."""


class StateStore(
    FingerprintStore,
    LockStore,
    CheckpointStore,
    CutStore,
    RunLog,
    DeadLetterStore,
    SlotStore,
    AlertStore,
    Protocol,
):
    """What the runner and the CLI need from a state store: every concern, and closing.

    :class:`~loader.state.store.SqlStateStore` is safe to share between threads: each
    call takes its own connection and transaction.
    """

    def close(self) -> None:
        """Release the store's connections; the store is not used afterwards."""
