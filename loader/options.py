"""How to run a job: the options every front door passes down, as one frozen value."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from loader import defaults

if TYPE_CHECKING:
    import httpx

    from loader.result import RunResult


@dataclass(frozen=True)
class RunOptions:
    """The options of one run (see :func:`loader.run_job` for each one's meaning).

    ``stop``, ``sleep``, ``monotonic`` and ``transport`` are the seams: the stop signal,
    the retry waits, the clock durations are measured with and the HTTP transport.
    ``database_json=False`` keeps PostgreSQL from writing the rows' JSON itself (the
    fast path, :mod:`loader.pgjson`): loader encodes them, with the same bytes.
    A partitioned run hands each range these same options (with its share of ``limit``
    and without ``monitor``), so nothing given to the whole run is dropped on the way.
    """

    full_refresh: bool = False
    limit: int | None = None
    dry_run: bool = False
    preview: int = defaults.DRY_RUN_REQUESTS
    stop: threading.Event = field(default_factory=threading.Event)  # None: a fresh event
    sleep: Callable[[float], None] | None = None
    monotonic: Callable[[], float] = time.monotonic
    transport: httpx.BaseTransport | None = None
    lock_ttl: float = defaults.LOCK_TTL
    monitor: bool = True
    progress: Callable[[RunResult], None] | None = None
    database_json: bool = True

    def __post_init__(self) -> None:
        # ``stop=None`` means "no stop signal", as it always did for run_job's callers.
        if self.stop is None:
            object.__setattr__(self, "stop", threading.Event())
