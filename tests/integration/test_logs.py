"""Log lines a platform can read: the ``loader`` command running real jobs against
PostgreSQL and a loopback endpoint, its stderr parsed back as JSON lines and logfmt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from loader import defaults
from tests.integration.conftest import Schema, make_job
from tests.support.logs import log_events, parse_logfmt
from tests.support.server import Endpoint

ROWS = 5
ALERT_ENV = (defaults.ALERT_URL_ENV, defaults.ALERT_SLACK_URL_ENV, defaults.ALERT_EMAIL_ENV)


def write_job(tmp_path: Path, schema: Schema, endpoint: Endpoint, **sections: Any) -> Path:
    """jobs/orders.yml posting a ``ROWS``-row table to the endpoint, two rows a request."""
    schema.execute(f"CREATE TABLE t AS SELECT g AS id FROM generate_series(1, {ROWS}) g")
    sections = {"batch": {"size": 2}, **sections}
    spec = make_job(schema, endpoint.url + "/in", f"SELECT id FROM {schema.table('t')}", **sections)
    spec["name"] = "orders"
    jobs = tmp_path / "jobs"
    jobs.mkdir(exist_ok=True)
    path = jobs / "orders.yml"
    path.write_text(yaml.safe_dump(spec))
    return path


def loader(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``loader ARGS`` in ``tmp_path``, with no alert channel in the environment unless
    ``env`` sets one."""
    clean = {k: v for k, v in os.environ.items() if k not in ALERT_ENV and "LOG" not in k}
    return subprocess.run(
        [sys.executable, "-m", "loader", *args], cwd=tmp_path, env={**clean, **env},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_logfmt_lines_parse_and_carry_the_run_fields(
    tmp_path: Path, schema: Schema, endpoint: Endpoint
) -> None:
    """``--log-format logfmt -v`` after the command: every stderr line is logfmt; one
    run.started and one run.ended with job, run_id, rows, status and duration_s."""
    write_job(tmp_path, schema, endpoint)

    ran = loader(tmp_path, "run", "orders", "--json", "--log-format", "logfmt", "-v")

    assert ran.returncode == 0, ran.stderr
    lines = [parse_logfmt(line) for line in ran.stderr.splitlines() if line.startswith("at=")]
    assert all(line["at"] and line["event"] for line in lines), ran.stderr
    (started,) = [line for line in lines if line["event"] == "run.started"]
    (ended,) = [line for line in lines if line["event"] == "run.ended"]
    run_id = json.loads(ran.stdout)["run_id"]
    assert started["job"] == ended["job"] == "orders"
    assert started["run_id"] == ended["run_id"] == run_id
    assert (ended["at"], ended["status"], ended["rows"]) == ("info", "succeeded", str(ROWS))
    assert float(ended["duration_s"]) >= 0
    assert "after" not in started  # a first run: no checkpoint, and no "None" either
    assert sorted(endpoint.accepted_ids()) == list(range(1, ROWS + 1))


def test_json_lines_carry_fields_at_the_top_level_and_no_reprs(
    tmp_path: Path, schema: Schema, endpoint: Endpoint
) -> None:
    """``--log-format json``: one object per line with ts, level, event, logger and the
    fields at the top level; a resumed run's checkpoint is plain values, not a repr."""
    write_job(tmp_path, schema, endpoint, source={"cursor": {"column": "id"}})
    loader(tmp_path, "run", "orders")
    schema.execute(f"INSERT INTO {schema.table('t')} VALUES (6)")

    ran = loader(tmp_path, "--log-format", "json", "run", "orders", "-v")

    assert ran.returncode == 0, ran.stderr
    lines = [json.loads(line) for line in ran.stderr.splitlines()]
    assert lines and all({"ts", "level", "event", "logger"} <= set(line) for line in lines)
    (started,) = log_events(ran.stderr, "run.started")
    (ended,) = log_events(ran.stderr, "run.ended")
    assert started["after"] == "5" and "None" not in ran.stderr and "(" not in started["after"]
    assert (ended["job"], ended["status"], ended["rows"]) == ("orders", "succeeded", 1)
    assert isinstance(ended["duration_s"], float) and ended["run_id"] == started["run_id"]


def test_quiet_logs_errors_only_and_log_level_follows_the_command(
    tmp_path: Path, schema: Schema, endpoint: Endpoint
) -> None:
    """A rejected row logs row.rejected (warning) by default, no event with ``-q``;
    ``--log-level debug`` after the command, and ``LOADER_LOG_LEVEL``, log run.started."""
    write_job(tmp_path, schema, endpoint, batch={"size": 1})
    endpoint.reject_when(lambda body: b'"id": 3' in body or b'"id":3' in body, 422)

    default = loader(tmp_path, "--log-format", "json", "run", "orders", "--full-refresh")
    quiet = loader(tmp_path, "--log-format", "json", "run", "orders", "--full-refresh", "-q")
    debug = loader(tmp_path, "run", "orders", "--full-refresh", "--log-level", "debug",
                   "--log-format", "json")  # fmt: skip
    by_env = loader(tmp_path, "run", "orders", "--full-refresh", LOADER_LOG_LEVEL="info",
                    LOADER_LOG_FORMAT="logfmt")  # fmt: skip

    assert default.returncode == quiet.returncode == defaults.EXIT_REJECTED_ROWS
    assert log_events(default.stderr, "row.rejected", http_status=422)
    assert log_events(default.stderr, "run.ended", level="warning", status="partial")
    assert not log_events(default.stderr, "run.started")  # info: not at the default level
    assert not log_events(quiet.stderr) and "1 rows were rejected" in quiet.stderr
    assert log_events(debug.stderr, "run.started", job="orders")
    assert log_events(debug.stderr, "run.ended", status="partial", rows=ROWS - 1)
    logfmt = [parse_logfmt(line) for line in by_env.stderr.splitlines() if line.startswith("at=")]
    assert [line["job"] for line in logfmt if line["event"] == "run.started"] == ["orders"]


def test_a_bad_log_level_is_a_usage_error(tmp_path: Path) -> None:
    """``--log-level loud`` exits 2 naming the accepted levels."""
    ran = loader(tmp_path, "--log-level", "loud", "validate", ".")

    assert ran.returncode == defaults.EXIT_CONFIG
    assert "debug, info, warning, error" in ran.stderr


def test_an_alert_says_where_it_went(tmp_path: Path, schema: Schema, endpoint: Endpoint) -> None:
    """A failing job's alert: alert.sent with the channel and the webhook masked; the
    webhook received it."""
    secret_path = "/hooks/T0LOGS/alertsecret9f1"
    write_job(tmp_path, schema, endpoint, alerts={"webhook": endpoint.url + secret_path})
    endpoint.reject_when(lambda body: b'"id"' in body, 401)

    ran = loader(tmp_path, "--log-format", "json", "run", "orders")

    assert ran.returncode == defaults.EXIT_DELIVERY, ran.stderr
    (sent,) = log_events(ran.stderr, "alert.sent")
    assert (sent["channel"], sent["alert"], sent["job"]) == ("webhook", "failing", "orders")
    assert sent["to"] == endpoint.url + "/***" and "alertsecret9f1" not in ran.stderr
    assert sent["level"] == "warning" and sent["run_id"]
    assert not log_events(ran.stderr, "alert.not_sent")
    assert [r.path for r in endpoint.requests if r.path == secret_path] == [secret_path]


def test_an_alert_without_a_channel_says_so(
    tmp_path: Path, schema: Schema, endpoint: Endpoint
) -> None:
    """A failing job with no alert channel logs alert.not_sent, "no alert channel
    configured", and nothing claims an alert went anywhere."""
    write_job(tmp_path, schema, endpoint)
    endpoint.reject_when(lambda body: True, 401)

    ran = loader(tmp_path, "--log-format", "logfmt", "run", "orders")

    assert ran.returncode == defaults.EXIT_DELIVERY, ran.stderr
    lines = [parse_logfmt(line) for line in ran.stderr.splitlines() if line.startswith("at=")]
    (not_sent,) = [line for line in lines if line["event"] == "alert.not_sent"]
    assert not_sent["reason"] == "no alert channel configured"
    assert (not_sent["at"], not_sent["alert"], not_sent["job"]) == ("warning", "failing", "orders")
    assert not [line for line in lines if line["event"] == "alert.sent"]
