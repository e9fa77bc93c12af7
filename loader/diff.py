"""Diff syncs: send only the rows whose key is new or whose body changed.

:class:`Differ` sits between the encoder and the batcher. For each fetched chunk it
takes each row's key (the JSON array of its ``source.diff.key`` columns) and the
fingerprint of its encoded body (XXH3, 128 bits), asks the state store for the
stored fingerprints of the chunk's keys in one indexed look-up (a read), and passes on
only the rows that differ. Encoding a row is the cost of comparing it (on PostgreSQL the
database writes the JSON, as for any job); sending it is not paid for unchanged rows.

Once a batch is acknowledged, :meth:`Differ.acknowledged` gives the ``(key,
fingerprint)`` of its delivered rows, which the committer writes in the transaction that
records the batch: a crash re-sends at most the batches in flight, and a rejected row's
fingerprint is never written, so it goes again when it changes (or is replayed).

Nothing per key is held in memory beyond the rows in flight; keys vanished from the
result are found in the store afterwards (see :mod:`loader.vanished`).
"""

from __future__ import annotations

import contextvars
import itertools
import operator
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import xxhash

from loader.batching import Batch, Chunk
from loader.cursor import inner_query
from loader.database import read_once
from loader.dbdiff import stored_fingerprint
from loader.delivery import Counters, Rejected
from loader.diffconfig import Diff
from loader.encoding import dumps
from loader.errors import QueryError
from loader.job import Source
from loader.redact import Redactor
from loader.source import RowStream, open_stream
from loader.state import FingerprintStore

__all__ = [
    "Differ",
    "KeyCheck",
    "check_keys",
    "fingerprint",
    "key_chunks",
    "key_text",
]


#: The fingerprint of one row's encoded body: its XXH3 128-bit digest (16 bytes). Not a
#: cryptographic hash: it tells a changed body from an unchanged one, and a run hashes
#: every row it reads, so its cost is the comparison's (0.09 s per million rows of 250
#: bytes against BLAKE2b's 0.6 s).
fingerprint: Callable[[bytes], bytes] = xxhash.xxh3_128_digest


def key_text(values: Sequence[Any]) -> str:
    """A key as it is stored: the compact JSON array of its columns' values."""
    return dumps(list(values)).decode()


def check_keys(source: Source, redactor: Redactor) -> int:
    """Refuse, before anything is sent, a result where a key repeats or has a NULL
    column: :class:`QueryError` naming the key and its value. Returns how many rows the
    result has. One aggregate query over the job's query (a second names the key, when
    there is one to name), in a read-only transaction of its own."""
    diff = source.diff
    assert diff is not None
    quote = "`" if source.url.startswith(("mysql", "mariadb")) else '"'
    columns = ", ".join(f"{quote}{name}{quote}" for name in diff.key)
    nulls = " OR ".join(f"{quote}{name}{quote} IS NULL" for name in diff.key)
    grouped = (
        f"SELECT {columns}, COUNT(*) AS loader_rows FROM (\n{inner_query(source)}\n) "
        f"AS diff_source GROUP BY {columns}"
    )
    checking = f"cannot check that source.diff.key ({', '.join(diff.key)}) is unique on "
    total, bad = read_once(
        source, redactor,
        f"SELECT SUM(loader_rows), SUM(CASE WHEN loader_rows > 1 OR {nulls} THEN 1 ELSE 0 END) "
        f"FROM ({grouped}) AS diff_keys",
        lambda result: tuple(result.one()), checking,
    )  # fmt: skip
    if not bad:
        return int(total or 0)
    row = read_once(
        source, redactor, f"{grouped} HAVING COUNT(*) > 1 OR {nulls} LIMIT 1",
        lambda result: result.first(), checking,
    )  # fmt: skip
    if row is None:  # the data changed since: the next run checks again
        raise QueryError(
            f"source.diff.key ({', '.join(diff.key)}): a key repeated or was NULL, then "
            "no longer; nothing was sent. Run again"
        )
    values, count = tuple(row[:-1]), row[-1]
    described = ", ".join(f"{n}={v!r}" for n, v in zip(diff.key, values, strict=True))
    if None in values:
        raise QueryError(
            f"source.diff.key: a row has a NULL key ({described}); a diff sync knows rows "
            "by their key and nothing was sent. Leave such rows out (WHERE ... IS NOT "
            "NULL) or give them a key in the query"
        )
    raise QueryError(
        f"source.diff.key: the key ({described}) appears in {count} rows; a diff sync "
        "needs a unique key and nothing was sent. Fix the query (GROUP BY, DISTINCT ON) "
        "or add a column to the key"
    )


class KeyCheck:
    """:func:`check_keys` running in a thread of its own, alongside the read: the first
    changed row waits for it (so nothing is sent before it passed), and so does the end
    of the read (so no delete is sent either)."""

    def __init__(self, source: Source, redactor: Redactor) -> None:
        self._error: BaseException | None = None
        self.total = 0  # the result's rows, once passed
        context = contextvars.copy_context()  # log lines keep the run id
        self._thread = threading.Thread(
            target=context.run, args=(self._run, source, redactor), name="loader-keycheck"
        )
        self._thread.start()

    def _run(self, source: Source, redactor: Redactor) -> None:
        try:
            self.total = check_keys(source, redactor)
        except BaseException as exc:
            self._error = exc

    def passed(self) -> None:
        """Wait for the check; raise its error (a :class:`QueryError` naming the key)."""
        self._thread.join()
        if self._error is not None:
            raise self._error


class Differ:
    """Filters a run's encoded chunks to its new and changed rows, for ``job`` (a job
    or key-range name) in ``store``. ``everything`` (``--full-refresh``) passes every
    row on, so that their fingerprints are rewritten. The stream must carry the key
    columns as its last ``values`` (see :func:`loader.source.open_stream`).

    When the database compared (the stream has a ``known_index``, see
    :mod:`loader.dbdiff`), every row read is new or changed, carrying its hash; the
    stored keys the result lacks come as rows without JSON, and are marked vanished.
    Otherwise, two ways to compare, chosen at the first chunk. With ``ordered`` (the query wrapped
    by :func:`loader.dbdiff.key_ordered`) and a single integer key, a merge: the stored
    fingerprints are read in key order alongside the rows, and the stored keys passed
    over are the vanished ones, marked with ``mark`` (``None``: a dry run, which only
    counts them). Otherwise, a look-up of each chunk's keys, which depends on no order.

    :meth:`watch` and :meth:`changed` run in the reader thread, :meth:`acknowledged` in
    the committing one; what they share is locked.
    """

    def __init__(
        self,
        diff: Diff,
        store: FingerprintStore,
        job: str,
        *,
        everything: bool = False,
        ordered: bool = False,
        mark: int | None = None,
        check: KeyCheck | None = None,
        known: int = 0,
    ) -> None:
        self.diff = diff
        self.store = store
        self.job = job
        self.everything = everything
        self.ordered = ordered and len(diff.key) == 1
        self.mark = mark
        self.check = check
        self._key_check = check  # kept for the result's row count
        self.matched = 0  # rows read whose key the store knew
        self.vanished = 0  # stored keys the merge passed over
        self.merged: bool | None = None  # decided at the first chunk
        self.compared = False  # the database compared (see loader.dbdiff)
        self.known = known  # keys tracked when the run started
        self._known_at: int | None = None  # where a compared row says its key was known
        self._hash_at = 0  # where a compared row has the hash of its JSON (just before)
        self._changed_known = 0  # compared rows whose key was known (so they changed)
        self._returned = 0  # rows the database returned as new or changed
        self._whole = False  # the database's result was read to its end
        self._raw: Sequence[Sequence[Any]] = ()  # the chunk last fetched
        self._indexes: list[int] = []
        self._stored: Iterator[tuple[int, bytes]] = iter(())
        self._next: tuple[int, bytes] | None = None
        self._last: int | None = None  # the merge's last key read
        self._lock = threading.Lock()
        # Each body in flight -> its (key, fingerprint), in read order (a body can repeat).
        self._in_flight: dict[bytes, deque[tuple[str, bytes]]] = {}

    def watch(self, stream: RowStream) -> RowStream:
        """``stream``, each chunk kept as it is fetched for its keys (the last
        ``value_indexes``)."""
        self._indexes = list(stream.value_indexes[-len(self.diff.key) :])
        if stream.known_index is not None:  # only new and changed rows, then the vanished
            self.compared, self.merged = True, True
            self._known_at, self._hash_at = stream.known_index, stream.known_index - 1
        return replace(stream, chunks=self._kept(stream.chunks))

    def _kept(self, chunks: Iterator[Any]) -> Iterator[Any]:
        known_at = self._known_at
        for raw in chunks:
            if known_at is not None:
                # A stored key the result lacks comes as a row without JSON.
                gone = [row[known_at] for row in raw if row[0] is None]
                if gone:
                    self._vanished(gone)
                    raw = [row for row in raw if row[0] is not None]
                self._changed_known += sum(row[known_at] is not None for row in raw)
                self._returned += len(raw)
                if not raw:
                    continue
            self._raw = raw
            yield raw
        self._whole = True

    def changed(self, chunks: Iterator[Chunk], counters: Counters) -> Iterator[Chunk]:
        """The rows of ``chunks`` (from the watched stream) whose key is new or whose
        body's fingerprint differs from the stored one; chunks left empty are dropped.
        ``counters.rows_unchanged`` counts the others. When the chunks run out, the
        stored keys the merge did not reach are vanished too."""
        taken = 0  # rows of the chunks, fewer than fetched when --limit cut the read
        try:
            for chunk in chunks:
                raw = self._raw[: len(chunk.rows)]
                taken += len(raw)
                if self.compared:  # the hash the database wrote
                    prints = [stored_fingerprint(row[self._hash_at]) for row in raw]
                else:
                    prints = list(map(fingerprint, chunk.rows))
                if self.merged is None:
                    at = self._indexes[0]
                    self.merged = self.ordered and bool(raw) and _integers(raw[0][at], raw[-1][at])
                    if self.merged:
                        self._stored = self.store.ordered_fingerprints(self.job)
                        self._next = next(self._stored, None)
                keys: Callable[[int], str]
                if self.compared:
                    keep, keys = self._compared(raw)
                elif self.merged:
                    keep, keys = self._merge(raw, prints)
                else:
                    keep, keys = self._look_up(raw, prints)
                counters.rows_unchanged += len(raw) - len(keep)
                if not keep:
                    continue
                with self._lock:
                    for i in keep:
                        self._in_flight.setdefault(chunk.rows[i], deque()).append(
                            (keys(i), prints[i])
                        )
                self._checked()
                yield _subset(chunk, keep)
            self._checked()
            if self.compared:
                # What the database did not send (known, not gone, unchanged), when every
                # row it sent was taken: a --limit run did not compare the rest.
                if self._whole and taken == self._returned:
                    unchanged = self._unchanged()
                    counters.rows_unchanged += unchanged
                    counters.rows_read += unchanged
            elif self.merged:  # the stored keys after the last row
                while self._next is not None:
                    page = [self._next[0]]
                    page += [key for key, _ in itertools.islice(self._stored, 4999)]
                    self._next = next(self._stored, None)
                    self._passed(page)
        finally:  # the stored fingerprints' cursor, if the read stopped early
            close = getattr(self._stored, "close", None)
            if close is not None:
                close()

    def _unchanged(self) -> int:
        """When the database compared: how many rows it left out as unchanged (and
        ``matched``, ``vanished``). With deletes it also returned the vanished keys;
        without, the result's row count comes from the key check."""
        if self.diff.deletes is not None or self._key_check is None:
            self.matched = self.known - self.vanished
            return max(self.matched - self._changed_known, 0)
        unchanged = max(self._key_check.total - self._returned, 0)
        self.matched = self._changed_known + unchanged
        self.vanished = max(self.known - self.matched, 0)
        return unchanged

    def _checked(self) -> None:
        if self.check is not None:
            check, self.check = self.check, None
            check.passed()

    def _compared(self, raw: Sequence[Sequence[Any]]) -> tuple[list[int], Callable[[int], str]]:
        """Rows the database compared: all changed or new (``--full-refresh``: all). A
        NULL key (which the key check saw none of: the data changed since) stops the run."""
        keys = [[row[i] for i in self._indexes] for row in raw]
        if any(None in key for key in keys):
            self._checked()
            names = ", ".join(self.diff.key)
            raise QueryError(f"source.diff.key: a row has a NULL key ({names})")
        return list(range(len(raw))), list(map(key_text, keys)).__getitem__

    def _look_up(
        self, raw: Sequence[Sequence[Any]], prints: list[bytes]
    ) -> tuple[list[int], Callable[[int], str]]:
        """Compare ``raw`` with the fingerprints stored for its keys."""
        keys = [key_text([row[i] for i in self._indexes]) for row in raw]
        if len(set(keys)) != len(keys):  # check_keys saw none: the data changed since
            key = next(k for k in keys if keys.count(k) > 1)
            raise QueryError(f"source.diff.key: the key {key} appears twice in the result")
        stored = self.store.seen_fingerprints(self.job, keys)
        self.matched += len(stored)
        everything = self.everything
        keep = [i for i, key in enumerate(keys) if everything or stored.get(key) != prints[i]]
        return keep, keys.__getitem__

    def _merge(
        self, raw: Sequence[Sequence[Any]], prints: list[bytes]
    ) -> tuple[list[int], Callable[[int], str]]:
        """Compare ``raw`` (ascending integer keys) with the stored fingerprints read
        in key order; mark the stored keys passed over as vanished."""
        at = self._indexes[0]
        values = [row[at] for row in raw]
        last = self._last
        try:
            ascending = not values or (
                _integers(values[0], values[-1])
                and not any(map(operator.ge, values, values[1:]))
                and (last is None or values[0] > last)
            )
        except TypeError:  # a NULL or another type among the integers
            ascending = False
        if not ascending:
            self._checked()  # its error names the repeated or NULL key
            raise QueryError(
                "source.diff.key: the rows did not come in ascending order of the integer "
                f"key {self.diff.key[0]!r} (a repeated key, or a key of another type)"
            )
        keep, passed, stored, everything = [], [], self._next, self.everything
        for i, value in enumerate(values):
            while stored is not None and stored[0] < value:
                passed.append(stored[0])
                stored = next(self._stored, None)
            if stored is not None and stored[0] == value:
                self.matched += 1
                if everything or stored[1] != prints[i]:
                    keep.append(i)
                stored = next(self._stored, None)
            else:
                keep.append(i)
        self._next = stored
        if values:
            self._last = values[-1]
        self._passed(passed)
        return keep, lambda i: f"[{values[i]}]"

    def _passed(self, keys: list[int]) -> None:
        """Count the integer ``keys`` vanished, and mark them so (not on a dry run)."""
        self._vanished([f"[{key}]" for key in keys])

    def _vanished(self, keys: list[str]) -> None:
        """Count ``keys`` (as stored) vanished, and mark them so (not on a dry run)."""
        self.vanished += len(keys)
        if keys and self.mark is not None:
            self.store.mark_vanished(self.job, keys, self.mark)

    def acknowledged(self, group: Sequence[tuple[Batch, Rejected]]) -> list[tuple[str, bytes]]:
        """The ``(key, fingerprint)`` of each delivered row of ``group`` (acknowledged,
        in read order); rejected rows are left out, and every row leaves the in-flight
        record."""
        delivered: list[tuple[str, bytes]] = []
        with self._lock:
            for batch, rejected in group:
                refused: dict[bytes, int] = {}
                for row, _error in rejected:
                    refused[row] = refused.get(row, 0) + 1
                for row in batch.rows:
                    waiting = self._in_flight[row]
                    key, print_ = waiting.popleft()
                    if not waiting:
                        del self._in_flight[row]
                    if refused.get(row):
                        refused[row] -= 1
                    else:
                        delivered.append((key, print_))
        return delivered


def key_chunks(source: Source, redactor: Redactor) -> Iterator[list[str]]:
    """The keys of the query's result (as stored), a fetch at a time, read again in a
    read-only transaction of their own: for finding the vanished keys."""
    diff = source.diff
    assert diff is not None
    quote = "`" if source.url.startswith(("mysql", "mariadb")) else '"'
    columns = ", ".join(f"{quote}{name}{quote}" for name in diff.key)
    query = f"SELECT {columns} FROM (\n{inner_query(source)}\n) AS diff_keys"
    config = source.model_copy(update={"query": query})
    with open_stream(config, redactor, fast=False) as stream:
        for raw in stream.chunks:
            yield [key_text(row) for row in raw]


def _integers(first: Any, last: Any) -> bool:
    """Whether ascending keys from ``first`` to ``last`` are integers a BIGINT holds
    (a column's keys share a type; comparing an int with another type raises)."""
    return type(first) is int and type(last) is int and -(2**63) <= first <= last < 2**63


def _subset(chunk: Chunk, keep: list[int]) -> Chunk:
    """The rows of ``chunk`` at the indexes ``keep``, with their markers, URLs and
    omitted columns."""
    if len(keep) == len(chunk.rows):
        return chunk
    omitted = chunk.omitted
    return Chunk(
        [chunk.rows[i] for i in keep],
        lambda j: chunk.marker(keep[j]),
        [chunk.urls[i] for i in keep] if chunk.urls is not None else None,
        (lambda j: omitted(keep[j])) if omitted is not None else None,
    )
