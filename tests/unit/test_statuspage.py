"""The status page's HTML, rendered from report values: escaped, redacted, self-refreshing."""

from __future__ import annotations

from typing import Any

import pytest

from loader import JobConfigError, StatusReport, render_status_page
from loader.scheduler.web import ui_refresh

NOW = 1_780_000_000.0


def job(**values: Any) -> dict[str, Any]:
    row = {"job": "orders", "file": "jobs/orders.yml", "schedule": "every 5m",
           "timezone": "UTC", "last_run": None, "status": None, "rows_posted": None,
           "error": None, "cursor_lag_seconds": None, "next_run": None,
           "dead_letters": 0}  # fmt: skip
    return {**row, **values}


def run(**values: Any) -> dict[str, Any]:
    row = {"run_id": "orders@1", "started": "2026-01-01T00:00:00+00:00", "status": "succeeded",
           "rows_posted": 12, "rows_rejected": 0, "seconds": 1.25, "error": None}  # fmt: skip
    return {**row, **values}


def page(*rows: dict[str, Any], clock: dict[str, Any] | None = None) -> str:
    return render_status_page(StatusReport(jobs=list(rows), queue=False), now=NOW, clock=clock)


def test_every_value_is_escaped() -> None:
    """A job name or an error holding markup shows as text, never as markup."""
    html = page(job(job="<script>alert(1)</script>", error='<img src=x onerror="boom">',
                    runs=[run(error="<b>bold</b>")]))  # fmt: skip
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img" not in html and "<b>bold" not in html


def test_a_password_left_in_an_error_is_masked() -> None:
    """A URL's password that reached an error unredacted is masked on the page."""
    error = "cannot connect to postgresql://app:pw-Zq81-secret@db.example.com/prod"
    html = page(job(error=error, status="failed", runs=[run(status="failed", error=error)]))
    assert "pw-Zq81-secret" not in html
    assert "postgresql://app:***@db.example.com/prod" in html


def test_the_page_fits_phones_and_reloads_itself() -> None:
    """A viewport for phones and a refresh at the period asked for."""
    html = render_status_page(StatusReport(jobs=[job()], queue=False), now=NOW, refresh=7)
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert '<meta http-equiv="refresh" content="7">' in html


def test_the_clock_health_and_bad_files_show() -> None:
    """With a clock: its state, when it started and last ticked, its executor, bad files."""
    clock = {"healthy": True, "up_since": NOW - 3600, "last_tick": NOW - 0.4,
             "executor": "inline, 4 at once", "running": ["orders"],
             "bad_files": ["jobs/bad.yml:3: source.url: field required"]}  # fmt: skip
    html = page(job(), clock=clock)
    assert "Clock" in html and "last tick 0.4 s ago" in html
    assert "inline, 4 at once" in html and "running: orders" in html
    assert "jobs/bad.yml:3: source.url: field required" in html
    assert "No clock" in page(job())


def test_runs_a_bad_file_and_a_job_never_run() -> None:
    """Each run's status, rows and seconds; a bad job file's problem; 'never run'."""
    html = page(
        job(runs=[run(rows_rejected=2)]),
        {"job": "broken", "file": "jobs/broken.yml", "problem": "jobs/broken.yml:1: bad"},
        job(job="fresh", runs=[]),
    )
    assert '<td class="num rows">12 (2 rejected)</td>' in html and "1.2" in html
    assert "jobs/broken.yml:1: bad" in html
    assert "never run" in html and "no runs yet" in html


def test_a_bad_refresh_period_names_the_variable() -> None:
    """LOADER_UI_REFRESH must be a duration of at least 1s; the default is 10 s."""
    assert ui_refresh({}) == 10
    assert ui_refresh({"LOADER_UI_REFRESH": "30s"}) == 30
    for bad in ("soon", "100ms"):
        with pytest.raises(JobConfigError, match="LOADER_UI_REFRESH"):
            ui_refresh({"LOADER_UI_REFRESH": bad})


def test_a_run_whose_lock_lapsed_is_shown_as_such() -> None:
    """A run still recorded as running whose lock lapsed (its process killed) shows it,
    marked bad, in the jobs table and in the job's runs; a live run shows plain."""
    lapsed = "2026-01-01T00:05:00+00:00"
    html = page(job(status="running", lock_lapsed_at=lapsed,
                    runs=[run(status="running", lock_lapsed_at=lapsed)]))  # fmt: skip
    badge = f'<span class="badge bad">running, lock lapsed <time>{lapsed}</time></span>'
    assert html.count(badge) == 2
    live = page(job(status="running", lock_lapsed_at=None, runs=[run(status="running")]))
    assert "lock lapsed" not in live
