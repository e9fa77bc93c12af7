"""Holding a job's lock for the length of a run.

A lease lasts ``ttl`` seconds unless renewed; :class:`LockKeeper` renews it in the
background. When the lock is taken over (:class:`~loader.errors.LockLostError`), or
renewals keep failing until the lease is about to expire, the keeper sets ``lost``: the
run stops between batches and fails without moving the checkpoint.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from loader.errors import LockLostError, StateError
from loader.logs import event
from loader.state import Lease, StateStore

log = logging.getLogger("loader")


class LockKeeper:
    """Renews ``lease`` every third of ``ttl`` in a daemon thread. A renewal that fails
    is retried until the lease is about to expire; then ``lost`` is set.

    The thread starts with the keeper; :meth:`stop` ends it. :meth:`check` may be called
    from any thread.
    """

    def __init__(self, store: StateStore, lease: Lease, ttl: float, lost: threading.Event) -> None:
        self._store = store
        self._lease = lease
        self._ttl = ttl
        self._lost = lost
        self._done = threading.Event()
        self._error: StateError | None = None
        self._thread = threading.Thread(target=self._renew, name="loader-lock", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        # A third of the ttl leaves two more chances before the lease expires; a failed
        # renewal is retried sooner. Giving up at 80% of the ttl (not 100%) sets ``lost``
        # before another run may take the lock, so this run stops first.
        renewed = time.monotonic()
        pause = self._ttl / 3
        while not self._done.wait(pause):
            try:
                self._store.renew(self._lease, ttl=self._ttl)
            except StateError as exc:
                if isinstance(exc, LockLostError) or time.monotonic() - renewed > self._ttl * 0.8:
                    self._error = exc
                    self._lost.set()
                    return
                event(log, "lock.renew_failed", logging.WARNING, error=exc, retrying=True)
                pause = self._ttl / 12
                continue
            renewed, pause = time.monotonic(), self._ttl / 3

    def check(self) -> None:
        """Raise the error that lost the lease (:class:`LockLostError`, or the last
        :class:`StateError` of renewals that failed too long); nothing if it is held."""
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """End the renewals and wait for the thread (the lease itself is released by
        the caller)."""
        self._done.set()
        self._thread.join()


@contextmanager
def held(
    store: StateStore, job: str, owner: str, ttl: float, lost: threading.Event | None = None
) -> Iterator[tuple[Lease, LockKeeper]]:
    """Take ``job``'s lock for ``owner`` (raises :class:`~loader.errors.JobLockedError`
    when another run holds it), keep it renewed while the block runs, and release it
    afterwards. ``lost`` is set if the lock is lost meanwhile; the block should stop, and
    call ``keeper.check()`` before it claims success."""
    lease = store.acquire(job, owner, ttl=ttl)
    keeper = LockKeeper(store, lease, ttl, lost or threading.Event())
    try:
        yield lease, keeper
    finally:
        keeper.stop()
        release(store, lease)


def release(store: StateStore, lease: Lease) -> None:
    """Give ``lease`` up; a failure is logged (the lease expires by itself)."""
    try:
        store.release(lease)
    except StateError as exc:
        event(log, "lock.release_failed", logging.WARNING, error=exc)
