"""What the commands print: run summaries, dry-run requests, received requests, tables
and the progress line. rich is imported on first drawing only: ``loader run`` off a
terminal does not pay for it."""

from __future__ import annotations

import json
import math
import os
import re
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import typer

from loader.redact import Redactor
from loader.result import Position, RunResult
from loader.units import when

if TYPE_CHECKING:
    from loader.receiver import Received
    from loader.state import RunRecord

#: Characters of a body shown (dry-run requests, ``loader receive --body``).
BODY_CHARS = 4000


def print_summary(result: RunResult, redactor: Redactor, *, to_stderr: bool = False) -> None:
    """The dry run's requests (bodies redacted), then the run's counters and checkpoint."""
    for number, request in enumerate(result.preview, start=1):
        typer.echo(f"--- request {number} of {len(result.preview)} shown (dry run: not sent) ---")
        typer.echo(f"{request.method} {request.url}")
        for name, value in request.headers.items():
            typer.echo(f"{name}: {value}")
        typer.echo("")
        typer.echo(show_body(request.body, redactor))
    lines = [
        f"{result.job}: {result.status} in {result.duration:.2f}s (run {result.run_id})",
        f"  rows read    {result.rows_read:>12,}",
        f"  rows posted  {result.rows_posted:>12,}",
        f"  requests     {result.requests:>12,}",
        f"  retries      {result.retries:>12,}",
    ]
    if result.rows_rejected:
        lines.append(f"  rejected     {result.rows_rejected:>12,}")
    if result.rows_unchanged:
        lines.append(f"  unchanged    {result.rows_unchanged:>12,} (diff: not sent)")
    if result.rows_deleted:
        done = "to delete" if result.status == "dry-run" else "deleted  "
        lines.append(f"  {done}    {result.rows_deleted:>12,}")
    if result.splits:
        lines.append(f"  split        {result.splits:>12,} batches, to {result.split_size} rows "
                     f"(the endpoint refused bigger requests: set batch.size to at most "
                     f"{result.split_size})")  # fmt: skip
    if result.checkpoint is not None:
        lines.append(f"  checkpoint   {position(result.checkpoint)}")
    typer.echo("\n".join(lines), err=to_stderr)


@contextmanager
def progress(enabled: bool) -> Iterator[Callable[[RunResult], None] | None]:
    """On a terminal, a progress line (rows/s, requests in flight); nothing otherwise."""
    if not enabled:
        yield None
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
        console=console(stderr=True), transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("starting", total=None)
        started = time.monotonic()

        def update(result: RunResult) -> None:
            rate = result.rows_posted / max(time.monotonic() - started, 1e-6)
            bar.update(task, description=(
                f"{result.rows_posted:,} rows posted, {rate:,.0f} rows/s, "
                f"{result.in_flight} requests in flight, {result.retries} retries"
            ))  # fmt: skip

        yield update


def position(value: Position | None) -> str:
    """A cursor position as text: its values, comma-separated, datetimes in ISO 8601."""
    if value is None:
        return ""
    return ", ".join(v.isoformat() if isinstance(v, datetime) else str(v) for v in value)


@dataclass(frozen=True)
class Column:
    """A column of a table that fits the terminal. Cells of a ``fixed`` column are never
    cut (statuses, timestamps, ids); a column that is not fixed is cut with ``…`` to the
    room left. Columns with a higher ``drop`` go first when the table is too wide, a
    column of blanks and zeros before any other; ``drop=0`` is never dropped."""

    header: str
    drop: int = 0
    fixed: bool = True
    justify: Literal["left", "right"] = "left"


#: The room a cut column is given before whole columns are dropped for it.
CUT_ROOM = 40
#: Characters a rich table adds per column (padding, separator), and once (the last border).
PER_COLUMN, PER_TABLE = 3, 1


def fitted_table(columns: list[Column], rows: list[list[str]], width: int) -> tuple[Any, bool]:
    """A rich table of ``rows`` at most ``width`` characters wide: blank, then
    low-priority columns dropped until the fixed ones fit whole, the others cut to the
    room left. Also whether a cell was cut."""
    from rich.table import Table

    keep = list(range(len(columns)))
    natural = [max([len(c.header)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]

    def needed(kept: list[int], cap: float = CUT_ROOM) -> int:
        least = sum(natural[i] if columns[i].fixed else min(natural[i], cap) for i in kept)
        return int(least) + PER_COLUMN * len(kept) + PER_TABLE

    # Columns with nothing to say (all blank or zero) make room for cut cells first;
    # then, by priority, columns go until every cut column has CUT_ROOM.
    blank = [i for i in keep if columns[i].drop and all(r[i] in ("", "0") for r in rows)]
    for i in sorted(blank, key=lambda i: -columns[i].drop):
        if needed(keep, math.inf) <= width:
            break
        keep.remove(i)
    for i in sorted((i for i in keep if columns[i].drop), key=lambda i: -columns[i].drop):
        if needed(keep) <= width:
            break
        keep.remove(i)
    cut = [i for i in keep if not columns[i].fixed]
    room = width - needed([i for i in keep if columns[i].fixed]) - PER_COLUMN * len(cut)
    widths = {i: natural[i] for i in keep}
    for n, i in enumerate(sorted(cut, key=lambda i: natural[i])):
        widths[i] = max(min(natural[i], room // (len(cut) - n)), 1)
        room -= widths[i]
    drawn = Table()
    for i in keep:
        drawn.add_column(columns[i].header, justify=columns[i].justify, no_wrap=True,
                         min_width=widths[i], max_width=widths[i], overflow="ellipsis")  # fmt: skip
    for r in rows:
        drawn.add_row(*(r[i] for i in keep))
    return drawn, any(widths[i] < natural[i] for i in cut)


#: ``loader history``: what a narrow terminal keeps is the run, when, how it ended, the
#: rows posted and the error (cut); the rest goes, the least telling first.
HISTORY_COLUMNS = [
    Column("run"), Column("started"), Column("status"),
    Column("read", drop=3, justify="right"), Column("posted", justify="right"),
    Column("rejected", drop=5, justify="right"), Column("requests", drop=6, justify="right"),
    Column("retries", drop=4, justify="right"), Column("splits", drop=8, justify="right"),
    Column("seconds", drop=2, justify="right"), Column("cursor from", drop=7, fixed=False),
    Column("cursor to", drop=1, fixed=False), Column("error", fixed=False),
]  # fmt: skip

#: ``loader status``, the same way.
STATUS_COLUMNS = [
    Column("job", fixed=False), Column("schedule", drop=3, fixed=False),
    Column("last run"), Column("status"), Column("rows", drop=4, justify="right"),
    Column("cursor lag", drop=5, justify="right"), Column("next run", drop=1),
    Column("dead letters", drop=6, justify="right"),
]  # fmt: skip


def history_row(r: RunRecord, redactor: Redactor) -> list[str]:
    """A run's cells under :data:`HISTORY_COLUMNS`, its error masked and on one line."""
    seconds = f"{r.ended_at - r.started_at:.1f}" if r.ended_at else ""
    error = " ".join(redactor.text(r.error or "").split())
    return [
        r.run_id, short_time(r.started_at), shown_status(r.status, r.lock_lapsed),
        str(r.rows_read), str(r.rows_posted),
        str(r.rows_rejected), str(r.requests), str(r.retries), str(r.splits), seconds,
        position(r.cursor_from), position(r.cursor_to), error,
    ]  # fmt: skip


def run_details(r: RunRecord, redactor: Redactor, columns: int) -> str:
    """``loader history JOB --run RUN``: one run, a line per fact, its error whole and masked."""
    seconds = f"{r.ended_at - r.started_at:.1f}s" if r.ended_at else "(still running)"
    facts = [
        ("run", r.run_id), ("job", r.job), ("status", shown_status(r.status, r.lock_lapsed)),
        ("started", when(r.started_at)), ("ended", when(r.ended_at) if r.ended_at else ""),
        ("took", seconds), ("host", f"{r.host} (pid {r.pid})"),
        ("rows", f"{r.rows_read:,} read, {r.rows_posted:,} posted, {r.rows_rejected:,} rejected"),
        ("requests", f"{r.requests:,}, {r.retries:,} retries, {r.splits:,} split"),
        ("cursor", f"{position(r.cursor_from) or '(start)'} -> {position(r.cursor_to)}"),
    ]  # fmt: skip
    lines = [f"{name + ':':<10}{value}" for name, value in facts]
    if r.error:
        lines += ["error:", wrapped(redactor.text(r.error), columns)]
    return "\n".join(lines)


def wrapped(text: str, columns: int) -> str:
    """``text`` in lines of at most ``columns``, indented by two; a word longer than a
    line (a URL) stays whole, to be copied."""
    return "\n".join(
        textwrap.fill(line, columns, initial_indent="  ", subsequent_indent="  ",
                      break_long_words=False, break_on_hyphens=False)
        for line in text.splitlines()
    )  # fmt: skip


def short_time(timestamp: float) -> str:
    """A Unix ``timestamp`` as local month, day, hours and minutes (``12-04 15:33``), with
    the year before it when it is not this year's."""
    moment = datetime.fromtimestamp(timestamp)
    return moment.strftime("%m-%d %H:%M" if moment.year == datetime.now().year else "%Y-%m-%d")


def short_iso(text: str | None) -> str:
    """An ISO 8601 time (as in the status report) in the form of :func:`short_time`."""
    return short_time(datetime.fromisoformat(text).timestamp()) if text else ""


def shown_status(status: str | None, lock_lapsed_at: str | None) -> str:
    """A status cell; a run still recorded as running whose lock lapsed (at an ISO 8601
    time) says so: its process was killed or lost the state store."""
    if lock_lapsed_at and status:
        return f"{status}, lock lapsed {short_iso(lock_lapsed_at)}"
    return status or ""


def width() -> int:
    """The width tables are drawn to: the terminal's, else ``$COLUMNS``, else 200."""
    return int(console().width)


def console(*, stderr: bool = False) -> Any:
    """A rich console on stdout (or stderr): as wide as the terminal or ``$COLUMNS``, else
    200 columns wide off a terminal; no colour when ``NO_COLOR`` is set."""
    from rich.console import Console  # drawing only: not paid by `loader run` off a terminal

    stream = sys.stderr if stderr else sys.stdout
    fixed = None if stream.isatty() or os.environ.get("COLUMNS", "").isdigit() else 200
    return Console(stderr=stderr, width=fixed, no_color="NO_COLOR" in os.environ)


def show_body(body: bytes, redactor: Redactor, limit: int = BODY_CHARS) -> str:
    """``body`` as text, secrets masked, cut after ``limit`` characters."""
    text = redactor.text(body.decode("utf-8", "replace"))  # mask first: a cut hides nothing
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(body):,} bytes in all)"
    return text


def print_received(received: Received, *, show_body: bool) -> None:
    """One line per request the receiver got; with ``show_body``, its body (pretty JSON
    when it parses)."""
    rows = f"{received.rows} rows" if received.rows is not None else "not row JSON"
    key = received.headers.get("Idempotency-Key", "-")
    typer.echo(
        f"{received.method} {received.path}: {rows}, {len(received.body):,} bytes, "
        f"Idempotency-Key {key}"
    )
    if show_body:
        try:
            typer.echo(json.dumps(json.loads(received.body), indent=2)[:BODY_CHARS])
        except ValueError:
            typer.echo(received.body.decode("utf-8", "replace")[:BODY_CHARS])


#: Rows of a request body ``loader demo`` shows; the rest are counted.
DEMO_BODY_ROWS = 2


def trimmed_body(body: bytes, rows: int = DEMO_BODY_ROWS) -> str:
    """A request body as pretty JSON with its first ``rows`` rows and ``... N more rows``
    (the rows being the array, or the one array in an envelope); other bodies as their
    first ``rows`` lines."""
    try:
        data = json.loads(body)
    except ValueError:
        lines = body.decode("utf-8", "replace").splitlines()
        more = [f"... {len(lines) - rows} more lines"] if len(lines) > rows else []
        return "\n".join(lines[:rows] + more)
    arrays = [k for k, v in data.items() if isinstance(v, list)] if isinstance(data, dict) else []
    items = data if isinstance(data, list) else data[arrays[0]] if len(arrays) == 1 else []
    if len(items) <= rows:
        return json.dumps(data, indent=2)
    marker = "\u0000more\u0000"  # a string no row holds, replaced after rendering
    shown = [*items[:rows], marker]
    trimmed = shown if isinstance(data, list) else {**data, arrays[0]: shown}
    return json.dumps(trimmed, indent=2).replace(
        json.dumps(marker), f"... {len(items) - rows} more rows"
    )


def filter_effect(query: str, params: dict[str, Any], kept: int, total: int) -> str:
    """What the job's query made of the ``total`` rows of the table: its WHERE condition,
    parameters filled in (``plan = 'pro'``), and the ``kept`` rows it returned."""
    where = re.search(
        r"\bWHERE\b(.+?)(?:\bORDER\s+BY\b|\bGROUP\s+BY\b|\bLIMIT\b|$)", query, re.I | re.S
    )
    if where is None:
        return f"the job's query keeps every row: {kept:,} of {total:,} to send"
    condition = re.sub(
        r"(?<!:):(\w+)",
        lambda m: repr(params[m[1]]) if m[1] in params else m[0],
        " ".join(where[1].split()),
    )
    return f"the job's query keeps {condition}: {kept:,} of {total:,} rows to send"


def received_summary(received: list[Received]) -> str:
    """What a receiver got, in one line: requests, rows and the rows of each request."""
    sizes = [r.rows for r in received if r.rows is not None]
    each = ", ".join(map(str, sizes[:10])) + (", ..." if len(sizes) > 10 else "")
    requests = f"{len(received):,} request{'' if len(received) == 1 else 's'}"
    return f"the receiver got {requests}, {sum(sizes):,} rows in all ({each} rows per request)"


def print_json(document: dict[str, Any]) -> None:
    """``document`` as one JSON document on stdout, every registered secret masked;
    datetimes in ISO 8601, other values JSON cannot hold (decimals, UUIDs) as text."""
    from loader.redact import mask_registered

    typer.echo(mask_registered(json.dumps(document, indent=2, default=_jsonable)))


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def run_document(result: RunResult, redactor: Redactor) -> dict[str, Any]:
    """``loader run --json``: the summary's counters, the checkpoint's values, the error
    (masked) and, on a dry run, the requests shown."""
    return {
        "job": result.job, "run_id": result.run_id, "status": str(result.status),
        "duration_seconds": round(result.duration, 3), "rows_read": result.rows_read,
        "rows_posted": result.rows_posted, "rows_rejected": result.rows_rejected,
        "requests": result.requests, "retries": result.retries,
        "throttled": result.throttled, "splits": result.splits,
        "split_size": result.split_size, "rows_unchanged": result.rows_unchanged,
        "rows_deleted": result.rows_deleted,
        "checkpoint": list(result.checkpoint) if result.checkpoint is not None else None,
        "error": redactor.text(result.error) if result.error else None,
        "requests_shown": [
            {"method": r.method, "url": r.url, "headers": dict(r.headers),
             "body": show_body(r.body, redactor)}
            for r in result.preview
        ],
    }  # fmt: skip


def history_document(job: str, records: list[RunRecord], redactor: Redactor) -> dict[str, Any]:
    """``loader history --json``: the job and its runs, newest first, errors masked."""
    runs = [
        {
            "run_id": r.run_id, "status": r.status, "lock_lapsed_at": r.lock_lapsed,
            "started_at": when(r.started_at),
            "ended_at": when(r.ended_at) if r.ended_at else None,
            "duration_seconds": round(r.ended_at - r.started_at, 3) if r.ended_at else None,
            "rows_read": r.rows_read, "rows_posted": r.rows_posted,
            "rows_rejected": r.rows_rejected, "requests": r.requests, "retries": r.retries,
            "splits": r.splits, "host": r.host, "pid": r.pid,
            "cursor_from": list(r.cursor_from) if r.cursor_from is not None else None,
            "cursor_to": list(r.cursor_to) if r.cursor_to is not None else None,
            "error": redactor.text(r.error) if r.error else None,
        }
        for r in records
    ]  # fmt: skip
    return {"job": job, "runs": runs}
