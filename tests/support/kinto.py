"""A real Kinto server (the PyPI package) on loopback, for tests of its batch and
records APIs.

Kinto keeps everything in memory here, authenticates any Basic user (each gets its own
principal), validates records against a collection's JSON schema, and enforces its own
``batch_max_requests`` (25 unless told). The server runs in a child process started
from this interpreter, on a free port, and stops with the test.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

_INI = """\
[app:main]
use = egg:kinto
kinto.storage_backend = kinto.core.storage.memory
kinto.storage_url =
kinto.cache_backend = kinto.core.cache.memory
kinto.permission_backend = kinto.core.permission.memory
kinto.bucket_create_principals = system.Everyone
kinto.experimental_collection_schema_validation = true
kinto.batch_max_requests = {batch_max_requests}
multiauth.policies = basicauth
kinto.userid_hmac_secret = only-for-tests

[server:main]
use = egg:waitress#main
host = 127.0.0.1
port = {port}

[loggers]
keys = root
[handlers]
keys = console
[formatters]
keys = generic
[logger_root]
level = WARNING
handlers = console
[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic
[formatter_generic]
format = %(message)s
"""

#: The Basic credentials tests use (Kinto accepts any; they only name a principal).
USER, PASSWORD = "loader", "kinto-test-password"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Kinto:
    """A Kinto server on 127.0.0.1: ``url`` ends in ``/v1``. ``start()`` returns once it
    answers; ``stop()`` ends it."""

    def __init__(self, directory: Path, *, batch_max_requests: int = 25) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.ini = directory / "kinto.ini"
        self.ini.write_text(_INI.format(port=self.port, batch_max_requests=batch_max_requests))
        self.log = directory / "kinto.log"
        self.process: subprocess.Popen[bytes] | None = None
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        self.authorization = f"Basic {token}"

    def start(self, timeout: float = 30.0) -> Kinto:
        code = "import sys; from kinto.__main__ import main; sys.exit(main(sys.argv[1:]))"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", code, "start", "--ini", str(self.ini), "--quiet"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.call("GET", "/")
                return self
            except (urllib.error.URLError, ConnectionError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"Kinto did not start: {self.log.read_text()}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """One request to the API (``path`` after ``/v1``) as the test user; its JSON."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", self.authorization)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"null")

    def collection(self, bucket: str, collection: str, schema: dict[str, Any]) -> str:
        """Create ``bucket`` and its ``collection`` validating records against
        ``schema``; return the collection's path (after ``/v1``)."""
        self.call("PUT", f"/buckets/{bucket}", {"data": {}})
        path = f"/buckets/{bucket}/collections/{collection}"
        self.call("PUT", path, {"data": {"schema": schema}})
        return path

    def records(self, collection_path: str) -> list[dict[str, Any]]:
        """Every record the collection holds, each page followed."""
        found: list[dict[str, Any]] = []
        url: str | None = f"{collection_path}/records?_limit=10000"
        while url is not None:
            request = urllib.request.Request(self.url + url)
            request.add_header("Authorization", self.authorization)
            with urllib.request.urlopen(request, timeout=10) as response:
                found.extend(json.loads(response.read())["data"])
                next_page = response.headers.get("Next-Page")
            url = next_page.removeprefix(self.url) if next_page else None
        return found
