"""Re-sending dead letters: the rows an endpoint rejected, kept by earlier runs."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loader import defaults
from loader.delivery import Counters, Delivery, framing_for, open_sink
from loader.encoding import UrlFiller, loads
from loader.errors import JobConfigError, RejectedError
from loader.job import Job
from loader.lease import held
from loader.retry import Interrupted
from loader.state import StateStore, open_state

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("loader")


@dataclass(frozen=True)
class ReplayResult:
    """How many dead letters were delivered (and removed) and how many are still refused."""

    delivered: int
    rejected: int


def replay_dead_letters(
    job: Job,
    *,
    state: StateStore | None = None,
    stop: threading.Event | None = None,
    sleep: Callable[[float], None] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> ReplayResult:
    """Send each of ``job``'s dead letters again, one row per request, oldest first.

    A row the endpoint accepts leaves the dead-letter table; one it rejects again stays,
    with the new status and excerpt. Retryable failures follow the job's retry policy;
    when they run out, :class:`RetriesExhaustedError` stops the replay. The job's lock is
    held throughout (:class:`JobLockedError` if a run holds it), so two replays never
    send a letter twice. ``stop`` ends the replay between letters and wakes retry waits.
    """
    filler = None
    if job.target.per_row and job.target.placeholders:
        hidden = [name for name in job.target.placeholders if name in job.target.omit]
        if hidden:
            raise JobConfigError([
                f"target.omit: job {job.name!r} keeps dead letters as request bodies, which "
                f"lack {', '.join(hidden)}, so their URLs cannot be rebuilt; remove those "
                "columns from target.omit to replay future dead letters"
            ])  # fmt: skip
        filler = UrlFiller(job.target.url, job.target.placeholders)
    store = state if state is not None else open_state()
    try:
        with held(store, job.name, f"replay-{uuid.uuid4().hex[:8]}", defaults.LOCK_TTL):
            return _replay(job, store, stop or threading.Event(), sleep, transport, filler)
    finally:
        if state is None:
            store.close()


def _replay(
    job: Job,
    store: StateStore,
    stop: threading.Event,
    sleep: Callable[[float], None] | None,
    transport: httpx.BaseTransport | None,
    filler: UrlFiller | None,
) -> ReplayResult:
    """Send each letter once more (see :func:`replay_dead_letters`), under the lock."""
    redactor = job.redactor()
    frame = framing_for(job)
    delivered = rejected = 0
    with open_sink(job, redactor, frame, transport) as sink:
        delivery = Delivery(job, sink, frame, Counters(), redactor, sleep)
        for letter in store.dead_letters(job.name):
            if stop.is_set():
                break
            # A new key per attempt: an endpoint that caches answers per key would
            # otherwise repeat its old rejection.
            scope = f"deadletter:{letter.id}:{letter.attempts}"
            try:
                delivery.send_once(letter.row, scope, stop, _url_for(job, letter.row, filler))
            except Interrupted:
                break
            except RejectedError as exc:
                rejected += 1
                store.update_dead_letter(letter.id, exc.status, exc.body_excerpt)
                log.warning("dead letter %d rejected again: %s", letter.id, exc)
                continue
            store.delete_dead_letters([letter.id])
            delivered += 1
    return ReplayResult(delivered, rejected)


def _url_for(job: Job, row: bytes, filler: UrlFiller | None) -> str | None:
    """A per-row letter's URL, its placeholders filled from the row it keeps."""
    if filler is None:
        return None
    values = loads(row)
    return filler.fill([values.get(name) for name in filler.names], 1)
