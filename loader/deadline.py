"""One deadline for a whole HTTP exchange: connect, send, and read the answer to its end.

httpx's timeouts bound each network operation, so an endpoint that trickles its answer
(a byte a second under a 2 s read timeout) holds a request for as long as it likes.
Here every operation of the sending thread's current exchange waits at most until its
deadline: the connection pool's network backend is wrapped so each connect, read and
write gets ``min(its timeout, time left)``, and one past the deadline raises httpcore's
timeout, which httpx reports as a timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx

from loader.logs import event

log = logging.getLogger("loader")

_local = threading.local()  # .deadline: the monotonic time the current exchange ends


@contextmanager
def exchange(seconds: float) -> Iterator[None]:
    """Bound the network operations the current thread makes in the block to
    ``seconds`` in all (through transports made by :func:`bounded`)."""
    _local.deadline = time.monotonic() + seconds
    try:
        yield
    finally:
        _local.deadline = None


def expired() -> bool:
    """True when the current exchange's deadline has passed."""
    deadline = getattr(_local, "deadline", None)
    return deadline is not None and time.monotonic() >= deadline


def _left(timeout: float | None, error: type[Exception]) -> float | None:
    """``timeout``, cut to the time left before the deadline; ``error`` once it passed."""
    deadline: float | None = getattr(_local, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the exchange's deadline passed")
    return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    """A connection whose reads and writes end by the deadline."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        left = _left(timeout, httpcore.ConnectTimeout)
        return _Stream(self._stream.start_tls(ssl_context, server_hostname, left))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    """Opens connections (by the deadline) whose operations end by the deadline."""

    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        left = _left(timeout, httpcore.ConnectTimeout)
        return _Stream(self._backend.connect_tcp(host, port, left, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        left = _left(timeout, httpcore.ConnectTimeout)
        return _Stream(self._backend.connect_unix_socket(path, left, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def bounded(transport: httpx.HTTPTransport) -> httpx.HTTPTransport:
    """``transport`` with its connections bound by :func:`exchange`'s deadline.

    httpx offers no hook for the network backend, so it is set on the transport's
    connection pool (before its first connection); if a later httpx lays that out
    otherwise, the transport is returned as is and only the reading of answers is
    bounded (see :func:`expired`)."""
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if isinstance(backend, httpcore.NetworkBackend):
        pool._network_backend = _Backend(backend)  # type: ignore[union-attr]
    else:
        event(
            log,
            "http.deadline_unbounded",
            logging.DEBUG,
            reason="httpx's connection pool has no network backend",
        )
    return transport
