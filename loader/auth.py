"""Who the endpoint is and who loader is to it: TLS settings, basic auth, OAuth2 tokens.

Everything here builds credentials or checks identities for :mod:`loader.sink`; the
secrets it handles (tokens fetched at run time) are registered with the redactor the
moment they arrive, so no log line or error can show them.
"""

from __future__ import annotations

import base64
import ssl
import threading
import time

import certifi
import httpx

from loader import job as jobmodel
from loader.errors import JobConfigError, RetryableSinkError, SinkError
from loader.redact import Redactor, mask_url, register_runtime_secrets


def basic_authorization(basic: jobmodel.BasicAuth) -> str:
    """The ``Authorization`` header value of HTTP basic auth."""
    token = base64.b64encode(f"{basic.username}:{basic.password}".encode()).decode()
    return f"Basic {token}"


def tls_context(target: jobmodel.Target) -> ssl.SSLContext:
    """The TLS settings of ``target``: its CA bundle (or the usual CAs) and its client
    certificate. Raises :class:`JobConfigError` naming the key of a file it cannot load."""
    try:
        context = ssl.create_default_context(cafile=target.ca_bundle or certifi.where())
        if target.client_cert:
            context.load_cert_chain(target.client_cert, target.client_key)
    except (OSError, ssl.SSLError) as exc:
        key = "target.client_cert" if target.client_cert else "target.ca_bundle"
        raise JobConfigError(
            [f"{key}: cannot load it ({type(exc).__name__}: {exc}); give a PEM file"]
        ) from exc
    return context


class OAuth2Token:
    """A client-credentials token shared by the sending threads: fetched once, reused
    until shortly before it expires, fetched again when the endpoint refuses it."""

    MARGIN = 30.0  # seconds before expiry a token is no longer used

    def __init__(self, config: jobmodel.OAuth2, redactor: Redactor) -> None:
        self._config = config
        self._redactor = redactor
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires = 0.0

    def get(self, client: httpx.Client) -> str:
        """The current token, fetched with ``client`` when there is none or it is about
        to expire. Raises :class:`RetryableSinkError` when the token endpoint cannot be
        reached or answers 429 or 5xx, :class:`SinkError` for an answer without a token.
        """
        # Fetching under the lock: threads that find no token wait for one fetch rather
        # than each asking the token endpoint.
        with self._lock:
            if self._token is None or time.monotonic() >= self._expires:
                self._fetch(client)
            assert self._token is not None
            return self._token

    def refused(self, token: str) -> None:
        """The endpoint answered 401 to ``token``: the next :meth:`get` fetches anew."""
        with self._lock:
            if self._token == token:
                self._token = None

    def _fetch(self, client: httpx.Client) -> None:
        """Fetch a token into ``_token`` (under ``_lock``); raise as :meth:`get`."""
        config = self._config
        where = f"POST {mask_url(config.token_url)}"
        form = {"grant_type": "client_credentials", "client_id": config.client_id,
                "client_secret": config.client_secret}  # fmt: skip
        if config.scope:
            form["scope"] = config.scope
        try:
            response = client.post(config.token_url, data=form)
        except httpx.HTTPError as exc:
            raise RetryableSinkError(
                f"{where} (OAuth2 token): {transport_reason(exc)}", url=mask_url(config.token_url)
            ) from None
        status = response.status_code
        if status >= 500 or status == 429:
            raise RetryableSinkError(
                f"{where} (OAuth2 token) answered {status}",
                url=mask_url(config.token_url),
                status=status,
            )
        try:
            payload = response.json()
            token = str(payload["access_token"])
        except (ValueError, KeyError, TypeError):
            excerpt = self._redactor.text(" ".join(response.text.split()))[:200]
            raise SinkError(
                f"{where} (OAuth2 token) answered {response.status_code} without an "
                f"access_token: {excerpt}; check target.auth.oauth2",
                url=mask_url(config.token_url), status=response.status_code,
            ) from None  # fmt: skip
        register_runtime_secrets([token])
        lifetime = float(payload.get("expires_in") or 3600)
        self._token = token
        self._expires = time.monotonic() + max(0.0, lifetime - self.MARGIN)


def transport_reason(exc: httpx.HTTPError) -> str:
    """What went wrong below HTTP, e.g. ``ConnectError: [Errno 111] Connection refused``."""
    reason = str(exc) or type(exc.__cause__).__name__
    return f"{type(exc).__name__}: {reason}"
