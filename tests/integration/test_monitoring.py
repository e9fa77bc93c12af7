"""Telling the owner: alerts, heartbeats, metrics, status and logs, against real servers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiosmtpd.controller import Controller

from loader import LoaderError, build_job, flush_notifications, open_state, run_job
from loader.monitor import Monitor
from tests.integration.conftest import Schema, make_job
from tests.support.server import Endpoint

CANARY = "canary-7f3a9c1e5b"


def table(schema: Schema, count: int = 5) -> str:
    schema.execute(f"CREATE TABLE t AS SELECT g AS id FROM generate_series(1, {count}) g")
    return f"SELECT id FROM {schema.table('t')}"


def attempt(job: Any) -> str:
    """Run the job; return its status (failed when it raises)."""
    try:
        return run_job(job).status
    except LoaderError:
        return "failed"
    finally:
        assert flush_notifications(timeout=10)


def alerts(endpoint: Endpoint, path: str) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in endpoint.requests if r.path == path]


def test_three_failures_one_alert_then_one_recovery(schema: Schema, endpoint: Endpoint) -> None:
    """Failing three runs in a row sends one alert (webhook and Slack); passing again
    sends one recovery notice."""
    endpoint.reject_when(lambda body: b'"id"' in body, 401)
    job = build_job(
        make_job(schema, endpoint.url + "/target", table(schema),
                 alerts={"webhook": endpoint.url + "/alerts", "slack": endpoint.url + "/slack"})
    )  # fmt: skip

    assert [attempt(job) for _ in range(3)] == ["failed"] * 3
    endpoint.clear_rejections()
    assert attempt(job) == "succeeded"
    assert attempt(job) == "succeeded"

    sent = alerts(endpoint, "/alerts")
    assert [a["event"] for a in sent] == ["failing", "recovered"]
    failing = sent[0]
    assert failing["job"] == "test_job" and failing["status"] == "failed"
    assert "401" in failing["error"] and failing["run_id"]
    assert sent[1]["last_success"] is not None
    slack = alerts(endpoint, "/slack")
    assert len(slack) == 2 and "is failing" in slack[0]["text"]
    assert slack[0]["blocks"][0]["type"] == "section"


def test_dead_letters_and_a_tripped_circuit_breaker_alert(
    schema: Schema, endpoint: Endpoint
) -> None:
    """A run that dead-letters rows alerts; the circuit breaker's failure says so."""
    endpoint.reject_when(lambda body: b'"id":3' in body, 422)
    spec = make_job(schema, endpoint.url + "/target", table(schema),
                    alerts={"webhook": endpoint.url + "/alerts"})  # fmt: skip
    assert attempt(build_job(spec)) == "partial"
    spec["max_rejected"] = 0
    endpoint.reject_when(lambda body: b'"id"' in body, 422)
    assert attempt(build_job(spec)) == "failed"

    events = [(a["event"], a["rows_rejected"]) for a in alerts(endpoint, "/alerts")]
    assert events == [("rejected_rows", 1), ("failing", 0)]
    assert alerts(endpoint, "/alerts")[1]["error"].startswith("circuit breaker tripped")


def test_reminder_and_lag_alerts(schema: Schema, endpoint: Endpoint, tmp_path: Path) -> None:
    """Still failing after remind_after: one reminder. A cursor older than max_lag: one
    lagging alert, and one caught_up when it is not any more."""
    state = open_state(f"sqlite:///{tmp_path / 's.db'}")
    now = [1_000_000.0]
    job = build_job(
        make_job(schema, endpoint.url, "SELECT 1 AS id",
                 alerts={"webhook": endpoint.url + "/alerts", "remind_after": "1h",
                         "max_lag": "10m"})
    )  # fmt: skip
    monitor = Monitor(job, state, env={}, now=lambda: now[0])

    class Result:
        run_id, status, rows_posted, rows_rejected, error = "r", "failed", 0, 0, "boom"
        checkpoint: Any = None

    failed, ok = Result(), Result()
    ok.status, ok.error = "succeeded", None
    for step in (0, 1800, 3601, 3700):  # fails at 0, 30m, 60m+1s, 61m+40s
        now[0] = 1_000_000.0 + step
        monitor.finished(failed, LoaderError("boom"))
    from datetime import UTC, datetime

    ok.checkpoint = (datetime.fromtimestamp(now[0] - 3600, UTC),)
    monitor.finished(ok)
    ok.checkpoint = (datetime.fromtimestamp(now[0] - 60, UTC),)
    monitor.finished(ok)
    assert flush_notifications(timeout=10)
    state.close()

    events = [a["event"] for a in alerts(endpoint, "/alerts")]
    assert events == ["failing", "still_failing", "recovered", "lagging", "caught_up"]


def test_email_alerts_go_through_smtp(
    schema: Schema, endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With LOADER_SMTP_URL and LOADER_ALERT_EMAIL, the failing alert arrives by mail."""
    received: list[Any] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            received.append(envelope)
            return "250 OK"

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        monkeypatch.setenv("LOADER_SMTP_URL", f"smtp://127.0.0.1:{port}")
        monkeypatch.setenv("LOADER_ALERT_EMAIL", "ops@example.com, oncall@example.com")
        monkeypatch.setenv("LOADER_ALERT_FROM", "loader@example.com")
        endpoint.reject_when(lambda body: b'"id"' in body, 403)
        job = build_job(make_job(schema, endpoint.url, table(schema)))
        assert attempt(job) == "failed"
    finally:
        controller.stop()

    (mail,) = received
    assert mail.rcpt_tos == ["ops@example.com", "oncall@example.com"]
    text = mail.content.decode()
    assert "Subject: [loader] loader job test_job is failing" in text
    assert "event: failing" in text


def test_heartbeats_ping_start_success_and_fail(schema: Schema, endpoint: Endpoint) -> None:
    """healthchecks.io style: URL/start at start, URL on success, URL/fail on failure."""
    spec = make_job(schema, endpoint.url + "/target", table(schema),
                    heartbeat=endpoint.url + "/ping/abc")  # fmt: skip
    assert attempt(build_job(spec)) == "succeeded"
    endpoint.reject_when(lambda body: b'"id"' in body, 400)
    assert attempt(build_job({**spec, "on_reject": "fail"})) == "failed"

    pings = [r.path for r in endpoint.requests if r.path.startswith("/ping")]
    assert pings == ["/ping/abc/start", "/ping/abc", "/ping/abc/start", "/ping/abc/fail"]


@pytest.fixture
def clock_dir(tmp_path: Path, schema: Schema, endpoint: Endpoint) -> Iterator[Path]:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    query = table(schema, 7)
    spec = make_job(schema, endpoint.url, query, source={"cursor": {"column": "id"}})
    spec.update(name="metered", schedule="every 1s")
    (jobs / "metered.yml").write_text(yaml.safe_dump(spec))
    yield jobs


def test_metrics_and_healthz_after_a_known_run(
    clock_dir: Path, endpoint: Endpoint, tmp_path: Path
) -> None:
    """The clock serves /metrics with the run's counters, and /healthz."""
    from loader.scheduler import Clock

    state = open_state(f"sqlite:///{tmp_path / 'clock.db'}")
    clock = Clock([clock_dir], state=state, env=dict(os.environ), metrics_port=0)
    clock.start()
    deadline = time.monotonic() + 10
    while clock._server is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert clock._server is not None
    base = f"http://127.0.0.1:{clock._server.port}"
    while 'loader_rows_posted_total{job="metered"}' not in httpx.get(f"{base}/metrics").text:
        assert time.monotonic() < deadline, "no run recorded"
        time.sleep(0.1)
    health = httpx.get(f"{base}/healthz")
    metrics = httpx.get(f"{base}/metrics").text
    clock.stop(timeout=10)
    state.close()

    assert health.status_code == 200 and health.json()["jobs"] == ["metered"]
    lines = dict(
        line.rsplit(" ", 1) for line in metrics.splitlines() if line and not line.startswith("#")
    )
    assert float(lines['loader_rows_posted_total{job="metered"}']) == 7
    assert float(lines['loader_rows_read_total{job="metered"}']) == 7
    assert float(lines['loader_requests_total{job="metered"}']) == 1
    assert float(lines['loader_runs_total{job="metered",status="succeeded"}']) >= 1
    assert float(lines['loader_dead_letters{job="metered"}']) == 0
    assert float(lines['loader_last_success_timestamp_seconds{job="metered"}']) > 0


def test_status_json_logs_and_no_secret_anywhere(
    tmp_path: Path, schema: Schema, endpoint: Endpoint
) -> None:
    """`loader status` shows the job; JSON log lines carry the run id; a canary secret
    in the database URL and a header appears in no log line, alert or status output."""
    scheme, rest = schema.url.split("://", 1)
    user, host = rest.split("@", 1)
    db_url = f"{scheme}://{user.split(':')[0]}:{CANARY}-pw@{host}"
    spec = make_job(schema, endpoint.url + "/target", table(schema), source={"url": db_url},
                    target={"headers": {"Authorization": f"Bearer {CANARY}"}},
                    alerts={"webhook": endpoint.url + "/alerts"}, schedule="@hourly")  # fmt: skip
    spec["name"] = "watched"
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "watched.yml").write_text(yaml.safe_dump(spec))
    endpoint.reject_when(
        lambda body: b'"id"' in body, (401, {}, f"bad token Bearer {CANARY}".encode())
    )

    def loader(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "loader", *args], cwd=tmp_path, capture_output=True,
            text=True, timeout=60, env=os.environ,
        )  # fmt: skip

    failed = loader("-v", "--log-format", "json", "run", "jobs/watched.yml")
    status_json = loader("status", "--json")
    status_table = loader("status")

    assert failed.returncode == 4
    log_lines = [json.loads(line) for line in failed.stderr.splitlines() if line.startswith("{")]
    assert log_lines and all(line["run_id"] for line in log_lines if line["logger"] == "loader")
    (job,) = json.loads(status_json.stdout)["jobs"]
    assert job["job"] == "watched" and job["status"] == "failed" and job["schedule"] == "@hourly"
    assert job["next_run"] is not None and job["dead_letters"] == 0
    assert "watched" in status_table.stdout and "failed" in status_table.stdout
    sent = [r.body.decode() for r in endpoint.requests if r.path == "/alerts"]
    assert len(sent) == 1
    for text in [failed.stdout, failed.stderr, status_json.stdout, status_table.stdout, *sent]:
        assert CANARY not in text


def test_a_run_failing_before_it_reads_still_alerts(schema: Schema, endpoint: Endpoint) -> None:
    """A changed query (the checkpoint no longer fits) fails every run: it alerts once,
    and pings the failure heartbeat."""
    query = table(schema)
    spec = make_job(schema, endpoint.url + "/target", query, source={"cursor": {"column": "id"}},
                    alerts={"webhook": endpoint.url + "/alerts"},
                    heartbeat=endpoint.url + "/hb")  # fmt: skip
    assert attempt(build_job(spec)) == "succeeded"
    spec["source"]["query"] = query + " WHERE id > 0"
    assert [attempt(build_job(spec)) for _ in range(2)] == ["failed", "failed"]

    assert [a["event"] for a in alerts(endpoint, "/alerts")] == ["failing"]
    assert "--full-refresh" in alerts(endpoint, "/alerts")[0]["error"]
    pings = [r.path for r in endpoint.requests if r.path.startswith("/hb")]
    assert pings == ["/hb/start", "/hb", "/hb/start", "/hb/fail", "/hb/start", "/hb/fail"]


def test_interrupted_runs_are_neutral_and_a_broken_channel_is_contained(
    schema: Schema, endpoint: Endpoint, tmp_path: Path
) -> None:
    """An interrupted run neither recovers a failing job nor pings success; a delivery
    that raises anything is logged and does not block later deliveries."""
    from loader.monitor import _NOTIFIER

    state = open_state(f"sqlite:///{tmp_path / 's.db'}")
    job = build_job(make_job(schema, endpoint.url, "SELECT 1 AS id",
                             alerts={"webhook": endpoint.url + "/alerts"},
                             heartbeat=endpoint.url + "/hb"))  # fmt: skip
    monitor = Monitor(job, state, env={})

    class Result:
        run_id, status, rows_posted, rows_rejected, error = "r", "failed", 0, 0, "boom"
        checkpoint: Any = None

    monitor.finished(Result(), LoaderError("boom"))
    interrupted = Result()
    interrupted.status, interrupted.error = "interrupted", None
    monitor.finished(interrupted)

    def explode() -> None:
        raise ValueError("not a URL")

    _NOTIFIER.submit("a broken channel", explode)
    started = time.monotonic()
    assert flush_notifications(timeout=10)
    assert time.monotonic() - started < 8
    state.close()

    assert [a["event"] for a in alerts(endpoint, "/alerts")] == ["failing"]
    assert [r.path for r in endpoint.requests if r.path.startswith("/hb")] == ["/hb/fail"]
