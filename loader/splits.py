"""Whole requests an endpoint refuses for their size, and the size that went through.

An endpoint may refuse a request for how many rows (or bytes) it holds: Datasette's
insert API answers 400 "Too many rows, maximum allowed is 100", a proxy answers 413.
Bisection delivers such a batch in parts; when every part went through, the refusal was
about the size, not a row. :class:`Splits` then says so once per run (with the
endpoint's reason and the size that worked) and remembers that size, so the rest of
the run splits bigger batches before sending them rather than having each refused
first. Each part is sent under a scope derived from its batch's (see
:meth:`loader.delivery.Delivery.send_parts`), so its idempotency key is the same on
every re-send of that batch.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Protocol
from urllib.parse import urlsplit

from loader.errors import RejectedError
from loader.logs import event

log = logging.getLogger("loader")

#: Refusals of a whole request that splitting may cure (bad request, body too large).
SIZE_STATUSES = frozenset({400, 413})


class SplitCounts(Protocol):
    """Where split batches are counted (the run's counters)."""

    splits: int
    split_size: int | None


class Splits:
    """The size that went through after a whole request was refused, for one run."""

    def __init__(self, counters: SplitCounts) -> None:
        self._counters = counters
        self._lock = threading.Lock()
        self.size: int | None = None

    def learned(self, refused: int, worked: int, refusal: RejectedError) -> None:
        """A request of ``refused`` rows was refused with ``refusal`` and went through in
        parts of at most ``worked`` rows: count it, keep the smaller size, say it once."""
        if refusal.status not in SIZE_STATUSES:
            return
        with self._lock:
            first = self.size is None
            self.size = worked if self.size is None else min(self.size, worked)
            self._counters.splits += 1
            self._counters.split_size = self.size
        if first:
            event(
                log,
                "batch.split",
                logging.WARNING,
                refused=refused,
                size=worked,
                http_status=refusal.status,
                hint=notice(refusal, refused, worked),
            )

    def split_ahead(self) -> None:
        """Count a batch split before it was sent, at the size learned."""
        with self._lock:
            self._counters.splits += 1


def notice(refusal: RejectedError, refused: int, worked: int) -> str:
    """The one line a run prints when a split went through where the whole did not."""
    host = urlsplit(refusal.url or "").netloc or "the endpoint"
    return (
        f"{host} refused {refused}-row requests ({refusal.status}: "
        f"{reason(refusal.body_excerpt or '')}); split to {worked}: set batch.size to at "
        f"most {worked}"
    )


def reason(excerpt: str) -> str:
    """The endpoint's reason in an error body: its ``errors``, ``message``, ``error``
    or ``detail`` when it is JSON (Kinto's ``error`` is only the status's title), else
    the body's start."""
    try:
        body: Any = json.loads(excerpt)
    except ValueError:
        return excerpt[:200] or "(empty body)"
    for key in ("errors", "message", "error", "detail", "title"):
        found = body.get(key) if isinstance(body, dict) else None
        if isinstance(found, dict):
            found = found.get("reason") or found.get("message") or found.get("type")
        if isinstance(found, list):
            found = "; ".join(item if isinstance(item, str) else json.dumps(item) for item in found)
        if isinstance(found, str) and found:
            return found[:200]
    return excerpt[:200]
