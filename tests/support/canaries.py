"""Canaries: distinct secret strings planted in every secret slot of a job, and the
means to find them again in whatever loader printed, logged, stored or sent.

A canary is found plain, URL-encoded or base64-encoded (inside a longer base64 text too:
the three alignments are searched). The basic-auth password is also searched as the
base64 of ``user:password``, the header value loader computes and sends.

:class:`CanaryServer` is one loopback server playing every remote part of a job: the
target (paths ``/t/<case>/<mode>``, each mode a way of failing that echoes the request
back), the OAuth2 token endpoint (``/oauth/<case>/...``) and the alert, Slack and
heartbeat receivers (``/hook/<case>/...``; under ``/hook/<case>/fail/`` they answer 500,
echoing the request). :class:`Mailbox` is the SMTP server alert mail goes to: it accepts
any login over plain SMTP and keeps every message. It records every request, so a test can
read what each case's alerts and heartbeats carried.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import quote, quote_plus

import psycopg
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from tests.support.httpd import Handler, LoopbackServer

#: Every secret slot of a job, and the canary planted in it.
CANARIES: dict[str, str] = {
    "db password (URL user info)": "cnry-dbpass-7f3a",
    "db password (?password=)": "cnry-dbqpass-2c8e",
    "state store password": "cnry-statepass-5b1d",
    "bearer token": "cnry-bearer/4b9d+ok",
    "basic auth password": "cnry-basicpass-81fe",
    "oauth2 client secret": "cnry-oauthsecret-3a6c",
    "oauth2 access token": "cnry-oauthtoken-d94b",
    "X-Api-Key header": "cnry-apikey+e27a/x",
    "envelope field": "cnry-envkey-6f0d",
    "target.url ?api_key=": "cnry-qskey-c13b",
    "alert webhook path": "cnry-alertpath-58d2",
    "slack webhook path": "cnry-slackpath-0b7e",
    "heartbeat path": "cnry-hbpath-9e41",
    "target URL path (Slack webhook as target)": "cnry-slacktarget-a7c3",
    "SMTP password (LOADER_SMTP_URL)": "cnry-smtppass-e5a0",
    "secret-named env var": "cnry-envsecret-4c5f",
}
BASIC_USER = "shopuser"  # not a secret: it may appear, its base64 with the password not


def _base64_cores(value: bytes) -> set[str]:
    """The base64 characters that encode ``value`` wherever it sits in a longer text:
    for each of the three alignments, the characters made of its bits only."""
    cores = set()
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + value + b"\0\0").decode()
        first = -(-8 * shift // 6)
        last = 8 * (shift + len(value)) // 6
        core = encoded[first:last]
        cores |= {core, core.replace("+", "-").replace("/", "_")}
    return cores


def forms(name: str, value: str) -> dict[str, str]:
    """Each way ``value`` may show up, by a label naming the encoding."""
    found = {
        "plain": value,
        "url-encoded": quote(value, safe=""),
        "form-encoded": quote_plus(value),
    }
    if name == "basic auth password":
        pair = f"{BASIC_USER}:{value}".encode()
        found["base64 of user:password"] = base64.b64encode(pair).decode().rstrip("=")
    for index, core in enumerate(sorted(_base64_cores(value.encode()))):
        found[f"base64 (alignment {index})"] = core
    return found


@dataclass(frozen=True)
class Leak:
    canary: str
    form: str
    where: str
    excerpt: str

    def __str__(self) -> str:
        return f"{self.canary} ({self.form}) leaked in {self.where}: ...{self.excerpt}..."


def leaks(text: str, where: str, canaries: Mapping[str, str] = CANARIES) -> list[Leak]:
    """Every canary found in ``text``, each with 60 characters either side."""
    found = []
    for name, value in canaries.items():
        for form, needle in forms(name, value).items():
            at = text.find(needle)
            if at >= 0:
                excerpt = text[max(0, at - 60) : at + len(needle) + 60]
                found.append(Leak(name, form, where, excerpt.replace("\n", "\\n")))
                break
    return found


def dump_sqlite(path: str) -> str:
    """Every row of every table of a SQLite state store, one line per row."""
    lines = []
    with sqlite3.connect(path) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            lines += [f"{table}: {_row(row)}" for row in conn.execute(f'SELECT * FROM "{table}"')]
    return "\n".join(lines)


def dump_postgres(url: str, schema: str) -> str:
    """Every row of every table in ``schema``, one line per row."""
    lines = []
    with psycopg.connect(url, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (schema,),
        ).fetchall()
        for (table,) in tables:
            rows = conn.execute(f'SELECT * FROM "{schema}"."{table}"').fetchall()
            lines += [f"{table}: {_row(row)}" for row in rows]
    return "\n".join(lines)


def _row(row: tuple[object, ...]) -> str:
    return " | ".join(_cell(value) for value in row)


def _cell(value: object) -> str:
    if isinstance(value, memoryview):
        value = bytes(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def text(self) -> str:
        headers = "\n".join(f"{k}: {v}" for k, v in self.headers.items())
        return f"{self.method} {self.path}\n{headers}\n\n{self.body.decode('utf-8', 'replace')}"


class CanaryServer(LoopbackServer):
    """Target, token endpoint and alert receivers in one; see the module docstring.

    Target modes (the path segment after the case's name): ``ok``; ``echo400``,
    ``echo401``, ``echo500`` (that status, the request echoed in the body); ``poison``
    (422 with the echo for a batch holding row 2, else 200); ``r301``, ``r307`` (a
    ``Location`` carrying the Authorization header); ``reason`` (503 whose reason phrase
    carries it); ``slow`` (answers after 1 s); ``drip`` (200 after 0.15 s).
    """

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token
        self.received: list[Received] = []
        self._lock = threading.Lock()

    def requests(self, prefix: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path.startswith(prefix)]

    def respond(self, handler: Handler, body: bytes) -> None:
        request = Received(handler.command, handler.path, dict(handler.headers.items()), body)
        with self._lock:
            self.received.append(request)
        path = handler.path.split("?", 1)[0]
        if path.startswith("/oauth/"):
            self._token(handler, request, path)
        elif path.startswith("/t/"):
            _target(handler, request, path.split("/")[3])
        elif "/fail/" in path:
            handler.reply(500, {"Content-Type": "text/plain"}, _echo(request))
        else:
            handler.reply(200)

    def _token(self, handler: Handler, request: Received, path: str) -> None:
        if path.endswith("/token-echo"):
            handler.reply(400, {"Content-Type": "text/plain"}, _echo(request))
            return
        answer = {"access_token": self.token, "token_type": "Bearer", "expires_in": 3600}
        handler.reply(200, {"Content-Type": "application/json"}, json.dumps(answer).encode())


def _echo(request: Received) -> bytes:
    return b"you sent:\n" + request.text().encode()


def _target(handler: Handler, request: Received, mode: str) -> None:
    authorization = request.headers.get("Authorization", "")
    text = {"Content-Type": "text/plain"}
    if mode in ("echo400", "echo401", "echo500"):
        handler.reply(int(mode[4:]), text, _echo(request))
    elif mode == "poison":
        poisoned = b'"id":2,' in request.body or b'"id": 2,' in request.body
        handler.reply(422 if poisoned else 200, text, _echo(request) if poisoned else b"")
    elif mode in ("r301", "r307"):
        location = "/moved/" + quote(authorization)
        handler.reply(int(mode[1:]), {"Location": location, **text}, _echo(request))
    elif mode == "reason":
        handler.send_response(503, f"Unavailable {authorization}")
        handler.send_header("Content-Length", "0")
        handler.end_headers()
    elif mode in ("slow", "drip"):
        time.sleep(1.0 if mode == "slow" else 0.15)
        handler.reply(200)
    else:
        handler.reply(200)


def planted(text: str) -> Iterator[str]:
    """The names of the canaries ``text`` carries in any form (to check they were sent)."""
    for name, value in CANARIES.items():
        if any(needle in text for needle in forms(name, value).values()):
            yield name


class Mailbox:
    """An SMTP server on loopback that accepts any login and keeps every message."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[str] = []
        self._controller = Controller(
            self, hostname="127.0.0.1", port=port,
            authenticator=_anyone, auth_require_tls=False,
        )  # fmt: skip

    def start(self) -> Mailbox:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content if isinstance(envelope.content, bytes) else b""
        head = f"MAIL FROM {envelope.mail_from} RCPT TO {', '.join(envelope.rcpt_tos)}"
        self.messages.append(f"{head}\n{content.decode('utf-8', 'replace')}\n{_decoded(content)}")
        return "250 OK"


def _decoded(content: bytes) -> str:
    """The message with its headers unfolded and its body decoded (quoted-printable or
    base64 would otherwise hide a canary, or split it across lines)."""
    message = email.message_from_bytes(content, policy=email.policy.default)
    headers = "\n".join(f"{name}: {value}" for name, value in message.items())
    parts = [part.get_payload(decode=True) for part in message.walk() if not part.is_multipart()]
    bodies = [p.decode("utf-8", "replace") for p in parts if isinstance(p, bytes)]
    return "\n".join([headers, *bodies])


def _anyone(*_args: object) -> AuthResult:
    return AuthResult(success=True)
