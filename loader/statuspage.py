"""The status page as HTML: the status report (:mod:`loader.status`) rendered for a
browser, phones included. Plain HTML and inline CSS, no script: the page reloads
itself (``<meta http-equiv="refresh">``).

Pure: the caller gathers the report and the clock's facts; this module only renders.
Every value is escaped, and every text passes a redactor on its way out (the report's
errors are redacted already; this is the last line of defence for the rest).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from typing import Any

from loader.redact import Redactor
from loader.status import StatusReport
from loader.units import format_duration, when

_CSS = """
:root { color-scheme: light dark; --muted: #6b7280; --line: #d1d5db; }
body { font: 15px/1.4 system-ui, sans-serif; margin: 0 auto; padding: 0.75rem;
       max-width: 72rem; }
h1 { font-size: 1.3rem; margin: 0 0 0.25rem; }
h2 { font-size: 1.05rem; margin: 1.25rem 0 0.25rem; }
p { margin: 0.25rem 0; }
.muted { color: var(--muted); }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 0.3rem 0.5rem; border-bottom: 1px solid var(--line);
         vertical-align: top; }
th { font-weight: 600; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.error { overflow-wrap: break-word; font-family: ui-monospace, monospace; font-size: 0.85rem; }
#jobs tbody tr:first-child td { border-bottom: none; }
#jobs tbody tr:last-child td { border-bottom: 1px solid var(--line); }
time { white-space: nowrap; }
.badge { border-radius: 0.25rem; padding: 0 0.3rem; white-space: nowrap; }
.ok { background: #d1fae5; color: #065f46; }
.bad { background: #fee2e2; color: #991b1b; }
.other { background: #e5e7eb; color: #374151; }
"""

#: Columns of the jobs table.
_COLUMNS = 8
#: How each status is coloured; anything else is grey.
_GOOD = frozenset({"succeeded", "ok"})
_BAD = frozenset({"failed", "partial", "abandoned", "stalled", "missed", "bad"})


def render_status_page(
    report: StatusReport,
    *,
    now: float,
    clock: Mapping[str, Any] | None = None,
    refresh: float = 10,
    title: str = "loader",
) -> str:
    """The whole page for ``report`` at ``now``; it reloads itself every ``refresh``
    seconds. ``clock`` holds the clock's health (``healthy``, ``up_since``, ``last_tick``
    as Unix times, ``executor``, ``running`` job names, ``bad_files``); ``None`` says no
    clock serves the page (``loader ui``). Each job's ``runs`` are shown when present."""
    page = Redactor()
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta http-equiv="refresh" content="{refresh:g}">',
        f"<title>{_text(page, title)}</title><style>{_CSS}</style></head><body>",
        f"<header><h1>{_text(page, title)}</h1>",
        _clock_line(page, clock, now),
        f'<p class="muted">Updated {_text(page, when(now))}; refreshes every '
        f"{refresh:g} s.</p></header>",
        _jobs_table(page, report.jobs),
    ]
    for row in report.jobs:
        if "runs" in row:
            parts.append(_runs_section(page, row))
    parts.append("</body></html>")
    return "\n".join(parts)


def _text(redactor: Redactor, value: Any) -> str:
    """``value`` as escaped, redacted text; empty for ``None``."""
    return "" if value is None else html.escape(redactor.text(str(value)))


def _time(redactor: Redactor, value: str | None) -> str:
    """An ISO time kept on one line (its table scrolls sideways on a narrow screen)."""
    return "" if not value else f"<time>{_text(redactor, value)}</time>"


def _badge(redactor: Redactor, status: str | None, lapsed: str | None = None) -> str:
    if status is not None and lapsed:  # still recorded as running, its lock lapsed
        text = f"{_text(redactor, status)}, lock lapsed {_time(redactor, lapsed)}"
        return f'<span class="badge bad">{text}</span>'
    if status is None:
        return '<span class="muted">never run</span>'
    kind = "ok" if status in _GOOD else "bad" if status in _BAD else "other"
    return f'<span class="badge {kind}">{_text(redactor, status)}</span>'


def _clock_line(redactor: Redactor, clock: Mapping[str, Any] | None, now: float) -> str:
    if clock is None:
        return (
            '<p id="clock">No clock serves this page (<code>loader ui</code>): '
            "read from the state store; next runs follow from the schedules.</p>"
        )
    state = "ok" if clock.get("healthy") else "stalled"
    facts = [f"Clock {_badge(redactor, state)}"]
    if clock.get("up_since") is not None:
        facts.append(f"up since {_text(redactor, when(clock['up_since']))}")
    if clock.get("last_tick") is not None:
        facts.append(f"last tick {max(0.0, now - clock['last_tick']):.1f} s ago")
    if clock.get("executor"):
        facts.append(f"executor {_text(redactor, clock['executor'])}")
    running = clock.get("running") or []
    facts.append(f"running: {_text(redactor, ', '.join(running)) if running else 'none'}")
    lines = [f'<p id="clock">{"; ".join(facts)}.</p>']
    for problem in clock.get("bad_files") or []:
        lines.append(
            f'<p class="error">bad job file, not scheduled: {_text(redactor, problem)}</p>'
        )
    return "\n".join(lines)


def _jobs_table(redactor: Redactor, rows: Iterable[Mapping[str, Any]]) -> str:
    head = ("job", "schedule", "next run", "last run", "status", "rows", "cursor lag",
            "dead letters")  # fmt: skip
    body = [_job_row(redactor, row) for row in rows]
    if not body:
        body = [f'<tbody><tr><td colspan="{_COLUMNS}" class="muted">no job files</td></tr></tbody>']
    return (
        '<div class="scroll"><table id="jobs"><thead><tr>'
        + "".join(f"<th>{name}</th>" for name in head)
        + "</tr></thead>\n"
        + "\n".join(body)
        + "</table></div>"
    )


def _job_row(redactor: Redactor, row: Mapping[str, Any]) -> str:
    """One job's rows of the table, in a ``tbody`` of its own: its facts, then its last
    error (or a bad file's problem) across the whole width."""
    job = _text(redactor, row["job"])
    if "problem" in row:
        return (
            f'<tbody data-job="{job}"><tr><td>{job}</td><td colspan="{_COLUMNS - 1}">'
            f"{_badge(redactor, 'bad')} bad job file</td></tr>"
            + _error_row(redactor, row["problem"])
            + "</tbody>"
        )
    schedule = row.get("schedule")
    if schedule and row.get("timezone"):
        schedule = f"{schedule} ({row['timezone']})"
    lag = row.get("cursor_lag_seconds")
    cells = [
        f'<a href="#job-{job}">{job}</a>' if "runs" in row else job,
        _text(redactor, schedule or "none"),
        _time(redactor, row.get("next_run")),
        _time(redactor, row.get("last_run")),
        _badge(redactor, row.get("status"), row.get("lock_lapsed_at")),
        _text(redactor, row.get("rows_posted")),
        _text(redactor, format_duration(round(lag)) if lag is not None else ""),
        _text(redactor, row.get("dead_letters")),
    ]
    tds = "".join(f"<td>{cell}</td>" for cell in cells)
    return f'<tbody data-job="{job}"><tr>{tds}</tr>{_error_row(redactor, row.get("error"))}</tbody>'


def _error_row(redactor: Redactor, error: str | None) -> str:
    if not error:
        return ""
    text = _text(redactor, error)
    return f'<tr><td></td><td colspan="{_COLUMNS - 1}" class="error">{text}</td></tr>'


def _runs_section(redactor: Redactor, row: Mapping[str, Any]) -> str:
    job = _text(redactor, row["job"])
    lines = []
    for run in row["runs"]:
        seconds = run.get("seconds")
        rows = f"{run['rows_posted']}" + (
            f" ({run['rows_rejected']} rejected)" if run.get("rows_rejected") else ""
        )
        lines.append(
            f'<tr data-run="{_text(redactor, run["run_id"])}">'
            f"<td>{_time(redactor, run['started'])}</td>"
            f"<td>{_badge(redactor, run['status'], run.get('lock_lapsed_at'))}</td>"
            f'<td class="num rows">{_text(redactor, rows)}</td>'
            f'<td class="num">{"" if seconds is None else f"{seconds:.1f}"}</td>'
            f'<td class="error">{_text(redactor, run.get("error"))}</td></tr>'
        )
    if not lines:
        lines = ['<tr><td colspan="5" class="muted">no runs yet</td></tr>']
    return (
        f'<section id="job-{job}"><h2>{job}: last runs</h2><div class="scroll"><table>'
        "<thead><tr><th>started</th><th>status</th><th>rows</th><th>seconds</th>"
        "<th>error</th></tr></thead><tbody>\n" + "\n".join(lines) + "</tbody></table></div>"
        "</section>"
    )
