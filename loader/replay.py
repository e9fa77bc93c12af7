"""Re-sending dead letters: the rows an endpoint rejected, kept by earlier runs."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loader import defaults
from loader.delivery import Counters, Delivery, framing_for, open_sink
from loader.encoding import UrlFiller
from loader.errors import EncodingError, RejectedError
from loader.job import Job
from loader.lease import held
from loader.letters import Unreplayable, resend
from loader.logs import event
from loader.retry import Interrupted, StopSignal
from loader.state import StateStore, open_state

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("loader")


@dataclass(frozen=True)
class ReplayResult:
    """How many dead letters were delivered (and removed), how many are still refused,
    and how many could not be sent as the job stands (kept by an older loader without a
    column the URL needs; each is logged with the reason)."""

    delivered: int
    rejected: int
    unsendable: int = 0


def replay_dead_letters(
    job: Job,
    *,
    state: StateStore | None = None,
    stop: threading.Event | None = None,
    sleep: Callable[[float], None] | None = None,
    transport: httpx.BaseTransport | None = None,
    lock_ttl: float = defaults.LOCK_TTL,
) -> ReplayResult:
    """Send each of ``job``'s dead letters again, one row per request, oldest first, as
    the job now says: its current ``target.omit``, URL template and envelope, applied to
    the row as it was read (see :mod:`loader.letters`).

    A row the endpoint accepts leaves the dead-letter table; one it rejects again stays,
    with the new status and excerpt. Retryable failures follow the job's retry policy;
    when they run out, :class:`RetriesExhaustedError` stops the replay. The job's lock is
    held throughout and renewed every third of ``lock_ttl`` (:class:`JobLockedError` if
    a run holds it), so a run or another replay never sends a letter beside this one; if
    the lock is lost anyway, the replay stops and raises :class:`LockLostError`. ``stop``
    ends the replay between letters and wakes retry waits.
    """
    filler = None
    if job.target.per_row and job.target.placeholders:
        filler = UrlFiller(job.target.url, job.target.placeholders)
    store = state if state is not None else open_state()
    lost = threading.Event()
    try:
        owner = f"replay-{uuid.uuid4().hex[:8]}"
        with held(store, job.name, owner, lock_ttl, lost) as (_, keeper):
            stopping = _Either(stop or threading.Event(), lost)
            result = _replay(job, store, stopping, sleep, transport, filler)
            keeper.check()
            return result
    finally:
        if state is None:
            store.close()


class _Either:
    """A stop signal set when either of two events is (a stop, or the lock lost)."""

    def __init__(self, first: threading.Event, second: threading.Event) -> None:
        self.first, self.second = first, second

    def is_set(self) -> bool:
        return self.first.is_set() or self.second.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        # Retry waits are short; wake on either event within a tenth of a second.
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            left = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            if left <= 0:
                return False
            self.first.wait(left)
        return True


def _replay(
    job: Job,
    store: StateStore,
    stop: StopSignal,
    sleep: Callable[[float], None] | None,
    transport: httpx.BaseTransport | None,
    filler: UrlFiller | None,
) -> ReplayResult:
    """Send each letter once more (see :func:`replay_dead_letters`), under the lock."""
    redactor = job.redactor()
    frame = framing_for(job)
    delivered = rejected = unsendable = 0
    with open_sink(job, redactor, frame, transport) as sink:
        delivery = Delivery(job, sink, frame, Counters(), redactor, sleep)
        for letter in store.dead_letters(job.name):
            if stop.is_set():
                break
            try:
                row, url = resend(job, letter, filler)
            except (Unreplayable, EncodingError) as exc:
                unsendable += 1
                event(
                    log,
                    "deadletter.not_sent",
                    logging.WARNING,
                    id=letter.id,
                    error=redactor.text(str(exc)),
                )
                continue
            # A new key per attempt: an endpoint that caches answers per key would
            # otherwise repeat its old rejection.
            scope = f"deadletter:{letter.id}:{letter.attempts}"
            try:
                delivery.send_once(row, scope, stop, url)
            except Interrupted:
                break
            except RejectedError as exc:
                rejected += 1
                store.update_dead_letter(letter.id, exc.status, exc.body_excerpt)
                event(log, "deadletter.rejected", logging.WARNING, id=letter.id, error=exc)
                continue
            store.delete_dead_letters([letter.id])
            delivered += 1
    return ReplayResult(delivered, rejected, unsendable)
