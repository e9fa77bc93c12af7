"""Log lines: which run they belong to.

Every thread a run starts runs in a copy of the run's context, so a formatter can put
the run id on each line without passing it around.
"""

from __future__ import annotations

import contextvars

#: The run id of the run in progress in this context (for log lines).
RUN_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("loader_run_id", default=None)
