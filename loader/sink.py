"""The HTTP side: one attempt to deliver one request body, and what its outcome means.

:meth:`Sink.send` returns when the endpoint acknowledged the body (any 2xx) and raises
otherwise:

* :class:`RetryableSinkError`: connection errors, timeouts, 408, 429, 500, 502, 503, 504;
  ``retry_after`` holds the server's ``Retry-After`` (seconds or HTTP-date) if any.
* :class:`RejectedError`: any other 4xx; the endpoint will refuse this body again.
* :class:`SinkError`: anything else (redirects, which are never followed; other 5xx).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from loader import defaults
from loader import job as jobmodel
from loader.answers import AnswerError, ItemError, item_errors, item_results
from loader.auth import OAuth2Token, basic_authorization, tls_context, transport_reason
from loader.deadline import bounded, exchange, expired
from loader.errors import RejectedError, RetryableSinkError, SinkError
from loader.ratelimit import Rate, limiter_for
from loader.redact import Redactor, mask_path, mask_registered, mask_url
from loader.units import format_duration

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class _RedactingFilter(logging.Filter):
    """httpx logs each request's URL (``HTTP Request: POST https://...``) at INFO: an
    app that shows httpx's log lines would print webhook paths and query tokens. Every
    record of httpx's loggers passes through the redactor of every loaded job first."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = mask_registered(record.getMessage()), None
        return True


for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).addFilter(_RedactingFilter())


@dataclass(frozen=True)
class Request:
    """A request as it would be sent: what ``--dry-run`` prints (headers masked; the
    body is left out of ``repr`` as it may hold secret envelope fields)."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes = field(repr=False)


def idempotency_key(job_name: str, scope: str, body: bytes) -> str:
    """A key for one body: the same on every retry, and on every re-send of the same
    batch from the same ``scope``. The scope names where the batch sits: for a cursor
    job, the checkpoint it starts after (so a run resumed after a crash re-sends the
    in-flight batch under its first key); otherwise the run and the batch's number (so
    identical bodies in one run, or in two runs, are never mistaken for duplicates)."""
    digest = hashlib.sha256(job_name.encode() + b"\0" + scope.encode() + b"\0" + body).hexdigest()
    return f"{job_name}-{digest[:32]}"


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    import email.utils  # on first use: most answers give seconds, or nothing

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


class Sink:
    """An HTTP client for one target: keep-alive, no redirects, no ambient proxies.
    :meth:`send` may be called from several threads at once, each with its connection."""

    def __init__(
        self,
        target: jobmodel.Target,
        redactor: Redactor,
        *,
        user_agent: str,
        content_type: str,
        transport: httpx.BaseTransport | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._target = target
        self._redactor = redactor
        self._wall_clock = wall_clock
        self.safe_url = redactor.url(target.url)
        self._headers = {
            "Content-Type": content_type,
            "Accept": "*/*",
            "User-Agent": user_agent,
            **target.headers,
        }
        if target.gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._limiter = (
            limiter_for(urlsplit(target.url).netloc.lower(), Rate.parse(target.rate_limit))
            if target.rate_limit
            else None
        )
        self._oauth2 = (
            OAuth2Token(target.auth.oauth2, redactor) if target.auth.oauth2 is not None else None
        )
        basic = target.auth.basic
        if basic is not None:
            self._headers["Authorization"] = basic_authorization(basic)
        self._transport = transport
        # One TLS context for all threads (each costs a read of the CA bundle), none for
        # plain HTTP.
        self._verify: ssl.SSLContext | bool = False
        if target.url.startswith("https:") or target.ca_bundle or target.client_cert:
            self._verify = tls_context(target)
        self._url = httpx.URL(target.url)
        self._timeout = httpx.Timeout(target.timeout).as_dict()
        # Requests go straight to a transport: a client's cookie jar, auth and redirect
        # steps cost a third of the CPU of a request, and loader needs none of them. One
        # transport, so one keep-alive connection, per sending thread: no pool to share
        # (and to contend for) between threads.
        self._local = threading.local()
        self._opened: list[httpx.BaseTransport | httpx.Client] = []
        self._opened_lock = threading.Lock()
        self._token_client: httpx.Client | None = None

    @property
    def _connection(self) -> httpx.BaseTransport:
        transport: httpx.BaseTransport | None = getattr(self._local, "transport", None)
        if transport is None:
            transport = self._transport or bounded(
                httpx.HTTPTransport(
                    verify=self._verify,
                    trust_env=False,
                    proxy=self._target.proxy,
                    # One connection per sending thread: ``concurrency`` threads make at
                    # most ``concurrency`` connections, each kept alive between batches.
                    limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                )
            )
            self._local.transport = transport
            if self._transport is None:
                with self._opened_lock:
                    self._opened.append(transport)
        return transport

    def _token(self) -> str:
        """The OAuth2 token, fetched through a client of its own when needed."""
        assert self._oauth2 is not None
        with self._opened_lock:
            if self._token_client is None:
                self._token_client = httpx.Client(
                    timeout=self._target.timeout,
                    follow_redirects=False,
                    trust_env=False,
                    transport=self._transport,
                    verify=self._verify,
                    proxy=self._target.proxy,
                )
                self._opened.append(self._token_client)
            client = self._token_client
        return self._oauth2.get(client)

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections of every thread."""
        with self._opened_lock:
            for opened in self._opened:
                opened.close()
            self._opened.clear()
            self._token_client = None

    def prepare(self, body: bytes, key: str, url: str | None = None) -> Request:
        """The request for ``body``, with secret headers masked (for display)."""
        headers = self._redactor.headers({**self._headers, "Idempotency-Key": key})
        shown = self._redactor.url(url) if url else self.safe_url
        return Request(self._target.method, shown, headers, self._content(body))

    def send(self, body: bytes, key: str, rows: int = 1, url: str | None = None) -> list[ItemError]:
        """Deliver ``body`` (of ``rows`` rows) once, to ``url`` (a per-row URL) or the
        target's; return on 2xx, raise a :class:`SinkError` otherwise. Waits for the
        host's rate limit first.

        Returns the rows a 2xx answer says it did not deliver (``target.item_errors``,
        ``target.item_results``); raises :class:`SinkError` when such an answer cannot
        be matched to the ``rows`` sent."""
        if self._limiter is not None:
            self._limiter.acquire(rows if self._limiter.rows else 1)
        try:
            refused = self._send(body, key, url or self._target.url, rows)
        except RetryableSinkError as exc:
            if self._limiter is not None and exc.status == 429:
                self._limiter.throttled(exc.retry_after)
            raise
        if self._limiter is not None:
            self._limiter.acknowledged()
        return refused

    def _content(self, body: bytes) -> bytes:
        """What goes on the wire for ``body``: nothing for DELETE."""
        return b"" if self._target.method == "DELETE" else body

    def _send(self, body: bytes, key: str, url: str, rows: int) -> list[ItemError]:
        method = self._target.method
        what = f"{method} {self._redactor.url(url) if url != self._target.url else self.safe_url}"
        headers = {**self._headers, "Idempotency-Key": key}
        body = self._content(body)
        if self._target.gzip and body:
            body = gzip.compress(body, compresslevel=5)
        for fresh_token in (False, True):
            token = None
            if self._oauth2 is not None:
                token = self._token()
                headers["Authorization"] = f"Bearer {token}"
            again, refused = self._attempt(
                method, url, what, headers, body, rows, retry_401=not fresh_token
            )
            if not again:
                return refused
            assert self._oauth2 is not None and token is not None
            self._oauth2.refused(token)  # 401: one more try with a new token
        return []

    def _attempt(
        self,
        method: str,
        url: str,
        what: str,
        headers: dict[str, str],
        body: bytes,
        rows: int,
        *,
        retry_401: bool,
    ) -> tuple[bool, list[ItemError]]:
        """One request: whether to send it again with a fresh token, and the rows a 2xx
        answer refused. The whole exchange, from connecting to the answer's last byte,
        ends within ``target.timeout`` (see :mod:`loader.deadline`)."""
        try:
            with exchange(self._target.timeout):
                return self._exchange(method, url, what, headers, body, rows, retry_401=retry_401)
        except httpx.TimeoutException as exc:
            raise RetryableSinkError(
                f"{what}: no complete response within target.timeout "
                f"({format_duration(self._target.timeout)}): {type(exc).__name__}",
                url=self.safe_url,
            ) from exc

    def _exchange(
        self,
        method: str,
        url: str,
        what: str,
        headers: dict[str, str],
        body: bytes,
        rows: int,
        *,
        retry_401: bool,
    ) -> tuple[bool, list[ItemError]]:
        """:meth:`_attempt`'s request and answer, its httpx errors as they are."""
        try:
            request = httpx.Request(
                method,
                self._url if url == self._target.url else url,
                content=body,
                headers=headers,
                extensions={"timeout": self._timeout},
            )
            with contextlib.closing(self._connection.handle_request(request)) as response:
                status = response.status_code
                if status == 401 and retry_401 and self._oauth2 is not None:
                    return True, []
                if not 200 <= status < 300 or status in self._target.statuses:
                    excerpt = "" if 200 <= status < 300 else self._read_excerpt(response)
                    self._classify(response, what, excerpt)
                if self._target.item_results or self._target.item_errors:
                    return False, self._per_row(response, rows, what)
                # Acknowledged. Drain the raw body (never decoded: a broken one cannot fail
                # a delivered batch) so the connection goes back to the pool for reuse;
                # one still arriving at the deadline is a timeout.
                if not response.is_stream_consumed:
                    self._drain(response)
        except httpx.TimeoutException:
            raise
        except httpx.LocalProtocolError as exc:
            # Its message quotes the offending header, value included: never show it.
            raise SinkError(
                f"{what}: the request could not be built ({type(exc).__name__}); "
                "check target.headers for characters HTTP does not allow",
                url=self.safe_url,
            ) from None
        except httpx.TransportError as exc:
            raise RetryableSinkError(
                f"{what}: {self._redactor.text(transport_reason(exc))}", url=self.safe_url
            ) from exc
        except httpx.HTTPError as exc:
            raise SinkError(
                f"{what}: {self._redactor.text(transport_reason(exc))}", url=self.safe_url
            ) from exc
        return False, []

    @staticmethod
    def _drain(response: httpx.Response) -> None:
        """Read an acknowledged answer's body to its end, raising
        :class:`httpx.ReadTimeout` if the exchange's deadline passes first."""
        try:
            for _ in response.iter_raw():
                if expired():
                    raise httpx.ReadTimeout("the answer did not end in time")
        except httpx.TimeoutException:
            raise
        except (httpx.HTTPError, httpx.StreamError):
            pass

    def _per_row(self, response: httpx.Response, rows: int, what: str) -> list[ItemError]:
        """The rows a 2xx answer says it did not deliver (see :mod:`loader.answers`).
        With ``item_results``, an answer cut short is a transport error (retried, as
        the rows' fate is unknown); ``item_errors`` keeps reading it as no errors."""
        target = self._target
        try:
            try:
                answer: Any = json.loads(response.read())
            except httpx.HTTPError:
                if target.item_results is not None:
                    raise
                return []
            except ValueError:
                if target.item_results is None:
                    return []  # item_errors: an answer that is not JSON refuses nothing
                raise AnswerError("its body is not JSON", "target.item_results") from None
            if target.item_results is not None:
                return item_results(answer, target.item_results, rows, target.statuses,
                                    self._entry_text)  # fmt: skip
            assert target.item_errors is not None
            return item_errors(answer, target.item_errors, rows, response.status_code,
                               self._entry_text)  # fmt: skip
        except AnswerError as exc:
            raise SinkError(exc.describe(what, response.status_code), url=self.safe_url,
                            status=exc.status or response.status_code) from None  # fmt: skip

    def _entry_text(self, entry: Any) -> str:
        """One result or error entry as JSON text, secrets masked, at most 500 characters."""
        return mask_registered(self._redactor.text(json.dumps(entry)))[:500]

    def _classify(self, response: httpx.Response, what: str, excerpt: str) -> None:
        status = response.status_code
        # A reason phrase is the server's text, like a body: it may echo a credential.
        detail = f"{what} answered {status} {self._redactor.text(response.reason_phrase)}"
        override = self._target.statuses.get(status)
        if override == "success":
            return
        if override == "reject":
            raise RejectedError(
                f"{detail}: {excerpt or '(empty body)'} (target.statuses: reject)",
                url=self.safe_url, status=status, body_excerpt=excerpt,
            )  # fmt: skip
        if override == "fail":
            raise SinkError(f"{detail}: {excerpt} (target.statuses: fail)", url=self.safe_url,
                            status=status)  # fmt: skip
        if status in RETRYABLE_STATUSES or override == "retry":
            retry_after = parse_retry_after(
                response.headers.get("Retry-After"), now=self._wall_clock()
            )
            raise RetryableSinkError(
                f"{detail}: {excerpt}" if excerpt else detail,
                url=self.safe_url,
                status=status,
                retry_after=retry_after,
            )
        if 400 <= status < 500:
            raise RejectedError(
                f"{detail}: {excerpt or '(empty body)'}; the endpoint refuses this request, "
                "so it is not retried",
                url=self.safe_url,
                status=status,
                body_excerpt=excerpt,
            )
        if 300 <= status < 400:
            location = self._redactor.url(response.headers.get("Location", "?"))
            raise SinkError(
                f"{detail}, redirecting to {location}; redirects are not followed: "
                "set target.url to the final address",
                url=self.safe_url,
                status=status,
            )
        raise SinkError(f"{detail}: {excerpt}", url=self.safe_url, status=status)

    def _read_excerpt(self, response: httpx.Response) -> str:
        """The start of an error response's body, secrets masked, on one line."""
        try:
            raw = b""
            for chunk in response.iter_bytes():
                raw += chunk
                if len(raw) > 64 * 1024:
                    break
        except httpx.HTTPError:
            return "(the response body could not be read)"
        text = mask_registered(
            self._redactor.text(" ".join(raw.decode("utf-8", "replace").split()))
        )
        limit = defaults.BODY_EXCERPT_CHARS
        return text if len(text) <= limit else text[:limit] + "..."


def notify(
    url: str,
    payload: Any = None,
    *,
    timeout: float = defaults.NOTIFY_TIMEOUT,
    user_agent: str = "loader",
) -> None:
    """One alert or heartbeat request: POST ``payload`` as JSON (or an empty POST).
    Raises :class:`SinkError` unless the answer is 2xx; the URL is a credential, so the
    error shows only its scheme and host."""
    safe = mask_path(url)
    try:
        with httpx.Client(timeout=timeout, trust_env=False, follow_redirects=False) as client:
            response = client.post(
                url,
                content=b"" if payload is None else json.dumps(payload).encode(),
                headers={"Content-Type": "application/json", "User-Agent": user_agent},
            )
    except httpx.HTTPError as exc:
        raise SinkError(f"POST {safe}: {transport_reason(exc)}", url=safe) from None
    if not 200 <= response.status_code < 300:
        raise SinkError(f"POST {safe} answered {response.status_code}", url=safe,
                        status=response.status_code)  # fmt: skip


def probe(target: jobmodel.Target, timeout: float = 10.0) -> str:
    """Open a TCP connection to the target's host, with the TLS handshake for https (or
    through the proxy), and send nothing. Returns what answered; raises SinkError."""
    parts = urlsplit(target.proxy or target.url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    safe = mask_url(target.proxy or target.url)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            if parts.scheme == "https" and not target.proxy:
                with tls_context(target).wrap_socket(sock, server_hostname=host) as tls:
                    return f"{host}:{port} answered, {tls.version()}"
            return f"{host}:{port} answered" + (" (the proxy)" if target.proxy else "")
    except (OSError, ssl.SSLError) as exc:
        raise SinkError(f"{safe}: {type(exc).__name__}: {exc}", url=safe) from None
