"""A local HTTP endpoint that accepts every request and reports what arrived.

``loader receive`` serves it for trying jobs without a real API; ``loader demo`` starts
one in a thread. It answers ``200 {"received": N}`` to every request.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    """One request as it arrived. ``rows`` is ``None`` when the body is not row JSON."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    rows: int | None


def count_rows(body: bytes, content_type: str) -> int | None:
    """Rows in a request body: NDJSON lines, a JSON array, or the array in an envelope."""
    try:
        if "ndjson" in content_type:
            return sum(1 for line in body.splitlines() if line.strip())
        data: Any = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, list):
        return len(data)
    if isinstance(data, dict):
        arrays = [value for value in data.values() if isinstance(value, list)]
        if len(arrays) == 1:
            return len(arrays[0])
    return None


class Receiver:
    """An HTTP server on ``host:port`` (port 0 picks a free one) that accepts every request.

    ``on_request`` is called once per request, from the server's threads.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        on_request: Callable[[Received], None] | None = None,
    ) -> None:
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._on_request = on_request
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8765``."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def serve_forever(self) -> None:
        """Serve in this thread until :meth:`stop` is called from another."""
        self._server.serve_forever(poll_interval=0.2)

    def start(self) -> Receiver:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _record(self, received: Received) -> None:
        with self._lock:
            self.received.append(received)
        if self._on_request is not None:
            self._on_request(received)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _receive(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                content_type = self.headers.get("Content-Type", "")
                received = Received(
                    method=self.command,
                    path=self.path,
                    headers=dict(self.headers.items()),
                    body=body,
                    rows=count_rows(body, content_type) if body else 0,
                )
                receiver._record(received)
                reply = json.dumps({"received": received.rows}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            do_POST = do_PUT = do_PATCH = do_DELETE = _receive

            def log_message(self, format: str, *args: Any) -> None:
                """Silence the default per-request stderr line; ``on_request`` reports."""

        return Handler
