"""An HTTP server on loopback, in a thread, that hands each request to one method.

:class:`LoopbackServer` is the plumbing shared by the test servers
(:class:`tests.support.server.Endpoint`, :class:`tests.support.contracts.ContractServer`):
a :class:`~http.server.ThreadingHTTPServer` bound to ``127.0.0.1`` on a free port when
constructed, serving in a daemon thread from :meth:`~LoopbackServer.start` until
:meth:`~LoopbackServer.stop`. Every method (GET, POST, PUT, PATCH, DELETE) is read the same
way: the body is read in full (``Content-Length``) and passed with the handler to
:meth:`~LoopbackServer.respond`, which a subclass implements. A body cut short means the
client went away mid-request (killed, for instance): the connection is closed and
``respond`` is not called.

Handlers speak HTTP/1.1, so clients keep their connections alive as they would with a
real API, and log nothing. Given an :class:`ssl.SSLContext`, the server speaks HTTPS.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class Handler(BaseHTTPRequestHandler):
    """One connection's handler: reads each request's body and passes it on."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if len(body) < length:  # the client went away mid-request
            self.close_connection = True
            return
        self.server.owner.respond(self, body)

    do_POST = do_PUT = do_PATCH = do_GET = do_DELETE = _handle

    def reply(
        self,
        status: int,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        reason: str | None = None,
    ) -> None:
        """Answer ``status`` (with ``reason`` as its phrase, if given) with ``headers``,
        ``body`` and its ``Content-Length``."""
        self.send_response(status, reason)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    """The standard server, knowing which :class:`LoopbackServer` answers its requests."""

    def __init__(self, owner: LoopbackServer) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", 0), Handler)


class LoopbackServer:
    """A server on ``127.0.0.1:<free port>``; subclasses implement :meth:`respond`.

    The port is bound when the object is made, so :attr:`url` is known before
    :meth:`start`. Requests are served concurrently, one daemon thread per connection:
    ``respond`` takes its own lock for shared state.
    """

    def __init__(self, *, tls: ssl.SSLContext | None = None) -> None:
        self._server = _Server(self)
        self._server.daemon_threads = True
        self._scheme = "http"
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
            self._scheme = "https"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The base URL, ``http://127.0.0.1:<port>`` (``https`` with TLS)."""
        host, port = self._server.server_address[:2]
        return f"{self._scheme}://{host!s}:{port}"

    def start(self) -> Self:
        """Serve in the background; returns the server, so ``Server().start()`` reads."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def respond(self, handler: Handler, body: bytes) -> None:
        """Answer the request ``handler`` holds (``command``, ``path``, ``headers``), whose
        body is ``body``, by calling ``handler.reply`` or closing the connection."""
        raise NotImplementedError
