"""Secrets stay secret at every exit, and only secrets are masked: the ``loader`` command
against a real database and a real endpoint that echoes what it was sent."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Schema
from tests.support.server import Echo, Endpoint

PASSWORD = "pw-canary-5e0b7a"
TOKEN = "tok-canary-0a81d4c9"
SLACK_PATH = "/services/T0CANARY/B0CANARY/slackcanary7c1e"
ALERT_PATH = "/hooks/alertcanary41f2"
HEARTBEAT_PATH = "/ping/hbcanary-93d0"


def loader(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run the CLI as a user would; its stdout and stderr together."""
    done = subprocess.run(
        [sys.executable, "-m", "loader", *args],
        cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return done.stdout + done.stderr


def write_job(tmp_path: Path, schema: Schema, target: str, extra: str = "") -> Path:
    """A job posting one row per request from a 2-row table, two attempts per request."""
    schema.execute("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 2) g")
    path = tmp_path / "job.yml"
    path.write_text(
        textwrap.dedent(
            f"""\
            name: secrets
            source:
              url: {schema.url}
              query: SELECT id FROM {schema.table("t")} ORDER BY id
            batch:
              size: 1
            retry:
              attempts: 2
              backoff: 10ms
            concurrency: 1
            target:
            """
        )
        + textwrap.indent(textwrap.dedent(target), "  ")
        + textwrap.dedent(extra)
    )
    return path


def state_dump() -> str:
    """Every row of every table of the CLI's state store (SQLite), as text."""
    with sqlite3.connect(os.environ["LOADER_STATE_URL"].removeprefix("sqlite:///")) as conn:
        tables = [name for (name,) in conn.execute("SELECT name FROM sqlite_master "
                                                   "WHERE type = 'table'")]  # fmt: skip
        return "\n".join(
            repr(row) for table in tables for row in conn.execute(f'SELECT * FROM "{table}"')
        )


def received(endpoint: Endpoint, prefix: str) -> str:
    """The bodies the endpoint received on paths starting with ``prefix``."""
    return "\n".join(r.body.decode() for r in endpoint.requests if r.path.startswith(prefix))


def outputs(tmp_path: Path, job: Path, env: dict[str, str] | None = None) -> list[str]:
    """What the user reads after a run: its output, history, dead letters and status."""
    return [
        loader("-v", "run", str(job), cwd=tmp_path, env=env),
        loader("-v", "--log-format", "json", "run", str(job), cwd=tmp_path, env=env),
        loader("history", str(job), cwd=tmp_path, env=env),
        loader("deadletter", "list", str(job), cwd=tmp_path, env=env),
        loader("deadletter", "replay", str(job), cwd=tmp_path, env=env),
        loader("status", "--json", str(tmp_path), cwd=tmp_path, env=env),
    ]


def assert_hidden(texts: list[str], *secrets: str) -> None:
    for number, text in enumerate(texts):
        for secret in secrets:
            assert secret not in text, (number, secret, text)


def test_basic_auth_as_sent_is_masked_and_the_username_stays_readable(
    tmp_path: Path, schema: Schema, endpoint: Endpoint
) -> None:
    """The Basic header echoed back (body, Location) is masked in every output, the
    state store and alerts, plain and base64; the username and user agent stay readable."""
    encoded = base64.b64encode(f"shop:{PASSWORD}".encode()).decode()
    path = "/v1/buckets/shop/events"
    target = f"""\
        url: {endpoint.url}{path}
        auth: {{basic: {{username: shop, password: {PASSWORD}}}}}
        """
    alerts = f"alerts: {{webhook: '{endpoint.url}/alerts'}}\n"
    job = write_job(tmp_path, schema, target, alerts)
    endpoint.script(
        path, Echo(500), Echo(400), Echo(301, "location"), Echo(301, "location"), Echo(400)
    )

    texts = [*outputs(tmp_path, job), state_dump(), received(endpoint, "/alerts")]

    assert endpoint.requests[0].headers["Authorization"] == f"Basic {encoded}"
    assert_hidden(texts, encoded, PASSWORD)
    assert "Authorization: ***" in texts[0]
    assert f"{path} answered 301" in texts[0]
    assert "User-Agent: loader/" in texts[3]
    assert '"event": "failing"' in texts[-1]


def test_oauth2_tokens_are_masked_in_a_location_and_a_reason_phrase(
    tmp_path: Path, schema: Schema, endpoint: Endpoint
) -> None:
    """A fetched OAuth2 token echoed in a redirect's Location or in the reason phrase
    appears in no output, history row, state store column or alert."""
    body = json.dumps({"access_token": TOKEN, "expires_in": 3600}).encode()
    endpoint.script("/token", *[(200, {"Content-Type": "application/json"}, body)] * 3)
    endpoint.script("/api", Echo(307, "location"), *[Echo(503, "reason")] * 4)
    target = f"""\
        url: {endpoint.url}/api
        auth:
          oauth2: {{token_url: '{endpoint.url}/token', client_id: cid, client_secret: cs-x1}}
        """
    alerts = f"alerts: {{webhook: '{endpoint.url}/alerts'}}\n"
    job = write_job(tmp_path, schema, target, alerts)

    texts = [*outputs(tmp_path, job)[:3], state_dump(), received(endpoint, "/alerts")]

    assert endpoint.requests[1].headers["Authorization"] == f"Bearer {TOKEN}"
    assert_hidden(texts, TOKEN)
    assert "redirecting to /moved/Bearer ***" in texts[0]
    assert "answered 503 Unavailable Bearer ***" in texts[1]
    assert "Bearer ***" in texts[2] and "Bearer ***" in texts[-1]


def test_show_masks_secret_query_parameters(tmp_path: Path, schema: Schema) -> None:
    """`loader show` masks ?token=, ?password= and ?api_key= in source and target URLs,
    and leaves other parameters readable."""
    target = f"url: 'http://127.0.0.1:9/in?token={TOKEN}&api_key={TOKEN}x&page=2'\n"
    job = write_job(tmp_path, schema, target)
    text = job.read_text().replace(
        f"url: {schema.url}", f"url: '{schema.url}?password={PASSWORD}&application_name=ld'"
    )
    job.write_text(text)

    shown = loader("show", str(job), cwd=tmp_path)

    assert_hidden([shown], TOKEN, PASSWORD)
    assert "token=***&api_key=***&page=2" in shown
    assert "password=***&application_name=ld" in shown


def test_webhook_and_heartbeat_paths_never_show(
    tmp_path: Path, schema: Schema, endpoint: Endpoint
) -> None:
    """A target read from ${SLACK_WEBHOOK_URL}, the alert webhook and the heartbeat URL
    show as scheme and host plus /***: in retry lines, errors, history, the state store,
    alerts and `show`."""
    host = endpoint.url
    target = "url: ${SLACK_WEBHOOK_URL}\nper_row: true\n"
    monitoring = f"alerts: {{webhook: '{host}{ALERT_PATH}'}}\nheartbeat: '{host}{HEARTBEAT_PATH}'\n"
    job = write_job(tmp_path, schema, target, monitoring)
    endpoint.script(SLACK_PATH, *[Echo(503)] * 8)
    env = {"SLACK_WEBHOOK_URL": host + SLACK_PATH}

    texts = [
        *outputs(tmp_path, job, env)[:3],
        loader("show", str(job), cwd=tmp_path, env=env),
        state_dump(),
        received(endpoint, "/hooks"),
    ]

    assert any(r.path == HEARTBEAT_PATH + "/fail" for r in endpoint.requests)
    assert_hidden(texts, SLACK_PATH, "slackcanary", "alertcanary", "hbcanary")
    assert f"POST {host}/*** answered 503" in texts[0]
    assert f"webhook: {host}/***" in texts[3] and f"heartbeat: {host}/***" in texts[3]
    assert f"{host}/***" in texts[-1]


@pytest.mark.parametrize("username", ["shop", "loader"])
def test_a_username_is_not_a_secret(
    tmp_path: Path, schema: Schema, endpoint: Endpoint, username: str
) -> None:
    """With basic auth, the username's text stays readable in URLs and the user agent
    of a dry run's output; the password and the header are masked."""
    target = f"""\
        url: {endpoint.url}/v1/buckets/shop/events
        auth: {{basic: {{username: {username}, password: {PASSWORD}}}}}
        """
    job = write_job(tmp_path, schema, target)

    shown = loader("run", "--dry-run", str(job), cwd=tmp_path)

    assert_hidden([shown], PASSWORD)
    assert "/v1/buckets/shop/events" in shown
    assert "User-Agent: loader/" in shown
    assert "Authorization: ***" in shown


def test_a_secret_is_masked_whole_not_inside_words(tmp_path: Path, schema: Schema) -> None:
    """A secret value is masked where it stands alone, never inside a longer word."""
    target = "url: http://127.0.0.1:9/in\nheaders: {X-Api-Key: shop}\n"
    job = write_job(tmp_path, schema, target, "alerts: {remind_after: 1h}\n")
    text = job.read_text().replace("query: SELECT id", "query: SELECT id, 'shopping' AS shopping")
    job.write_text(text)

    shown: Any = loader("show", str(job), cwd=tmp_path)

    assert "X-Api-Key: '***'" in shown or "X-Api-Key: ***" in shown
    assert "'shopping' AS shopping" in shown
