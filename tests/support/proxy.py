"""A TCP proxy on loopback that a test can cut, as a failover or a dead network does.

``Proxy(("127.0.0.1", 5432))`` listens on a free loopback port and forwards every
connection to the upstream address, byte for byte, in threads of its own. ``cut()``
closes both sockets of every open connection at once (the client sees its connection
drop mid-query); new connections are still accepted and forwarded afterwards, as a
database that came back would be. ``refuse(seconds)`` also turns new connections away
for a while (a failover in progress). ``via(url)`` rewrites a database URL to go through
the proxy.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Self
from urllib.parse import urlsplit, urlunsplit


class Proxy:
    """Forwards loopback connections to ``upstream``; ``sent`` counts bytes from it."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.open: list[socket.socket] = []
        self.sent = 0  # bytes forwarded from the upstream to clients
        self.refused_until = 0.0
        self.cuts = 0
        self.thread = threading.Thread(target=self._accept, name="proxy", daemon=True)

    def start(self) -> Self:
        self.thread.start()
        return self

    def via(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit(parts._replace(netloc=f"{userinfo}127.0.0.1:{self.port}"))

    def cut(self) -> None:
        """Close both ends of every open connection now."""
        with self.lock:
            sockets, self.open = self.open, []
            self.cuts += 1
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def refuse(self, seconds: float) -> None:
        """Close new connections at once for ``seconds``."""
        self.refused_until = time.monotonic() + seconds

    def cut_after(self, sent: int) -> threading.Thread:
        """Cut once, in a thread, as soon as ``sent`` bytes came from the upstream."""

        def watch() -> None:
            while self.sent < sent:
                time.sleep(0.001)
            self.cut()

        watcher = threading.Thread(target=watch, name="proxy-cut", daemon=True)
        watcher.start()
        return watcher

    def stop(self) -> None:
        self.listener.close()
        self.cut()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # stopped
            if time.monotonic() < self.refused_until:
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.open += [client, server]
            for source, sink, counted in ((client, server, False), (server, client, True)):
                threading.Thread(
                    target=self._pump, args=(source, sink, counted), daemon=True
                ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
                if counted:
                    with self.lock:
                        self.sent += len(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
