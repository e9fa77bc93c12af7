"""TLS and proxies: a custom CA, a client certificate (mutual TLS), an explicit proxy."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loader import LoaderError, build_job, run_job
from tests.support.httpd import Handler, LoopbackServer
from tests.support.server import Endpoint


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all from it."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", "san.ext",
                cwd=d)  # fmt: skip
    return d


@pytest.fixture
def https(pki: Path) -> Iterator[tuple[str, list[Any]]]:
    """An HTTPS server on 127.0.0.1 that requires a client certificate from the CA."""
    received: list[Any] = []

    class Server(LoopbackServer):
        def respond(self, handler: Handler, body: bytes) -> None:
            received.append((handler.path, body, handler.connection.getpeercert()))
            handler.reply(200)

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.pem"))
    context.load_cert_chain(pki / "server.pem", pki / "server.key")
    context.verify_mode = ssl.CERT_REQUIRED
    with Server(tls=context) as server:
        yield server.url, received


def job(url: str, **target: Any) -> Any:
    return build_job({
        "name": "tls", "source": {"url": "sqlite://", "query": "SELECT 1 AS id"},
        "target": {"url": url, **target},
        "retry": {"attempts": 1},
    })  # fmt: skip


def test_mutual_tls_with_a_custom_ca(pki: Path, https: tuple[str, list[Any]]) -> None:
    """ca_bundle trusts the server; client_cert and client_key prove the client."""
    url, received = https
    result = run_job(
        job(
            url + "/in",
            ca_bundle=str(pki / "ca.pem"),
            client_cert=str(pki / "client.pem"),
            client_key=str(pki / "client.key"),
        )
    )

    assert result.rows_posted == 1
    ((path, body, peer),) = received
    assert path == "/in" and body == b'[{"id":1}]'
    assert dict(x[0] for x in peer["subject"])["commonName"] == "client"


def test_without_the_ca_or_the_client_cert_nothing_is_sent(
    pki: Path, https: tuple[str, list[Any]]
) -> None:
    """An untrusted server or a missing client certificate fails; a bad PEM path is a
    configuration error naming the key."""
    url, received = https
    with pytest.raises(LoaderError, match="CERTIFICATE_VERIFY_FAILED|certificate verify"):
        run_job(job(url + "/in"))
    with pytest.raises(LoaderError):
        run_job(job(url + "/in", ca_bundle=str(pki / "ca.pem")))
    with pytest.raises(LoaderError, match="target.ca_bundle: cannot load it"):
        run_job(job(url + "/in", ca_bundle=str(pki / "missing.pem")))
    assert received == []


def test_a_proxy_only_when_configured(endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    """target.proxy routes requests through it; HTTP_PROXY in the environment is ignored."""
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # would fail if it were used
    run_job(job("http://api.example.invalid/in", proxy=endpoint.url))
    run_job(job(endpoint.url + "/direct"))

    assert [r.path for r in endpoint.requests] == ["http://api.example.invalid/in", "/direct"]
