"""A diff sync's deletes: one request per key gone from the query's result.

Run by the runner after every row of the run was read without error and every batch was
acknowledged. When fewer tracked keys were read than were known, the result's keys are
read again and marked seen in the state store, and the keys left unmarked are the
vanished ones (see :mod:`loader.state.fingerprints`). If there are more than
``source.diff.max_deletes`` allows, :class:`TooManyDeletesError` stops the run before a
single delete is sent (checked on the count first, then on the keys found), since a
broken query or an emptied table must not wipe the destination. Otherwise each key goes
out through the same :class:`~loader.delivery.Delivery` and
:class:`~loader.pipeline.Pipeline` as rows (retries, Retry-After, time-outs, masked
secrets), and its fingerprint is dropped once the endpoint acknowledged the delete; a 404
or 410 answer counts as done (the row is gone already). A rejected delete keeps its key,
so the next run tries it again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

from loader.batching import Batch, Chunk, singles
from loader.delivery import Counters, Delivery, Rejected, framing_for, open_sink
from loader.diff import key_chunks
from loader.diffconfig import Diff
from loader.encoding import UrlFiller, dumps, loads
from loader.errors import SinkError
from loader.fields import url_placeholders
from loader.job import Job
from loader.logs import event
from loader.options import RunOptions
from loader.pipeline import Pipeline
from loader.state import Lease, StateStore

__all__ = ["TooManyDeletesError", "delete_job", "send_deletes", "would_delete"]

log = logging.getLogger("loader")


class TooManyDeletesError(SinkError):
    """More keys vanished from the result than ``source.diff.max_deletes`` allows; no
    delete was sent (exit code 4, like a delivery failure, and an alert)."""


def delete_job(job: Job) -> Job:
    """``job`` with its target turned into the deletes' one: per-row requests to
    ``source.diff.deletes.url`` with its method, everything else (headers, auth, retries,
    time-outs, TLS) kept; 404 and 410 count as success."""
    diff = job.source.diff
    assert diff is not None and diff.deletes is not None
    target = job.target.model_copy(
        update={
            "url": diff.deletes.url, "method": diff.deletes.method, "per_row": True,
            "omit": (), "body": None, "lines": (), "envelope": None, "format": "json",
            "item_errors": None, "item_results": None, "row_id": None, "gzip": False,
            "statuses": {**job.target.statuses, 404: "success", 410: "success"},
        }
    )  # fmt: skip
    return job.model_copy(update={"target": target})


def _check_breaker(diff: Diff, name: str, vanished: int, known: int) -> None:
    limit = diff.delete_limit(known)
    if vanished > limit:
        raise TooManyDeletesError(
            f"job {name!r}: {vanished} of {known} keys vanished from the result, more than "
            f"source.diff.max_deletes ({diff.max_deletes}, {limit} keys) allows; no delete "
            "was sent. If the query is right, raise max_deletes for one run, or run "
            f"`loader state reset {name}` to forget the keys (the next run sends every row)",
            url=diff.deletes.url if diff.deletes else "",
        )


def would_delete(job: Job, known: int, matched: int) -> int:
    """How many deletes a dry run would send (``known`` keys tracked before it, of which
    it read ``matched``); :class:`TooManyDeletesError` as a real run would."""
    diff = job.source.diff
    assert diff is not None
    if diff.deletes is None:
        return 0
    _check_breaker(diff, job.name, known - matched, known)
    return known - matched


def send_deletes(
    job: Job,
    store: StateStore,
    lease: Lease,
    run_id: str,
    seen: tuple[int, int, int, int | None],
    counters: Counters,
    options: RunOptions,
    lost: threading.Event,
) -> bool:
    """Send a delete for each key of ``job`` gone from the result, once the breaker
    allowed them; drop each acknowledged key's fingerprint. ``seen`` is the run's
    generation, the keys tracked when it started, how many of them it read and, when it
    merged (see :class:`~loader.diff.Differ`), how many it marked vanished. Returns True
    if ``options.stop`` ended it early. Raises :class:`TooManyDeletesError` before any
    delete, and delivery errors."""
    diff = job.source.diff
    assert diff is not None
    generation, known, matched, merged = seen
    if diff.deletes is None or known <= matched:
        return False
    _check_breaker(diff, job.name, known - matched, known)
    redactor = job.redactor()
    if merged is not None:
        vanished = merged
        pages = store.vanished_keys(job.name, -generation, marked=True)
    else:
        # Which keys vanished: those the result's keys, read again, do not mark seen.
        for keys in key_chunks(job.source, redactor):
            store.mark_seen(job.name, keys, generation)
        vanished = store.fingerprint_count(job.name, not_seen_by=generation)
        _check_breaker(diff, job.name, vanished, known)
        pages = store.vanished_keys(job.name, generation)
    event(log, "diff.deletes", job=job.name, run_id=run_id, keys=vanished)
    target_job = delete_job(job)
    frame = framing_for(target_job)

    def commit(group: list[tuple[Batch, Rejected]]) -> None:
        """Drop the fingerprints of the keys whose delete was acknowledged."""
        done = [batch.position for batch, rejected in group if not rejected]
        store.record_batch(lease, run_id, fingerprint=job.fingerprint(), position=None,
                           ttl=options.lock_ttl, diffed=(generation, (), done))  # fmt: skip
        counters.rows_deleted += len(done)

    with open_sink(target_job, redactor, frame, options.transport) as sink:
        delivery = Delivery(target_job, sink, frame, counters, redactor, options.sleep)
        batches = singles(_requests(diff, pages), frame, max_bytes=job.batch.max_bytes)
        pipeline = Pipeline(job.concurrency, delivery.send, commit, options.stop, lost)
        return pipeline.run((batch, f"delete:{run_id}:{batch.seq}") for batch in batches)


def _requests(diff: Diff, pages: Iterator[list[str]]) -> Iterator[Chunk]:
    """The vanished keys as chunks of per-row requests: each row the key as a JSON object
    (the body of a POST, PUT or PATCH), its URL filled from the key, its marker the key."""
    assert diff.deletes is not None
    filler = UrlFiller(diff.deletes.url, url_placeholders(diff.deletes.url))
    number = 0
    for page in pages:
        rows, urls = [], []
        for key in page:
            number += 1
            values = dict(zip(diff.key, loads(key.encode()), strict=True))
            rows.append(dumps(values))
            urls.append(filler.fill([values[n] for n in filler.names], number))
        yield Chunk(rows, page.__getitem__, urls)
