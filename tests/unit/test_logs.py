"""The log formats: named events with scalar fields, in text, JSON and logfmt, read
back; no Python reprs; secrets masked in each; the README lists every event."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from loader.logs import RUN_ID, LogFormatter, configure_logging, event
from loader.redact import register_secrets
from loader.result import Status
from tests.support.logs import parse_logfmt

ROOT = Path(__file__).resolve().parents[2]
WHEN = datetime(2026, 12, 4, 10, 0, 0, tzinfo=UTC)


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, list[logging.LogRecord]]]:
    """A logger whose records are kept, for formatting in each format."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("loader.test_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, records
    logger.removeHandler(handler)


def lines(record: logging.LogRecord) -> dict[str, str]:
    """``record`` in each format."""
    return {name: LogFormatter(name).format(record) for name in ("text", "json", "logfmt")}


def test_fields_are_scalars_never_reprs(
    logged: tuple[logging.Logger, list[logging.LogRecord]],
) -> None:
    """Datetimes, cursor tuples, enums, errors and None become plain values or vanish."""
    logger, records = logged
    event(logger, "run.started", job="orders", after=(WHEN, 5128), status=Status.FAILED,
          error=ValueError("boom"), rows=3, duration_s=1.23456, skipped=None)  # fmt: skip

    out = lines(records[0])
    data = json.loads(out["json"])
    assert data["after"] == "2026-12-04T10:00:00+00:00,5128"
    assert (data["status"], data["error"], data["rows"], data["duration_s"]) == (
        "failed",
        "boom",
        3,
        1.235,
    )
    assert "skipped" not in data
    for text in out.values():
        assert "datetime.datetime" not in text and "None" not in text and "(" not in text


def test_json_is_one_object_with_the_fields_at_the_top(
    logged: tuple[logging.Logger, list[logging.LogRecord]],
) -> None:
    """A JSON line has ts, level, event, logger, the fields, and the run id in context."""
    logger, records = logged
    token = RUN_ID.set("abc123")
    try:
        event(logger, "run.ended", logging.WARNING, job="orders", rows=10, status="partial")
    finally:
        RUN_ID.reset(token)

    data = json.loads(LogFormatter("json").format(records[0]))
    assert data["level"] == "warning" and data["event"] == "run.ended"
    assert data["logger"] == "loader.test_logs" and datetime.fromisoformat(data["ts"])
    assert (data["run_id"], data["job"], data["rows"], data["status"]) == (
        "abc123",
        "orders",
        10,
        "partial",
    )


def test_logfmt_quotes_what_needs_it_and_reads_back(
    logged: tuple[logging.Logger, list[logging.LogRecord]],
) -> None:
    """Spaces, quotes, backslashes and line breaks are quoted and escaped; the line
    parses back to the same values; booleans are true/false."""
    logger, records = logged
    awkward = 'said "no" to C:\\tmp\nthen left'
    event(logger, "row.rejected", logging.WARNING, error=awkward, plain="ok", retrying=True)

    line = LogFormatter("logfmt").format(records[0])
    assert "\n" not in line and line.startswith("at=warning event=row.rejected ")
    parsed = parse_logfmt(line)
    assert (parsed["error"], parsed["plain"], parsed["retrying"]) == (awkward, "ok", "true")


def test_a_value_cannot_forge_a_line_or_steer_a_terminal(
    logged: tuple[logging.Logger, list[logging.LogRecord]],
) -> None:
    """A job name or an error holding a line break, a vertical tab, a form feed, NEL,
    U+2028 or a terminal escape stays on its line in every format, reads back whole,
    and no control character reaches the output raw."""
    logger, records = logged
    forged = "x\n2026-12-04 10:00:00,000 INFO run.ended job=orders status=succeeded"
    error = "a\x0bb\x0cc\x85d\u2028e\x1b[2J\x1b]0;owned\x07f"
    event(logger, "run.ended", logging.WARNING, job=forged, error=error)

    out = lines(records[0])
    for name, line in out.items():
        assert len(line.splitlines()) == 1, (name, line)
        assert not re.search(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", line), (name, line)
    parsed = parse_logfmt(out["logfmt"])
    assert (parsed["job"], parsed["error"]) == (forged, error)
    assert json.loads(out["json"])["error"] == error


def test_text_is_time_level_event_and_pairs(
    logged: tuple[logging.Logger, list[logging.LogRecord]],
) -> None:
    """A text line reads ``time LEVEL event key=value ...``."""
    logger, records = logged
    event(logger, "clock.slot_skipped", logging.WARNING, job="orders", reason="still going")

    line = LogFormatter("text").format(records[0])
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING clock\.slot_skipped "
                        r'job=orders reason="still going"', line), line  # fmt: skip


def test_a_traceback_is_a_field_of_its_own(
    logged: tuple[logging.Logger, list[logging.LogRecord]],
) -> None:
    """With exc_info the traceback goes in ``traceback``: one line in JSON and logfmt."""
    logger, records = logged
    try:
        raise RuntimeError("bug")
    except RuntimeError:
        event(logger, "run.crashed", logging.ERROR, exc_info=True, error="RuntimeError: bug")

    out = lines(records[0])
    assert "RuntimeError: bug" in json.loads(out["json"])["traceback"]
    assert "\n" not in out["json"] and "\n" not in out["logfmt"]
    assert "Traceback" in parse_logfmt(out["logfmt"])["traceback"]


def test_secrets_are_masked_in_every_format(
    logged: tuple[logging.Logger, list[logging.LogRecord]],
) -> None:
    """A registered secret, and a password in a URL, are masked in text, JSON and logfmt."""
    logger, records = logged
    register_secrets(["tok-logs-canary-77"])
    event(logger, "request.retry", logging.WARNING, error="401 for Bearer tok-logs-canary-77",
          url="postgresql://u:pw-logs-canary@db/x")  # fmt: skip

    for name, line in lines(records[0]).items():
        assert "tok-logs-canary-77" not in line and "pw-logs-canary" not in line, (name, line)
        assert "***" in line, (name, line)


def test_a_library_line_is_the_event_log_with_its_message() -> None:
    """A record not logged as an event (a library's) keeps its text as ``message``."""
    stream = io.StringIO()
    configure_logging(logging.INFO, stream, "json")
    try:
        logging.getLogger("procrastinate").info("worker %s up", "w1")
    finally:
        logging.basicConfig(handlers=[logging.NullHandler()], force=True)

    data = json.loads(stream.getvalue())
    assert (data["event"], data["message"], data["logger"]) == (
        "log",
        "worker w1 up",
        "procrastinate",
    )


def test_auto_is_json_off_a_terminal() -> None:
    """``auto`` writes JSON lines to a stream that is not a terminal."""
    stream = io.StringIO()
    configure_logging(logging.INFO, stream, "auto")
    try:
        event(logging.getLogger("loader"), "clock.stopped")
    finally:
        logging.basicConfig(handlers=[logging.NullHandler()], force=True)

    assert json.loads(stream.getvalue())["event"] == "clock.stopped"


def test_the_readme_lists_every_event_and_no_other() -> None:
    """Each event name logged in loader/ and scheduler/ has a row in README's Logs table,
    and each row names an event the code logs."""
    used = set()
    for path in [*(ROOT / "loader").rglob("*.py"), *(ROOT / "scheduler").rglob("*.py")]:
        text = path.read_text()
        used |= set(
            re.findall(r'(?:event|_logged)\(\s*(?:log|alert),\s*"([a-z_]+\.[a-z_.]+)"', text)
        )
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Logs") :]
    section = section[: section.index("\n## ")]
    documented = set(re.findall(r"^\| `([a-z_]+\.[a-z_.]+)` \|", section, re.MULTILINE))
    assert len(used) > 40
    assert used - documented == set(), "events missing from README's Logs table"
    assert documented - used == set(), "README documents events the code never logs"
