"""The clock's small web server on a real loopback socket: HEAD as well as GET, the
headers every answer carries, silent clients dropped, a failing route answered 500."""

from __future__ import annotations

import io
import json
import logging
import socket
import time

import httpx
import pytest

from loader.logs import configure_logging
from loader.scheduler import WebServer
from loader.scheduler.web import HEADERS


def test_head_answers_like_get_without_a_body() -> None:
    """HEAD /healthz (an uptime check's probe) gets GET's status and headers, no body;
    HEAD on a guarded page still asks for the password."""
    routes = {
        "/healthz": lambda: (200, "text/plain", b"ok\n"),
        "/": lambda: (200, "text/html", b"<p>page</p>"),
    }
    server = WebServer(routes, 0, "127.0.0.1", password="s3cret")
    try:
        base = f"http://127.0.0.1:{server.port}"
        with httpx.Client(base_url=base) as client:
            head = client.head("/healthz")
            assert (head.status_code, head.content) == (200, b"")
            assert head.headers["Content-Length"] == "3"
            assert client.get("/healthz").content == b"ok\n"
            assert client.head("/").status_code == 401
            assert client.head("/nowhere").status_code == 404
            assert client.get("/", auth=("any", "s3cret")).content == b"<p>page</p>"
    finally:
        server.close()


def test_every_answer_forbids_caching_sniffing_framing_and_scripts() -> None:
    """The page, a 401, a 404, /healthz and the server's own 501 (an unknown method) all
    carry no-store, nosniff, DENY and a policy allowing no script and no framing; the
    Server header does not name Python's version."""
    routes = {"/": lambda: (200, "text/html", b"<p>page</p>"), "/healthz": lambda: (200, "a", b"")}
    server = WebServer(routes, 0, "127.0.0.1", password="s3cret")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}") as client:
            answers = [client.get("/", auth=("any", "s3cret")), client.get("/"),
                       client.get("/nowhere"), client.get("/healthz?verbose=1"),
                       client.request("BREW", "/")]  # fmt: skip
    finally:
        server.close()
    assert [answer.status_code for answer in answers] == [200, 401, 404, 200, 501]
    for answer in answers:
        for name, value in HEADERS.items():
            assert answer.headers.get(name) == value, (answer.status_code, name)
        assert "Python" not in answer.headers["Server"]
    policy = HEADERS["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert "script-src" not in policy  # default-src 'none' forbids every script


def test_a_silent_client_is_dropped_and_others_are_served_meanwhile() -> None:
    """A connection that sends nothing is closed after the timeout, not held forever
    (each held one is a thread and a file descriptor of the clock)."""
    server = WebServer({"/healthz": lambda: (200, "text/plain", b"ok\n")}, 0, "127.0.0.1",
                       timeout=0.5)  # fmt: skip
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as silent:
            silent.settimeout(10)
            assert httpx.get(f"http://127.0.0.1:{server.port}/healthz").status_code == 200
            started = time.monotonic()
            assert silent.recv(1024) == b""  # closed by the server, with no answer
            assert time.monotonic() - started < 5
    finally:
        server.close()


def test_a_route_that_raises_is_a_500_and_a_masked_event_not_a_raw_traceback(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The client gets a 500 (not a dropped connection); the log gets ``web.failed`` with
    the URL's password masked; nothing is printed raw on stderr."""

    def broken() -> tuple[int, str, bytes]:
        raise RuntimeError("cannot reach postgresql://app:pw-web-canary-9@db/prod")

    stream = io.StringIO()
    configure_logging(logging.INFO, stream, "json")
    server = WebServer({"/": broken}, 0, "127.0.0.1")
    try:
        answer = httpx.get(f"http://127.0.0.1:{server.port}/")
    finally:
        server.close()
        logging.basicConfig(handlers=[logging.NullHandler()], force=True)
    assert answer.status_code == 500 and b"pw-web-canary" not in answer.content
    logged = [json.loads(line) for line in stream.getvalue().splitlines()]
    failed = [line for line in logged if line["event"] == "web.failed"]
    assert len(failed) == 1 and failed[0]["path"] == "/", logged
    assert "postgresql://app:***@db/prod" in failed[0]["error"]
    assert "pw-web-canary" not in stream.getvalue()
    out, err = capfd.readouterr()
    assert "pw-web-canary" not in out + err and "Traceback" not in err
