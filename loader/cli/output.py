"""What the commands print: run summaries, dry-run requests, received requests, tables
and the progress line. rich is imported on first drawing only: ``loader run`` off a
terminal does not pay for it."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

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


def table(*columns: str) -> Any:
    """An empty rich table with these column headers."""
    from rich.table import Table

    return Table(*columns)


def console(*, stderr: bool = False) -> Any:
    """A rich console on stdout (or stderr): 200 columns wide off a terminal, no colour
    when ``NO_COLOR`` is set."""
    from rich.console import Console  # drawing only: not paid by `loader run` off a terminal

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 200
    return Console(stderr=stderr, width=width, no_color="NO_COLOR" in os.environ)


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
            "run_id": r.run_id, "status": r.status, "started_at": when(r.started_at),
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
