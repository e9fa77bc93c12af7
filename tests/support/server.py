"""A scriptable HTTP endpoint on loopback that records every request it receives.

Each path can be given a script of responses, consumed one per request; once the script
is used up the endpoint answers ``200``. A step is one of:

* ``503``: that status, empty body;
* ``(429, {"Retry-After": "1"})`` or ``(400, {}, b"body")``: status, headers, body;
* ``Delay(seconds, step)``: wait, then answer with ``step``;
* ``RESET``: close the connection without answering;
* ``Echo(status, into)``: that status, echoing the request's headers back ``into`` the
  body (every header, one per line), the ``Location`` (``/moved/`` and the
  ``Authorization`` value) or the reason phrase (``Unavailable`` and that value), as
  careless servers do.

``reject_when(predicate, status)`` answers ``status`` to every request whose body makes
``predicate`` true (after the script is used up): a poison row, for instance.

The HTTP plumbing (loopback, free port, thread, reading bodies) is
:class:`tests.support.httpd.LoopbackServer`'s.
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
from typing import Any

from tests.support.httpd import Handler, LoopbackServer


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


@dataclass(frozen=True)
class Trickle:
    """Answer ``status`` slowly: the status line at once, then the ``headers`` (when
    ``headers`` is true) or the body one byte every ``seconds``, as a server that keeps
    a connection busy without ever letting a read time out."""

    seconds: float
    body: bytes = b'{"ok":true}'
    headers: bool = False
    status: int = 200

    def play(self, handler: Handler) -> None:
        head = (f"HTTP/1.1 {self.status} OK\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(self.body)}\r\n\r\n").encode()  # fmt: skip
        slow, fast = (head, b"") if self.headers else (b"", head)
        try:
            handler.wfile.write(fast)
            handler.wfile.flush()
            for index in range(len(slow)):
                handler.wfile.write(slow[index : index + 1])
                handler.wfile.flush()
                time.sleep(self.seconds)
            for index in range(len(self.body)):
                time.sleep(self.seconds)
                handler.wfile.write(self.body[index : index + 1])
                handler.wfile.flush()
        except OSError:
            pass  # the client gave up: that is the point
        handler.close_connection = True


@dataclass(frozen=True)
class Echo:
    """Answer ``status``, echoing the request's headers ``into`` "body", "location" or
    "reason"."""

    status: int
    into: str = "body"

    def play(self, handler: Handler) -> None:
        authorization = handler.headers.get("Authorization", "")
        if self.into == "location":
            handler.reply(self.status, {"Location": f"/moved/{authorization}"})
        elif self.into == "reason":
            handler.reply(self.status, reason=f"Unavailable {authorization}")
        else:
            lines = "".join(f"{name}: {value}\n" for name, value in handler.headers.items())
            handler.reply(self.status, {"Content-Type": "text/plain"}, lines.encode())


class Endpoint(LoopbackServer):
    """The server. ``url`` is its base; ``requests`` what arrived, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Recorded] = []
        self._scripts: dict[str, list[Any]] = {}
        self._rejects: list[tuple[Callable[[bytes], bool], Any]] = []
        self._lock = threading.Lock()

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

    def _next_step(self, path: str, body: bytes) -> Any:
        with self._lock:
            script = self._scripts.get(path)
            if script:
                return script.pop(0)
            for predicate, step in self._rejects:
                if predicate(body):
                    return step
            return 200

    def respond(self, handler: Handler, body: bytes) -> None:
        """Record the request (with the status it is about to get), then play its step."""
        path = handler.path.split("?", 1)[0]
        step = self._next_step(path, body)
        final = step.then if isinstance(step, Delay) else step
        status = (
            None if final == RESET
            else final.status if isinstance(final, Echo | Trickle)
            else final if isinstance(final, int) else final[0]
        )  # fmt: skip
        with self._lock:
            self.requests.append(
                Recorded(
                    handler.command,
                    handler.path,
                    dict(handler.headers.items()),
                    body,
                    time.monotonic(),
                    status,
                )
            )
        _play(handler, step)


def _play(handler: Handler, step: Any) -> None:
    """Answer with ``step``: a status, a (status, headers[, body]) tuple, a Delay or RESET."""
    if isinstance(step, Delay):
        time.sleep(step.seconds)
        step = step.then
    if isinstance(step, Echo | Trickle):
        step.play(handler)
        return
    if step == RESET:
        # Linger 0: closing sends a TCP RST, as a dropped connection does.
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.close_connection = True
        handler.connection.close()
        return
    status, headers, body = (
        (step, {}, b"") if isinstance(step, int) else ((*step, b"") if len(step) == 2 else step)
    )
    handler.reply(status, headers, body)
