"""Log lines: which run they belong to, in text or JSON, secrets masked.

Every thread a run starts runs in a copy of the run's context, so a formatter can put
the run id on each line without passing it around.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import datetime
from typing import TextIO

from loader.redact import mask_registered

#: The run id of the run in progress in this context (for log lines).
RUN_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("loader_run_id", default=None)

#: The accepted values of ``--log-format``: auto is JSON off a terminal, text on one.
LOG_FORMATS = ("auto", "text", "json")


class LogFormatter(logging.Formatter):
    """Text or JSON lines, each with the run id when there is one, secrets masked."""

    def __init__(self, as_json: bool) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        """One line for ``record``: a JSON object (ts, level, logger, message, run_id,
        error) or ``time LEVEL logger [run ID]: message``; registered secrets masked."""
        run_id = RUN_ID.get()
        if self.as_json:
            data = {
                "ts": datetime.fromtimestamp(record.created).astimezone().isoformat(),
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": record.getMessage(),
            }
            if run_id:
                data["run_id"] = run_id
            if record.exc_info:
                data["error"] = self.formatException(record.exc_info)
            return mask_registered(json.dumps(data))
        text = super().format(record)
        if run_id and "run=" not in text:
            text = text.replace(": ", f" [run {run_id}]: ", 1)
        return mask_registered(text)


class _StreamHandler(logging.StreamHandler[TextIO]):
    """A stream handler for which a reader gone away (``loader clock | head``) is not
    an error: the line is dropped, without logging's "--- Logging error ---" traceback."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        """Drop ``record`` quietly if the stream's pipe is closed; else as logging does."""
        if isinstance(sys.exc_info()[1], BrokenPipeError):
            return
        super().handleError(record)


def configure_logging(level: int, stream: TextIO, log_format: str = "auto") -> None:
    """Send every log record at ``level`` or above to ``stream``, replacing any handler
    set before. ``log_format`` is one of :data:`LOG_FORMATS`."""
    as_json = log_format == "json" or (log_format == "auto" and not stream.isatty())
    handler = _StreamHandler(stream)
    handler.setFormatter(LogFormatter(as_json))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    quiet_libraries()


def quiet_libraries() -> None:
    """httpx logs each request's full URL at INFO, query string (and any key in it)
    included: loader reports requests itself, redacted."""
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
