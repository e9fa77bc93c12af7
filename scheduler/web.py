"""The clock's HTTP port: a small server of fixed routes, the status page among them,
and ``loader ui``, which serves the same page from the state store without a clock.

With a password (``$LOADER_UI_PASSWORD``), the status page asks for HTTP basic auth:
any user name, that password. ``/healthz`` and ``/metrics`` stay open, for the platform's
health checks and for scrapers (they hold counts and job names, no errors or rows).

Every answer forbids caching, sniffing, framing and anything the page does not use
(:data:`HEADERS`). A client that sends nothing for ``timeout`` seconds is dropped, so
idle connections cannot pile up; a route that raises is logged (masked, the event
``web.failed``) and answered 500, never printed raw on stderr.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import html
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import loader

log = logging.getLogger("loader.clock")

#: An answer: status code, content type, body.
Response = tuple[int, str, bytes]
#: The paths the password guards.
PROTECTED = frozenset({"/"})
HTML = "text/html; charset=utf-8"
TEXT = "text/plain; charset=utf-8"
#: Sent with every answer: the page holds errors and sits behind a password, so it is
#: never cached, sniffed as another type, framed (clickjacking) or allowed a script;
#: its inline style is all it loads.
HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
}


class WebServer:
    """Serves ``routes`` (path -> a function answering it; the query string is ignored)
    on ``host:port`` in a daemon thread; any other path is 404. With ``password``, the
    paths in ``protected`` need HTTP basic auth with it (any user name). A connection
    silent for ``timeout`` seconds is closed. Raises :class:`OSError` when the port
    cannot be bound."""

    def __init__(
        self,
        routes: Mapping[str, Callable[[], Response]],
        port: int,
        host: str = "0.0.0.0",
        *,
        password: str | None = None,
        protected: frozenset[str] = PROTECTED,
        timeout: float = loader.defaults.UI_REQUEST_TIMEOUT,
    ) -> None:
        class Handler(_Handler):
            """Answers the routes; the password guards the protected ones."""

            def do_GET(self) -> None:
                """The route's answer, 401 without the password, 404 off the routes."""
                path = self.path.split("?")[0]
                route = routes.get(path)
                if route is None:
                    self._answer((404, TEXT, b"not found\n"))
                elif password and path in protected and not _authorized(self, password):
                    challenge = {"WWW-Authenticate": 'Basic realm="loader", charset="UTF-8"'}
                    self._answer((401, TEXT, b"password required\n"), challenge)
                else:
                    self._answer(_answer_of(route, path))

            def do_HEAD(self) -> None:
                """As GET, without the body: load balancers and uptime checks probe so."""
                self._head = True
                self.do_GET()

            def _answer(self, response: Response, headers: Mapping[str, str] = {}) -> None:
                status, content_type, body = response
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                if not getattr(self, "_head", False):
                    self.wfile.write(body)

        Handler.timeout = timeout  # the socket's: a silent client does not hold a thread
        self._httpd = _Server((host, port), Handler)
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="loader-web", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving and close the socket; waits for the serving loop to end."""
        self._httpd.shutdown()
        self._httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    """What every answer on the port shares: :data:`HEADERS`, the server's own errors
    (400, 501) included; ``Server: loader``, without Python's version; no access log."""

    def end_headers(self) -> None:
        for name, value in HEADERS.items():
            self.send_header(name, value)
        super().end_headers()

    def version_string(self) -> str:
        return "loader"

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes and page refreshes are not worth a log line each."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client gone or silent is no news; any other error is logged as an event
        (masked), not printed raw on stderr."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        loader.log_event(log, "web.failed", logging.ERROR, exc_info=True,
                         error=sys.exc_info()[1])  # fmt: skip


def _answer_of(route: Callable[[], Response], path: str) -> Response:
    """``route``'s answer; one that raises is logged as ``web.failed`` and answered 500."""
    try:
        return route()
    except Exception as exc:
        loader.log_event(log, "web.failed", logging.ERROR, exc_info=True, path=path, error=exc)
        return 500, TEXT, b"internal error: see the logs\n"


def _authorized(request: BaseHTTPRequestHandler, password: str) -> bool:
    """Whether the request's basic credentials hold ``password`` (any user name);
    compared in constant time."""
    scheme, _, encoded = (request.headers.get("Authorization") or "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    _user, _, given = decoded.partition(b":")
    return hmac.compare_digest(given, password.encode())


def ui_password(env: Mapping[str, str], port: int) -> str | None:
    """The status page's password from ``env``; without one, log that the page on
    ``port`` is public."""
    password = env.get(loader.defaults.UI_PASSWORD_ENV) or None
    if password is None:
        env_name = loader.defaults.UI_PASSWORD_ENV
        reason = f"the status page is public: set {env_name} to ask for a password"
        loader.log_event(log, "ui.public", logging.WARNING, port=port, reason=reason)
    return password


def ui_refresh(env: Mapping[str, str]) -> float:
    """Seconds between the status page's refreshes: ``$LOADER_UI_REFRESH`` from ``env``
    (a duration, ``10s``), else the default. A bad value raises :class:`JobConfigError`."""
    name = loader.defaults.UI_REFRESH_ENV
    text = env.get(name)
    if not text:
        return float(loader.defaults.UI_REFRESH)
    try:
        seconds = loader.parse_duration(text)
    except ValueError as exc:
        raise loader.JobConfigError([f"{name}={text!r}: {exc}"]) from exc
    if seconds < 1:
        raise loader.JobConfigError([f"{name}={text!r}: expected at least 1s"])
    return seconds


def status_page(
    paths: Sequence[Path],
    env: Mapping[str, str],
    store: loader.StateStore,
    clock: Callable[[], Mapping[str, Any]] | None = None,
    *,
    refresh: float = loader.defaults.UI_REFRESH,
    now: Callable[[], float] = time.time,
) -> Callable[[], Response]:
    """The route of the status page of the job files in ``paths``, reloading itself
    every ``refresh`` seconds: the report from ``store``, the clock's facts from
    ``clock`` (``None``: no clock serves it). A state store that fails makes a 503 page
    saying why."""

    def answer() -> Response:
        """Render the page now."""
        at = now()
        try:
            report = loader.status_report(
                paths, env, now=at, recent=loader.defaults.UI_RECENT_RUNS, store=store
            )
        except loader.LoaderError as exc:
            text = html.escape(str(exc))  # loader's errors hold no secrets
            body = f"<!doctype html><title>loader</title><p>state store unavailable: {text}</p>"
            return 503, HTML, body.encode()
        page = loader.render_status_page(
            report, now=at, clock=None if clock is None else clock(),
            refresh=refresh,
        )  # fmt: skip
        return 200, HTML, page.encode()

    return answer


def health_route(health: Callable[[], tuple[bool, dict[str, Any]]]) -> Callable[[], Response]:
    """The route of ``/healthz``: 200 or 503 with ``health()``'s details as JSON."""

    def answer() -> Response:
        """Ask ``health`` now."""
        healthy, details = health()
        body = json.dumps({"status": "ok" if healthy else "stalled", **details})
        return 200 if healthy else 503, "application/json", body.encode()

    return answer


def serve_status_page(
    paths: Sequence[Path],
    env: Mapping[str, str],
    port: int,
    host: str = "0.0.0.0",
    *,
    refresh: float = loader.defaults.UI_REFRESH,
    store: loader.StateStore | None = None,
) -> WebServer:
    """Serve the status page of the job files in ``paths`` at ``/`` (and ``/healthz``)
    on ``host:port`` from the state store, without a clock: next runs follow from the
    schedules. Behind ``$LOADER_UI_PASSWORD`` from ``env`` when set. Raises
    :class:`OSError` when the port cannot be bound; ``close()`` the server to stop."""
    store = store if store is not None else loader.open_state()
    routes = {
        "/": status_page(paths, env, store, refresh=refresh),
        "/healthz": health_route(lambda: (True, {})),
    }
    return WebServer(routes, port, host, password=ui_password(env, port))
