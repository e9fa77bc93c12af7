"""Reading, sending and committing overlap, in order.

One reader thread builds batches, up to ``concurrency`` sender threads post them, and
the calling thread commits acknowledged batches in the order they were read. At most
``concurrency`` batches are between read and committed, so a crash re-sends at most that
many. Per-row requests to the same URL go one after the other, in order; requests to
different URLs go concurrently.
"""

from __future__ import annotations

import contextlib
import contextvars
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from loader.batching import Batch
from loader.delivery import Rejected
from loader.errors import ConnectionLostError
from loader.retry import Interrupted, StopSignal

#: Deliver one batch (rows, body, scope, stop signal, per-row URL, the body's idempotency
#: key if already computed); return its rejections.
Send = Callable[[list[bytes], bytes, str, StopSignal, str | None, str | None], Rejected]
#: Record batches acknowledged in order (their dead letters and the checkpoint).
Commit = Callable[[list[tuple[Batch, Rejected]]], None]

_DONE = object()


@dataclass
class _SourceLost:
    """The reader's connection to the database dropped: what it queued still goes out."""

    error: ConnectionLostError


class AnyEvent:
    """Set when any of its events is: the run's stop signal, the pipeline's own halt, a
    lost lock. The last event is the one waited on (the others are polled).

    ``threading`` cannot wait on several events at once, hence the polling every 50 ms.
    """

    def __init__(self, *events: threading.Event) -> None:
        self._events = events

    def is_set(self) -> bool:
        """True when any event is set."""
        return any(event.is_set() for event in self._events)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until any event is set, at most ``timeout`` seconds; return ``is_set()``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            remaining = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
            if remaining <= 0:
                return False
            self._events[-1].wait(remaining)
        return True


@dataclass
class _Item:
    """A batch on its way to a sender. ``after`` is set when the previous request to the
    same per-row URL is finished; ``done`` is set when this one is."""

    batch: Batch
    scope: str
    after: threading.Event | None = None
    done: threading.Event | None = None


class Pipeline:
    """Delivers batches with ``send`` from ``concurrency`` threads and hands them to
    ``commit`` in read order. ``stop`` ends it between batches (interrupted); ``lost``
    (the run's lock was lost) halts it too.

    One instance delivers one stream of batches: :meth:`run` is called once, from the
    thread that commits.
    """

    def __init__(
        self,
        concurrency: int,
        send: Send,
        commit: Commit,
        stop: threading.Event,
        lost: threading.Event,
    ) -> None:
        self.send_batch = send
        self.commit = commit
        self.stop = stop
        self.halt = threading.Event()
        self.signal = AnyEvent(stop, self.halt, lost)
        self.concurrency = concurrency
        self.window = threading.Semaphore(concurrency)
        self.finished: dict[int, tuple[Batch, Rejected]] = {}  # delivered, not committed
        self.next_seq = 1  # the next batch to commit
        self.todo: queue.Queue[_Item | None] = queue.Queue()
        self.last_to: dict[str, threading.Event] = {}  # per URL, its latest request's end
        self.done: queue.Queue[Any] = queue.Queue()
        self.interrupted = False

    def run(self, produced: Iterator[tuple[Batch, str]]) -> bool:
        """Deliver every batch of ``produced`` (each with its idempotency scope) and
        commit them in read order; return True if ``stop`` ended it early.

        Raises the first error of the reader, a sender or ``commit``, after every thread
        has ended; batches after a failed one are not committed. A lost connection to
        the database (:class:`ConnectionLostError`) ends the reading only: the batches
        read before it are still delivered and committed, then it is raised.
        """
        threads = self._start(produced)
        error: BaseException | None = None
        lost: ConnectionLostError | None = None
        running = len(threads)
        try:
            while running:
                # Everything finished meanwhile goes into one commit: when committing is
                # the slow part, groups grow (up to the window) instead of queueing.
                for item in self._finished():
                    if item is _DONE:
                        running -= 1
                    elif isinstance(item, _SourceLost):
                        lost = item.error
                    elif isinstance(item, BaseException):
                        error = self._commit(self._in_order(), error)  # what came before it
                        error = error or item
                        self.halt.set()
                    else:
                        self.finished[item[0].seq] = item
                error = self._commit(self._in_order(), error)
        finally:
            self.halt.set()
            for thread in threads:
                thread.join()
        if error is not None:
            raise error
        if lost is not None and not self.interrupted:
            raise lost
        return self.interrupted

    def _in_order(self) -> list[tuple[Batch, Rejected]]:
        """The finished batches that follow the last one committed, in read order."""
        group = []
        while self.next_seq in self.finished:
            group.append(self.finished.pop(self.next_seq))
            self.next_seq += 1
        return group

    def _finished(self) -> list[Any]:
        """What the threads reported: at least one item (waiting for it), then every
        other one already there."""
        items = [self.done.get()]
        with contextlib.suppress(queue.Empty):
            while True:
                items.append(self.done.get_nowait())
        return items

    def _start(self, produced: Iterator[tuple[Batch, str]]) -> list[threading.Thread]:
        # Each thread runs in a copy of this context, so its log lines carry the run id.
        def thread(target: Callable[..., None], name: str, *args: Any) -> threading.Thread:
            context = contextvars.copy_context()
            return threading.Thread(target=context.run, args=(target, *args), name=name)

        threads = [thread(self.read, "loader-read", produced)]
        threads += [thread(self.send, f"loader-send-{i}") for i in range(self.concurrency)]
        for started in threads:
            started.start()
        return threads

    def _commit(
        self, group: list[tuple[Batch, Rejected]], error: BaseException | None
    ) -> BaseException | None:
        """Commit ``group`` unless an error came first; free its window slots.

        Slots are freed only after the commit: the window bounds what is read but not
        yet committed, which is what a crash would send again.
        """
        if group and error is None:
            try:
                self.commit(group)
            except BaseException as exc:
                error = exc
                self.halt.set()
        for _ in group:
            self.window.release()
        return error

    def read(self, produced: Iterator[tuple[Batch, str]]) -> None:
        """The reader thread: queue each batch once a window slot is free."""
        try:
            for item in produced:
                while not self.window.acquire(timeout=0.05):
                    if self.signal.is_set():
                        break
                if self.signal.is_set():
                    self.interrupted = self.interrupted or self.stop.is_set()
                    break
                self.todo.put(self.ordered(*item))
        except ConnectionLostError as exc:
            self.done.put(_SourceLost(exc))
        except BaseException as exc:
            self.done.put(exc)
        finally:
            for _ in range(self.concurrency):
                self.todo.put(None)
            self.done.put(_DONE)

    def ordered(self, batch: Batch, scope: str) -> _Item:
        """The item for ``batch``, chained after the previous request to its URL."""
        if batch.url is None:
            return _Item(batch, scope)
        if len(self.last_to) > 4 * self.concurrency:  # forget requests long finished
            self.last_to = {url: e for url, e in self.last_to.items() if not e.is_set()}
        done = threading.Event()
        after = self.last_to.get(batch.url)
        self.last_to[batch.url] = done
        return _Item(batch, scope, after, done)

    def send(self) -> None:
        """A sender thread: deliver queued items until the reader is done."""
        while (item := self.todo.get()) is not None:
            try:
                self.send_one(item)
            finally:
                if item.done is not None:
                    item.done.set()
        self.done.put(_DONE)

    def send_one(self, item: _Item) -> None:
        """Deliver one item, after the previous request to its URL has ended."""
        batch = item.batch
        # Items are taken in order, so the one this waits for is already being sent.
        while item.after is not None and not item.after.wait(0.05):
            if self.signal.is_set():
                break
        if self.signal.is_set():
            self.interrupted = self.interrupted or self.stop.is_set()
            return
        try:
            rejected = self.send_batch(
                batch.rows, batch.body, item.scope, self.signal, batch.url, batch.key
            )
        except Interrupted:
            self.interrupted = True
            return
        except BaseException as exc:
            # Halt now, before the next request to this URL is let go (it waits on this
            # one's end): the run stops at its first failure.
            self.halt.set()
            self.done.put(exc)
            return
        self.done.put((batch, rejected))
