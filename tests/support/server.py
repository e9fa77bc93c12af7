"""A scriptable HTTP endpoint on loopback that records every request it receives.

Each path can be given a script of responses, consumed one per request; once the script
is used up the endpoint answers ``200``. A step is one of:

* ``503``: that status, empty body;
* ``(429, {"Retry-After": "1"})`` or ``(400, {}, b"body")``: status, headers, body;
* ``Delay(seconds, step)``: wait, then answer with ``step``;
* ``RESET``: close the connection without answering.

``reject_when(predicate, status)`` answers ``status`` to every request whose body makes
``predicate`` true (after the script is used up): a poison row, for instance.
"""

from __future__ import annotations

import gzip
import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int | None = None

    @property
    def ok(self) -> bool:
        """The endpoint acknowledged this request (answered 2xx)."""
        return self.status is not None and 200 <= self.status < 300

    @property
    def content(self) -> bytes:
        """The body, decompressed when it came gzipped."""
        if self.headers.get("Content-Encoding") == "gzip":
            return gzip.decompress(self.body)
        return self.body

    def json(self) -> Any:
        """The body parsed with exact decimals."""
        return json.loads(self.content, parse_float=Decimal)

    def rows(self) -> list[Any]:
        """The rows in the body: a JSON array, NDJSON lines, or the array of an envelope."""
        if "ndjson" in self.headers.get("Content-Type", ""):
            return [json.loads(line, parse_float=Decimal) for line in self.content.splitlines()]
        data = self.json()
        if isinstance(data, dict):
            (data,) = [value for value in data.values() if isinstance(value, list)]
        return list(data)


@dataclass(frozen=True)
class Delay:
    seconds: float
    then: Any = 200


RESET = "reset"


class Endpoint:
    """The server. ``url`` is its base; ``requests`` what arrived, in order."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._scripts: dict[str, list[Any]] = {}
        self._rejects: list[tuple[Callable[[bytes], bool], Any]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def script(self, path: str, *steps: Any) -> None:
        """Answer the next requests to ``path`` with ``steps``, then 200."""
        with self._lock:
            self._scripts[path] = list(steps)

    def reject_when(self, predicate: Callable[[bytes], bool], step: Any = 422) -> None:
        """Answer ``step`` to every request whose body satisfies ``predicate``."""
        with self._lock:
            self._rejects.append((predicate, step))

    def clear_rejections(self) -> None:
        with self._lock:
            self._rejects.clear()

    def rows(self, path: str | None = None) -> list[Any]:
        """Every row of every request, answered 2xx or not."""
        return [row for r in self.requests if path in (None, r.path) for row in r.rows()]

    def accepted_ids(self) -> list[Any]:
        """The ``id`` of every row in a request the endpoint acknowledged."""
        return [row["id"] for r in self.requests if r.ok for row in r.rows()]

    def start(self) -> Endpoint:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next_step(self, path: str, body: bytes) -> Any:
        with self._lock:
            script = self._scripts.get(path)
            if script:
                return script.pop(0)
            for predicate, step in self._rejects:
                if predicate(body):
                    return step
            return 200

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if len(body) < length:  # the client went away mid-request (killed)
                    self.close_connection = True
                    return
                path = self.path.split("?", 1)[0]
                step = endpoint._next_step(path, body)
                final = step.then if isinstance(step, Delay) else step
                status = None if final == RESET else final if isinstance(final, int) else final[0]
                with endpoint._lock:
                    endpoint.requests.append(
                        Recorded(
                            self.command,
                            self.path,
                            dict(self.headers.items()),
                            body,
                            time.monotonic(),
                            status,
                        )
                    )
                self._answer(step)

            def _answer(self, step: Any) -> None:
                if isinstance(step, Delay):
                    time.sleep(step.seconds)
                    step = step.then
                if step == RESET:
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.close_connection = True
                    self.connection.close()
                    return
                status, headers, body = (
                    (step, {}, b"")
                    if isinstance(step, int)
                    else ((*step, b"") if len(step) == 2 else step)
                )
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_PUT = do_PATCH = do_GET = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
