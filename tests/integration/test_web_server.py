"""The clock's small web server on a real loopback socket: HEAD as well as GET."""

from __future__ import annotations

import httpx

from loader.scheduler import WebServer


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
