"""Log lines a platform can read: named events with fields, in text, JSON or logfmt.

Every line loader writes is an *event*: a fixed name (``run.ended``) and fields
(``job``, ``run_id``, ``rows``, ``status``, ``duration_s``, ``error``, ...), logged with
:func:`event`. Field values are JSON scalars: strings, numbers, booleans or null;
datetimes as ISO 8601, a cursor position as its values joined by commas, an error as
its message. The README's "Logs" section lists every event.

One formatter renders a record in one of three forms, each one line per event
(a traceback, kept for ``run.crashed`` and the like, is a field of its own):

- ``text`` for a terminal: ``2026-12-04 10:00:00,123 INFO run.ended job=orders rows=10 ...``
- ``json``: ``{"ts": ..., "level": "info", "event": "run.ended", "logger": "loader",
  "job": "orders", ...}``
- ``logfmt`` (Heroku's idiom): ``at=info event=run.ended job=orders rows=10 ...``

Registered secrets are masked in every form. Every thread a run starts runs in a copy
of the run's context, so each line of a run carries its ``run_id`` without passing it.
"""

from __future__ import annotations

import contextvars
import enum
import json
import logging
import re
import sys
from collections.abc import Mapping
from datetime import date, datetime, time
from pathlib import PurePath
from typing import Any, TextIO

from loader.redact import mask_registered

#: The run id of the run in progress in this context (for log lines).
RUN_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("loader_run_id", default=None)

#: The accepted values of ``--log-format``: auto is text on a terminal, JSON off one.
LOG_FORMATS = ("auto", "text", "json", "logfmt")

#: The accepted values of ``--log-level``, and the level each means.
LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

#: A field value as logged.
Scalar = str | int | float | bool | None

# The attributes of a LogRecord that event() sets.
_EVENT, _FIELDS = "event", "fields"


def event(
    logger: logging.Logger,
    name: str,
    level: int = logging.INFO,
    *,
    exc_info: bool = False,
    **fields: Any,
) -> None:
    """Log the event ``name`` with ``fields`` at ``level`` on ``logger``. Fields that
    are ``None`` are left out; the others become scalars (:func:`scalar`). The run id
    of the run in progress (:data:`RUN_ID`) is added unless given. With ``exc_info``, the
    exception being handled goes in a ``traceback`` field.

    The record's message is ``name key=value ...``, so a plain formatter shows it too."""
    if not logger.isEnabledFor(level):
        return
    run_id = RUN_ID.get()
    if run_id and fields.get("run_id") is None:
        fields = {"run_id": run_id, **fields}
    values = {key: scalar(value) for key, value in fields.items() if value is not None}
    logger.log(
        level,
        "%s",
        name + "".join(f" {key}={_logfmt_value(value)}" for key, value in values.items()),
        exc_info=exc_info,
        extra={_EVENT: name, _FIELDS: values},
        stacklevel=2,
    )


def scalar(value: Any) -> Scalar:
    """``value`` as a JSON scalar: never a Python repr (``datetime.datetime(...)``,
    ``None`` in a sentence, a tuple's parentheses)."""
    if value is None or isinstance(value, bool | int | str):
        return value.value if isinstance(value, enum.Enum) else value
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, enum.Enum):
        return scalar(value.value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, BaseException):
        return str(value) or type(value).__name__
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, list | tuple | set | frozenset):
        return ",".join(str(scalar(item)) for item in value)
    return str(value)


def record_fields(record: logging.LogRecord) -> tuple[str, dict[str, Scalar]]:
    """The event name and fields of ``record``; a record not logged by :func:`event`
    (a library's) is the event ``log`` with its ``logger`` and its text as ``message``."""
    name = getattr(record, _EVENT, None)
    fields: Mapping[str, Scalar] = getattr(record, _FIELDS, None) or {}
    values: dict[str, Scalar] = {}
    run_id = RUN_ID.get()
    if run_id and "run_id" not in fields:
        values["run_id"] = run_id
    if name is None:
        name, values["logger"], values["message"] = "log", record.name, record.getMessage()
    values.update(fields)
    return name, {key: _masked(value) for key, value in values.items()}


def _masked(value: Scalar) -> Scalar:
    return mask_registered(value) if isinstance(value, str) else value


class LogFormatter(logging.Formatter):
    """One line per record in ``text``, ``json`` or ``logfmt`` (see the module
    docstring), registered secrets masked."""

    def __init__(self, log_format: str) -> None:
        super().__init__()
        self.log_format = log_format

    def format(self, record: logging.LogRecord) -> str:
        """``record`` as one line (text adds a traceback on the lines after)."""
        name, fields = record_fields(record)
        trace = mask_registered(self.formatException(record.exc_info)) if record.exc_info else None
        if self.log_format == "json":
            data: dict[str, Scalar] = {
                "ts": datetime.fromtimestamp(record.created).astimezone().isoformat(),
                "level": record.levelname.lower(),
                "event": name,
                "logger": record.name,
            }
            data.update({k: v for k, v in fields.items() if k not in data})
            if trace:
                data["traceback"] = trace
            return json.dumps(data)
        pairs = " ".join(f"{key}={_logfmt_value(value)}" for key, value in fields.items())
        if self.log_format == "logfmt":
            head = f"at={record.levelname.lower()} event={name}"
            tail = f" traceback={_logfmt_value(trace)}" if trace else ""
            return f"{head} {pairs}{tail}".replace("  ", " ").rstrip()
        line = f"{self.formatTime(record)} {record.levelname} {name} {pairs}".rstrip()
        return f"{line}\n{trace}" if trace else line


# Control characters (C0, DEL, C1) and the Unicode line and paragraph separators.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# What a bare logfmt value cannot hold.
_NEEDS_QUOTES = re.compile(r'[ ="\\\x00-\x1f\x7f-\x9f\u2028\u2029]')


def _logfmt_value(value: Scalar) -> str:
    """``value`` as logfmt writes it: bare when it can be, else in double quotes with
    quotes, backslashes and line breaks escaped, and any other control character as
    ``\\u001b`` (a value cannot start a line of its own, nor steer a terminal); null
    as nothing."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if text and not _NEEDS_QUOTES.search(text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return '"' + _CONTROL.sub(lambda m: f"\\u{ord(m.group(0)):04x}", escaped) + '"'


class _StreamHandler(logging.StreamHandler[TextIO]):
    """A stream handler for which a reader gone away (``loader clock | head``) is not
    an error: the line is dropped, without logging's "--- Logging error ---" traceback."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        """Drop ``record`` quietly if the stream's pipe is closed; else as logging does."""
        if isinstance(sys.exc_info()[1], BrokenPipeError):
            return
        super().handleError(record)


def resolve_format(log_format: str, stream: TextIO) -> str:
    """``log_format`` (one of :data:`LOG_FORMATS`) with ``auto`` decided: text on a
    terminal, JSON off one (a platform's log collector)."""
    if log_format != "auto":
        return log_format
    return "text" if stream.isatty() else "json"


def configure_logging(level: int, stream: TextIO, log_format: str = "auto") -> None:
    """Send every log record at ``level`` or above to ``stream``, replacing any handler
    set before. ``log_format`` is one of :data:`LOG_FORMATS`."""
    handler = _StreamHandler(stream)
    handler.setFormatter(LogFormatter(resolve_format(log_format, stream)))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    quiet_libraries()


def quiet_libraries() -> None:
    """httpx logs each request's full URL at INFO, query string (and any key in it)
    included: loader reports requests itself, redacted."""
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
