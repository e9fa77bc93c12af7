"""Playing one failure kind with every canary planted, and collecting every output.

A :class:`Case` is a failure kind: the job's target mode and auth scheme, the commands
run first to set the scene (``setup``), and the command under test, run twice (text
logs, then JSON logs). :func:`play` runs it through the real CLI in a directory of its
own with a state store of its own (SQLite, or a PostgreSQL schema), then gathers the
outputs to search: each command's stdout and stderr, every state store table, and every
alert, Slack message and heartbeat the loopback receivers got.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from loader import open_state
from tests.support.canaries import (
    BASIC_USER,
    CANARIES,
    CanaryServer,
    Mailbox,
    Received,
    dump_postgres,
    dump_sqlite,
)

C = CANARIES
#: Environment variables a developer's shell may carry that would change the jobs.
_UNSET = ("LOADER_ALERT_URL", "LOADER_ALERT_SLACK_URL", "LOADER_EXECUTOR", "LOADER_QUEUE_URL",
          "PORT")  # fmt: skip
#: Which canary a receiver's own path carries (it is the credential, sent by design).
_OWN_PATH = {"/alert/": C["alert webhook path"], "/services/": C["slack webhook path"],
             "/ping/": C["heartbeat path"]}  # fmt: skip


@dataclass(frozen=True)
class Case:
    """One failure kind. ``command`` and ``setup`` name the job file ``{job}``."""

    name: str
    command: tuple[str, ...]
    exit_code: int
    mode: str = "ok"
    auth: str = "bearer"
    setup: tuple[tuple[str, ...], ...] = ()
    state: str = "sqlite"
    rows: int = 3
    query: str | None = None
    job: dict[str, Any] = field(default_factory=dict)
    db_down: bool = False
    state_down: bool = False
    hold_lock: bool = False
    sigterm: bool = False
    hooks_fail: bool = False
    slack_target: bool = False

    @property
    def runs_a_job(self) -> bool:
        """The case sends rows, so alerts, heartbeats and stored runs are outputs too."""
        commands = (self.command, *self.setup)
        return any(c[0] == "run" and "--dry-run" not in c or "replay" in c for c in commands)


@dataclass
class Played:
    outputs: dict[str, str] = field(default_factory=dict)
    exit_codes: list[int] = field(default_factory=list)
    target_requests: list[Received] = field(default_factory=list)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def job_spec(case: Case, server: CanaryServer, database_url: str) -> dict[str, Any]:
    """The job with a canary in every secret slot its auth scheme has."""
    db = urlsplit(database_url)
    port = closed_port() if case.db_down else db.port
    source_url = (f"postgresql://{db.username}:{C['db password (URL user info)']}@{db.hostname}"
                  f":{port}{db.path}?password={C['db password (?password=)']}")  # fmt: skip
    hooks = f"{server.url}/hook/{case.name}" + ("/fail" if case.hooks_fail else "")
    headers = {"X-Api-Key": C["X-Api-Key header"], "X-Partner": "${PARTNER_SECRET}"}
    target: dict[str, Any] = {
        "url": "${SLACK_WEBHOOK_URL}" if case.slack_target else target_url(case, server),
        "timeout": "300ms",
        "headers": headers,
        "envelope": {"key": "rows", "fields": {"write_key": C["envelope field"]}},
    }
    if case.auth == "bearer":
        headers["Authorization"] = f"Bearer {C['bearer token']}"
    elif case.auth == "basic":
        target["auth"] = {"basic": {"username": BASIC_USER, "password": C["basic auth password"]}}
    else:
        token_path = "token-echo" if case.auth == "oauth2-echo" else "token"
        target["auth"] = {"oauth2": {"token_url": f"{server.url}/oauth/{case.name}/{token_path}",
                                     "client_id": "loader-client",
                                     "client_secret": C["oauth2 client secret"]}}  # fmt: skip
    return {
        "name": f"canary_{case.name}",
        "source": {"url": source_url, "query": case.query or _rows(case.rows)},
        "target": target,
        "batch": {"size": 5},
        "retry": {"attempts": 2, "backoff": "10ms", "max_backoff": "20ms"},
        "concurrency": 1,
        "alerts": {"webhook": f"{hooks}/alert/{C['alert webhook path']}",
                   "slack": f"{hooks}/services/T0/B0/{C['slack webhook path']}"},
        "heartbeat": f"{hooks}/ping/{C['heartbeat path']}",
        **case.job,
    }  # fmt: skip


def _rows(count: int) -> str:
    return f"SELECT g AS id, 'row ' || g AS note FROM generate_series(1, {count}) g"


def target_url(case: Case, server: CanaryServer) -> str:
    """The case's target; for ``slack_target``, a Slack-like path carrying a canary."""
    path = f"/t/{case.name}/{case.mode}"
    if case.slack_target:
        path += f"/services/T0/B0/{C['target URL path (Slack webhook as target)']}"
    return f"{server.url}{path}?api_key={C['target.url ?api_key=']}"


@dataclass
class Lab:
    """What every case shares: the server, the test database, a directory per case."""

    server: CanaryServer
    mailbox: Mailbox
    database_url: str
    root: Path

    def state_url(self, case: Case) -> tuple[str, str | None]:
        """The case's state store URL, and its PostgreSQL schema (None for SQLite)."""
        if case.state == "sqlite":
            return f"sqlite:///{self.root / case.name / 'state.db'}", None
        db = urlsplit(self.database_url)
        schema = f"canary_{case.name}_{os.getpid()}"
        port = closed_port() if case.state_down else db.port
        url = (f"postgresql://{db.username}:{C['state store password']}@{db.hostname}:{port}"
               f"{db.path}?options=-csearch_path%3D{schema}")  # fmt: skip
        return url, schema


def play(case: Case, lab: Lab) -> Played:
    """Run ``case`` and collect its outputs."""
    workdir = lab.root / case.name
    workdir.mkdir(parents=True)
    job = workdir / "job.yml"
    job.write_text(yaml.safe_dump(job_spec(case, lab.server, lab.database_url)))
    state_url, schema = lab.state_url(case)
    env = _environment(case, lab, state_url)
    played = Played()
    lease = None
    if case.hold_lock:
        holder = open_state(state_url)
        lease = holder.acquire(f"canary_{case.name}", "holder-run")
    try:
        setup = []
        for args in case.setup:
            code, out, err = _loader(("--log-format", "text", *args), job, workdir, env)
            setup.append(f"$ loader {' '.join(args)} -> {code}\n{out}\n{err}")
        played.outputs["setup commands"] = "\n".join(setup)
        for log_format in ("text", "json"):
            args = ("--log-format", log_format, "-v", *case.command)
            if case.sigterm:
                code, out, err = _interrupted(args, job, workdir, env, lab.server, case.name)
            else:
                code, out, err = _loader(args, job, workdir, env)
            played.exit_codes.append(code)
            played.outputs[f"{log_format} logs: stdout"] = out
            played.outputs[f"{log_format} logs: stderr"] = err
    finally:
        if lease is not None:
            holder.release(lease)
            holder.close()
    _gather(case, lab, played, state_url, schema)
    return played


def _environment(case: Case, lab: Lab, state_url: str) -> dict[str, str]:
    """The process environment: the state store, the secret variables, alert mail."""
    smtp_port = closed_port() if case.hooks_fail else lab.mailbox.port
    smtp_password = C["SMTP password (LOADER_SMTP_URL)"]
    env = {k: v for k, v in os.environ.items() if k not in _UNSET}
    return env | {
        "LOADER_STATE_URL": state_url,
        "PARTNER_SECRET": C["secret-named env var"],
        "SLACK_WEBHOOK_URL": target_url(case, lab.server),
        "NO_COLOR": "1",
        "LOADER_ALERT_EMAIL": "ops@example.com",
        "LOADER_ALERT_FROM": "loader@example.com",
        "LOADER_SMTP_URL": f"smtp://alerts:{smtp_password}@127.0.0.1:{smtp_port}",
    }


def _gather(case: Case, lab: Lab, played: Played, state_url: str, schema: str | None) -> None:
    if case.runs_a_job and not case.state_down:
        if schema is None:
            played.outputs["state store tables"] = dump_sqlite(state_url.removeprefix("sqlite:///"))
        else:
            played.outputs["state store tables"] = dump_postgres(lab.database_url, schema)
    hooks = lab.server.requests(f"/hook/{case.name}/")
    played.outputs["alerts and slack"] = "\n\n".join(
        _without_own_path(r) for r in hooks if "/ping/" not in r.path
    )
    played.outputs["heartbeats"] = "\n\n".join(
        _without_own_path(r) for r in hooks if "/ping/" in r.path
    )
    played.target_requests = lab.server.requests(f"/t/{case.name}/")
    mine = re.compile(rf"canary_{case.name}\b")
    played.outputs["alert mail"] = "\n\n".join(m for m in lab.mailbox.messages if mine.search(m))


def _without_own_path(request: Received) -> str:
    """The request as text, less the canary its receiver's URL carries by design."""
    text = request.text()
    for route, canary in _OWN_PATH.items():
        if route in request.path:
            head, rest = text.split("\n", 1)
            text = head.replace(canary, "<own path>", 1) + "\n" + rest
    return text


def _loader(
    args: tuple[str, ...], job: Path, cwd: Path, env: dict[str, str]
) -> tuple[int, str, str]:
    argv = [sys.executable, "-m", "loader", *(a.replace("{job}", str(job)) for a in args)]
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout, done.stderr


def _interrupted(
    args: tuple[str, ...], job: Path, cwd: Path, env: dict[str, str],
    server: CanaryServer, name: str,
) -> tuple[int, str, str]:  # fmt: skip
    """The command, sent SIGTERM once its first request reached the target."""
    argv = [sys.executable, "-m", "loader", *(a.replace("{job}", str(job)) for a in args)]
    before = len(server.requests(f"/t/{name}/"))
    process = subprocess.Popen(argv, cwd=cwd, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while len(server.requests(f"/t/{name}/")) <= before and time.monotonic() < deadline:
            if process.poll() is not None:
                break
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, out, err
