"""The status page in a real browser: headless Chromium (Playwright) opening the page of
a real clock process, and of ``loader ui``, over real PostgreSQL and a real endpoint."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from playwright.sync_api import expect

from loader import defaults
from tests.integration.conftest import Schema
from tests.integration.test_clock import events_table, scheduled, write_job
from tests.support.browser import browser
from tests.support.processes import nothing_left_running, start_loader, terminate
from tests.support.server import Endpoint

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page

__all__ = ["browser", "nothing_left_running"]  # fixtures

PASSWORD = "Hunter2-S3cret-Pw"
#: Where the README's screenshot is written when this variable names a file.
SCREENSHOT_ENV = "LOADER_STATUS_SCREENSHOT"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def two_jobs(tmp_path: Path, schema: Schema, endpoint: Endpoint) -> None:
    """jobs/signups.yml posts 3 rows every 2 s; jobs/invoices.yml fails on its query, read
    through a URL holding a password that the error then quotes."""
    query = events_table(schema, 3)
    write_job(tmp_path / "jobs", "signups", scheduled(schema, endpoint, query, schedule="every 2s"))
    broken = scheduled(schema, endpoint, f"SELECT '{PASSWORD}'::int AS id")
    broken["source"]["url"] = schema.url.replace("postgres@", f"postgres:{PASSWORD}@")
    write_job(tmp_path / "jobs", "invoices", broken)


def wait_for_page(url: str, *texts: str, auth: tuple[str, str] | None = None) -> str:
    """The page at ``url`` once it holds every one of ``texts`` (runs take a moment)."""
    deadline = time.monotonic() + 30
    while True:
        page = httpx.get(url, auth=auth).text
        if all(text in page for text in texts):
            return page
        assert time.monotonic() < deadline, f"never showed {texts}: {page}"
        time.sleep(0.2)


def rows_cell(page: Page, job: str, rows: str) -> Locator:
    """The cells of ``job``'s last runs that say ``rows`` rows were posted."""
    return page.locator(f"#job-{job} td.rows").filter(has_text=re.compile(f"^{rows}$"))


def test_the_clock_page_shows_jobs_errors_and_picks_up_new_runs(
    tmp_path: Path, schema: Schema, endpoint: Endpoint, pg_state: str,
    browser: Browser, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The clock's / lists both jobs, the failing one's error (password masked), a run's
    rows, and after its own refresh a run that happened since it was opened."""
    two_jobs(tmp_path, schema, endpoint)
    monkeypatch.setenv(defaults.UI_REFRESH_ENV, "1s")
    port = free_port()
    clock = start_loader(tmp_path, "clock", "jobs", "--port", str(port), up="clock.serving")
    url = f"http://127.0.0.1:{port}/"
    assert PASSWORD not in wait_for_page(url, "invalid input syntax", "succeeded")

    # The page reloads itself every second: expect() retries across those reloads.
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    page.goto(url)
    expect(page.locator("[data-job=signups]")).to_have_count(1)
    expect(page.locator("[data-job=invoices]")).to_contain_text("failed")
    expect(page.locator("[data-job=invoices] td.error")).to_contain_text("invalid input syntax")
    expect(rows_cell(page, "signups", "3")).not_to_have_count(0)
    expect(page.locator("#clock")).to_contain_text("Clock ok")
    expect(rows_cell(page, "signups", "2")).to_have_count(0)
    opened = len(navigations)

    schema.execute("INSERT INTO events SELECT g, now() FROM generate_series(4, 5) g")
    # No reload here: the page must reload itself to show the run that sends them.
    expect(rows_cell(page, "signups", "2")).not_to_have_count(0, timeout=20_000)
    assert len(navigations) > opened
    page.close()
    code, out, _ = terminate(clock)
    assert code == 0, out
    assert "is public: set LOADER_UI_PASSWORD" in out


def test_with_a_password_the_page_asks_for_it_and_healthz_stays_open(
    tmp_path: Path, schema: Schema, endpoint: Endpoint, pg_state: str,
    browser: Browser, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """With LOADER_UI_PASSWORD the clock's / is 401 without it or with a wrong one, renders
    with it (any user name); /healthz and /metrics answer without it."""
    two_jobs(tmp_path, schema, endpoint)
    monkeypatch.setenv(defaults.UI_PASSWORD_ENV, "open-sesame-42")
    port = free_port()
    clock = start_loader(tmp_path, "clock", "jobs", "--port", str(port), up="clock.serving")
    url = f"http://127.0.0.1:{port}"

    denied = httpx.get(f"{url}/")
    assert denied.status_code == 401
    assert denied.headers["WWW-Authenticate"].startswith("Basic")
    assert httpx.get(f"{url}/", auth=("ops", "wrong")).status_code == 401
    assert httpx.get(f"{url}/healthz").status_code == 200
    assert httpx.get(f"{url}/metrics").status_code == 200

    wait_for_page(f"{url}/", "invalid input syntax", "succeeded", auth=("ops", "open-sesame-42"))
    context = browser.new_context(
        http_credentials={"username": "ops", "password": "open-sesame-42"},
        viewport={"width": 1100, "height": 700},
    )
    page = context.new_page()
    answer = page.goto(f"{url}/")
    assert answer is not None and answer.status == 200
    expect(page.locator("[data-job=signups]")).to_have_count(1)
    if os.environ.get(SCREENSHOT_ENV):  # the README's screenshot
        page.screenshot(path=os.environ[SCREENSHOT_ENV], full_page=True)
    context.close()
    code, out, _ = terminate(clock)
    assert code == 0, out
    assert "is public" not in out and "open-sesame-42" not in out


def test_loader_ui_serves_the_page_from_the_state_store_readable_on_a_phone(
    tmp_path: Path, schema: Schema, endpoint: Endpoint, pg_state: str, browser: Browser
) -> None:
    """Without a clock, `loader ui` shows the jobs' runs, errors and next runs from the
    state store; at 375 px wide nothing overflows the screen sideways; its
    Content-Security-Policy lets its own style apply and the browser reports no breach."""
    two_jobs(tmp_path, schema, endpoint)
    for job in ("signups", "invoices"):
        subprocess.run([sys.executable, "-m", "loader", "run", f"jobs/{job}.yml"],
                       cwd=tmp_path, capture_output=True, timeout=60)  # fmt: skip
    port = free_port()
    ui = start_loader(tmp_path, "ui", "jobs", "--port", str(port), up="serving the status page")

    page = browser.new_page(viewport={"width": 375, "height": 740})
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    answer = page.goto(f"http://127.0.0.1:{port}/")
    assert answer is not None and "default-src 'none'" in answer.headers["content-security-policy"]
    assert "No clock" in page.locator("#clock").inner_text()
    badge = page.locator("[data-job=invoices] .badge")
    assert badge.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(254, 226, 226)"
    expect(rows_cell(page, "signups", "3")).to_have_count(1)
    assert "invalid input syntax" in page.locator("[data-job=invoices] td.error").inner_text()
    next_run = page.locator("[data-job=signups] td").nth(2).inner_text()
    assert re.match(r"\d{4}-\d\d-\d\dT", next_run), next_run
    assert PASSWORD not in page.content()
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow} px wider than the phone's screen"
    assert not [text for text in console if "Content Security Policy" in text], console
    page.close()
    code, out, _ = terminate(ui)
    assert code == 0, out


def test_loader_ui_on_a_busy_port_names_it_and_exits_2(tmp_path: Path, pg_state: str) -> None:
    """A port already taken is one line naming it and --port, exit 2, no traceback."""
    (tmp_path / "jobs").mkdir()
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "loader", "ui", "jobs", "--port", str(port)],
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == defaults.EXIT_CONFIG, done.stderr
    assert f"port {port}" in done.stderr and "--port" in done.stderr
    assert "Traceback" not in done.stderr
