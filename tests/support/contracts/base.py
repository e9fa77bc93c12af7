"""What every contract stand-in shares: the request as a contract sees it, answers, the
record of each exchange, the server that keeps that record, and small validators.

A contract subclasses :class:`ContractServer` and implements ``handle(request) ->
Answer``; the HTTP plumbing is :class:`tests.support.httpd.LoopbackServer`'s.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.support.httpd import Handler, LoopbackServer

KIB = 1024


@dataclass(frozen=True)
class Request:
    """One request as a contract sees it: path without the query, headers with
    lower-case names, the body decompressed."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    def basic_auth(self) -> tuple[str, str] | None:
        """The (username, password) of ``Authorization: Basic``, or None."""
        scheme, _, value = self.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        username, _, password = decoded.partition(":")
        return username, password

    def bearer(self) -> str | None:
        scheme, _, value = self.headers.get("authorization", "").partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None

    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)


def json_answer(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Answer:
    return Answer(
        status,
        json.dumps(payload).encode(),
        {"Content-Type": "application/json", **(headers or {})},
    )


def text_answer(status: int, text: str, headers: Mapping[str, str] | None = None) -> Answer:
    return Answer(status, text.encode(), {"Content-Type": "text/html", **(headers or {})})


@dataclass(frozen=True)
class Exchange:
    """One request and the contract's verdict."""

    method: str
    path: str
    status: int
    size: int  # bytes of the (uncompressed) body
    items: int | None  # events or records in the body, when it parsed
    error: str | None  # why it was refused, or what was dropped
    headers: dict[str, str]
    at: float

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class ContractServer(LoopbackServer):
    """The HTTP plumbing and the bookkeeping; subclasses implement :meth:`handle`.

    ``handle`` runs under the server's lock, one request at a time, so contracts keep
    their state without locks of their own.
    """

    def __init__(self) -> None:
        super().__init__()
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        # Set by handle() for the exchange being recorded.
        self._items: int | None = None
        self._error: str | None = None

    @property
    def requests(self) -> int:
        return len(self.exchanges)

    @property
    def rejected(self) -> int:
        """Requests answered with a status other than 2xx."""
        return sum(not exchange.ok for exchange in self.exchanges)

    def handle(self, request: Request) -> Answer:
        raise NotImplementedError

    def note(self, *, items: int | None = None, error: str | None = None) -> None:
        """Record the item count and the error of the request being handled."""
        if items is not None:
            self._items = items
        if error is not None:
            self._error = error

    def respond(self, handler: Handler, body: bytes) -> None:
        """Decompress a gzipped body (a ``400`` if it is not gzip), then :meth:`_serve`."""
        parts = urlsplit(handler.path)
        headers = {name.lower(): value for name, value in handler.headers.items()}
        if headers.get("content-encoding", "").lower() == "gzip":
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError):
                answer = json_answer(400, {"error": "body is not valid gzip"})
                handler.reply(answer.status, answer.headers, answer.body)
                return
        request = Request(handler.command, parts.path, parse_qs(parts.query), headers, body)
        answer = self._serve(request)
        handler.reply(answer.status, answer.headers, answer.body)

    def _serve(self, request: Request) -> Answer:
        with self._lock:
            self._items, self._error = None, None
            answer = self.handle(request)
            self.exchanges.append(
                Exchange(
                    request.method,
                    request.path,
                    answer.status,
                    len(request.body),
                    self._items,
                    self._error,
                    request.headers,
                    time.monotonic(),
                )
            )
            return answer


def is_int(value: Any) -> bool:
    """An integer, and not a bool (JSON's ``true`` is not a number)."""
    return isinstance(value, int) and not isinstance(value, bool)


def nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def json_size(value: Any) -> int:
    """Bytes of ``value`` as compact UTF-8 JSON, as the APIs measure an event."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
