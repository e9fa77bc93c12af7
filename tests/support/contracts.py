"""Stand-ins for SaaS ingestion APIs that enforce their documented contracts.

Each server listens on 127.0.0.1 (a free port, its own thread, like
:mod:`tests.support.server`), refuses what the real API refuses, with its status and a
JSON error body, and keeps what it accepted, so a test proves that a job honours the
contract instead of assuming it. Every server has ``url``, ``start()``, ``stop()``,
``requests`` (count), ``rejected`` (requests answered with a non-2xx status) and
``exchanges`` (one :class:`Exchange` per request: status, body size, item count, error).

* :class:`SegmentBatch`: Segment's HTTP Tracking API, ``POST /v1/batch``.
* :class:`AmplitudeV2`: Amplitude's HTTP V2 API, ``POST /2/httpapi``.
* :class:`MixpanelImport`: Mixpanel's Import Events API, ``POST /import``.
* :class:`ContactsApi`: a CRM-style ``PUT /contacts/<email>`` with a bearer token.
* :class:`SlackWebhook`: a Slack incoming webhook, optionally rate limited.

Where the real API tolerates a mistake silently (Segment answers 200 to an unknown write
key and to an invalid event, and drops them), the stand-in does the same and records
what it dropped, so a test can assert that nothing was. Keys an event may carry beside
the documented ones are refused unless ``allow_unknown_fields`` is set: none of these
APIs documents what it does with them, so the strict answer is the safe one.

Request bodies sent with ``Content-Encoding: gzip`` are decompressed first; the size
limits apply to the uncompressed body, as the APIs document.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import re
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit

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


class ContractServer:
    """The HTTP plumbing and the bookkeeping; subclasses implement :meth:`handle`.

    ``handle`` runs under the server's lock, one request at a time, so contracts keep
    their state without locks of their own.
    """

    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        # Set by handle() for the exchange being recorded.
        self._items: int | None = None
        self._error: str | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

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

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        contract = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if len(raw) < length:  # the client went away mid-request
                    self.close_connection = True
                    return
                parts = urlsplit(self.path)
                headers = {name.lower(): value for name, value in self.headers.items()}
                body = raw
                if headers.get("content-encoding", "").lower() == "gzip":
                    try:
                        body = gzip.decompress(raw)
                    except (OSError, EOFError):
                        self._send(json_answer(400, {"error": "body is not valid gzip"}))
                        return
                request = Request(self.command, parts.path, parse_qs(parts.query), headers, body)
                self._send(contract._serve(request))

            def _send(self, answer: Answer) -> None:
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            do_POST = do_PUT = do_PATCH = do_GET = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


class SegmentBatch(ContractServer):
    """Segment's HTTP Tracking API batch endpoint, ``POST /v1/batch``.

    The body is ``{"batch": [event, ...]}`` (``application/json``), authenticated with
    HTTP basic auth, the source's write key as the username and an empty password.
    Documented limits: 500 KB per request and 32 KB per event, else ``400``; invalid
    JSON is a ``400`` too. An empty or missing write key is a ``400``.

    Everything else is answered ``200 {"success": true}``, as api.segment.io does: an
    unknown write key, and events without a ``type``, without ``userId`` or
    ``anonymousId``, or (``track``) without an ``event`` name, are dropped silently.
    The stand-in records them in :attr:`dropped` with the reason. ``strict=True``
    answers what a client would wish for instead: ``401`` for an unknown write key and
    ``400`` listing the invalid events (nothing of that request is kept).

    :attr:`events` holds the accepted events; a ``messageId`` seen before is counted in
    :attr:`duplicates` and not kept twice (Segment deduplicates on it).
    """

    PATH = "/v1/batch"
    TYPES = frozenset({"track", "identify", "page", "screen", "group", "alias"})
    FIELDS = frozenset(
        {"type", "userId", "anonymousId", "event", "properties", "traits", "context",
         "integrations", "timestamp", "messageId", "name", "category", "groupId",
         "previousId", "sentAt", "originalTimestamp", "receivedAt", "channel", "version"}
    )  # fmt: skip

    def __init__(
        self,
        write_key: str,
        *,
        strict: bool = False,
        allow_unknown_fields: bool = False,
        max_body: int = 500 * KIB,
        max_event: int = 32 * KIB,
    ) -> None:
        super().__init__()
        self.write_key = write_key
        self.strict = strict
        self.allow_unknown_fields = allow_unknown_fields
        self.max_body = max_body
        self.max_event = max_event
        self.events: list[dict[str, Any]] = []
        self.dropped: list[tuple[Any, str]] = []
        self.duplicates = 0
        self._message_ids: set[str] = set()

    def handle(self, request: Request) -> Answer:
        if request.path != self.PATH:
            return json_answer(404, {"success": False, "error": "not found"})
        if request.method != "POST":
            return json_answer(405, {"success": False, "error": "method not allowed"})
        credentials = request.basic_auth()
        if credentials is None or not credentials[0]:
            self.note(error="missing write key")
            return json_answer(400, {"success": False, "error": "missing write key"})
        if len(request.body) > self.max_body:
            self.note(error=f"body of {len(request.body)} bytes")
            return json_answer(
                400, {"success": False, "error": f"request body exceeds {self.max_body} bytes"}
            )
        if request.content_type() != "application/json":
            return json_answer(
                400, {"success": False, "error": "content-type must be application/json"}
            )
        try:
            payload = json.loads(request.body)
        except ValueError:
            return json_answer(400, {"success": False, "error": "invalid JSON"})
        batch = payload.get("batch") if isinstance(payload, dict) else None
        if not isinstance(batch, list):
            return json_answer(400, {"success": False, "error": 'expected {"batch": [...]}'})
        self.note(items=len(batch))
        for index, event in enumerate(batch):
            if _size(event) > self.max_event:
                self.note(error=f"event {index} over {self.max_event} bytes")
                return json_answer(
                    400,
                    {"success": False,
                     "error": f"event {index} exceeds {self.max_event} bytes"},
                )  # fmt: skip
        unknown_key = credentials[0] != self.write_key
        if unknown_key and self.strict:
            self.note(error="unknown write key")
            return json_answer(401, {"success": False, "error": "invalid write key"})
        problems = [(i, e, self.problem(e)) for i, e in enumerate(batch)]
        invalid = [(i, e, why) for i, e, why in problems if why is not None]
        if invalid and self.strict:
            self.note(error=f"{len(invalid)} invalid events")
            return json_answer(
                400,
                {"success": False, "error": "invalid events",
                 "invalid": [{"index": i, "reason": why} for i, _, why in invalid]},
            )  # fmt: skip
        for _index, event, why in problems:
            if unknown_key:
                self.dropped.append((event, "unknown write key"))
            elif why is not None:
                self.dropped.append((event, why))
            else:
                message_id = event.get("messageId")
                if message_id is not None and message_id in self._message_ids:
                    self.duplicates += 1
                    continue
                if message_id is not None:
                    self._message_ids.add(message_id)
                self.events.append(event)
        if unknown_key or invalid:
            self.note(error="dropped: " + ("unknown write key" if unknown_key else
                                           f"{len(invalid)} invalid events"))  # fmt: skip
        return json_answer(200, {"success": True})

    def problem(self, event: Any) -> str | None:
        """Why Segment would drop ``event``, or None."""
        if not isinstance(event, dict):
            return "not an object"
        kind = event.get("type")
        if kind not in self.TYPES:
            return f"type must be one of {sorted(self.TYPES)}, got {kind!r}"
        if not (_nonempty_str(event.get("userId")) or _nonempty_str(event.get("anonymousId"))):
            return "userId or anonymousId is required"
        if kind == "track" and not _nonempty_str(event.get("event")):
            return "a track call needs an event name"
        if "messageId" in event and not _nonempty_str(event["messageId"]):
            return "messageId must be a non-empty string"
        if "timestamp" in event:
            try:
                datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00"))
            except ValueError:
                return f"timestamp is not ISO 8601: {event['timestamp']!r}"
        for name in ("properties", "traits", "context", "integrations"):
            if name in event and not isinstance(event[name], dict):
                return f"{name} must be an object"
        unknown = sorted(set(event) - self.FIELDS)
        if unknown and not self.allow_unknown_fields:
            return f"unknown fields {unknown}"
        return None


class AmplitudeV2(ContractServer):
    """Amplitude's HTTP V2 API, ``POST /2/httpapi``.

    The body is ``{"api_key": "...", "events": [...], "options": {...}}`` as
    ``application/json``. A missing or wrong ``api_key`` is a ``400``
    (``{"code": 400, "error": "Invalid API key"}``). A body over 1 MB or with more than
    2000 events is a ``413``. Each event needs an ``event_type`` and a ``user_id`` or
    ``device_id``: strings of at least 5 characters (``options.min_id_length`` changes
    that); ``time``, ``event_id`` and ``session_id`` are integers, ``insert_id`` a string.
    One invalid event makes the whole request a ``400`` listing the events by index in
    ``events_with_invalid_fields`` / ``events_with_missing_fields``, and nothing of it
    is ingested. Success is ``200 {"code": 200, "events_ingested": N, ...}``.

    :attr:`events` holds the ingested events; an ``insert_id`` seen before is counted in
    :attr:`duplicates` and not kept twice (Amplitude deduplicates on it).
    """

    PATH = "/2/httpapi"
    FIELDS = frozenset(
        {"user_id", "device_id", "event_type", "time", "event_properties",
         "user_properties", "groups", "group_properties", "app_version", "platform",
         "os_name", "os_version", "device_brand", "device_manufacturer", "device_model",
         "carrier", "country", "region", "city", "dma", "language", "price", "quantity",
         "revenue", "productId", "revenueType", "location_lat", "location_lng", "ip",
         "idfa", "idfv", "adid", "android_id", "event_id", "session_id", "insert_id",
         "plan", "ingestion_metadata", "partner_id", "version_name", "library",
         "user_agent"}
    )  # fmt: skip
    INTEGERS = ("time", "event_id", "session_id")
    OBJECTS = ("event_properties", "user_properties", "groups", "group_properties")

    def __init__(
        self,
        api_key: str,
        *,
        allow_unknown_fields: bool = False,
        max_body: int = 1_000_000,
        max_events: int = 2000,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.allow_unknown_fields = allow_unknown_fields
        self.max_body = max_body
        self.max_events = max_events
        self.events: list[dict[str, Any]] = []
        self.duplicates = 0
        self._insert_ids: set[str] = set()

    def handle(self, request: Request) -> Answer:
        if request.path != self.PATH:
            return json_answer(404, {"code": 404, "error": "not found"})
        if request.method != "POST":
            return json_answer(405, {"code": 405, "error": "method not allowed"})
        if len(request.body) > self.max_body:
            self.note(error=f"body of {len(request.body)} bytes")
            return json_answer(413, {"code": 413, "error": "Payload too large"})
        if request.content_type() != "application/json":
            return json_answer(400, {"code": 400, "error": "Invalid Content-Type header"})
        try:
            payload = json.loads(request.body)
        except ValueError:
            return json_answer(400, {"code": 400, "error": "Invalid JSON request body"})
        if not isinstance(payload, dict):
            return json_answer(400, {"code": 400, "error": "Invalid JSON request body"})
        if not _nonempty_str(payload.get("api_key")):
            self.note(error="no api_key")
            return json_answer(
                400,
                {"code": 400, "error": "Request missing required field",
                 "missing_field": "api_key"},
            )  # fmt: skip
        if payload["api_key"] != self.api_key:
            self.note(error="wrong api_key")
            return json_answer(400, {"code": 400, "error": "Invalid API key"})
        events = payload.get("events")
        if not isinstance(events, list) or not events:
            return json_answer(
                400,
                {"code": 400, "error": "Request missing required field",
                 "missing_field": "events"},
            )  # fmt: skip
        self.note(items=len(events))
        if len(events) > self.max_events:
            self.note(error=f"{len(events)} events")
            return json_answer(413, {"code": 413, "error": "Too many events in request"})
        options = payload.get("options") or {}
        min_id_length = options.get("min_id_length", 5) if isinstance(options, dict) else 5
        invalid: dict[str, list[int]] = {}
        missing: dict[str, list[int]] = {}
        for index, event in enumerate(events):
            for kind, name in self.problems(event, min_id_length):
                (invalid if kind == "invalid" else missing).setdefault(name, []).append(index)
        if invalid or missing:
            self.note(error=f"invalid {invalid} missing {missing}")
            error = "Invalid field values on some events" if invalid else (
                "Request missing required field")  # fmt: skip
            return json_answer(
                400,
                {"code": 400, "error": error, "events_with_invalid_fields": invalid,
                 "events_with_missing_fields": missing},
            )  # fmt: skip
        for event in events:
            insert_id = event.get("insert_id")
            if insert_id is not None and insert_id in self._insert_ids:
                self.duplicates += 1
                continue
            if insert_id is not None:
                self._insert_ids.add(insert_id)
            self.events.append(event)
        return json_answer(
            200,
            {"code": 200, "events_ingested": len(events),
             "payload_size_bytes": len(request.body),
             "server_upload_time": int(time.time() * 1000)},
        )  # fmt: skip

    def problems(self, event: Any, min_id_length: int) -> Iterator[tuple[str, str]]:
        """("invalid" or "missing", field) for each problem of ``event``."""
        if not isinstance(event, dict):
            yield "invalid", "event"
            return
        if not _nonempty_str(event.get("event_type")):
            yield ("invalid" if "event_type" in event else "missing"), "event_type"
        ids = [name for name in ("user_id", "device_id") if event.get(name) is not None]
        if not ids:
            yield "missing", "user_id"
        for name in ids:
            value = event[name]
            if not isinstance(value, str) or len(value) < min_id_length:
                yield "invalid", name
        for name in self.INTEGERS:
            if name in event and not _is_int(event[name]):
                yield "invalid", name
        if "insert_id" in event and not _nonempty_str(event["insert_id"]):
            yield "invalid", "insert_id"
        for name in self.OBJECTS:
            if name in event and not isinstance(event[name], dict):
                yield "invalid", name
        if not self.allow_unknown_fields:
            for name in sorted(set(event) - self.FIELDS):
                yield "invalid", name


class MixpanelImport(ContractServer):
    """Mixpanel's Import Events API, ``POST /import`` (``?strict=1``, ``?project_id=``).

    The body is a JSON array (``application/json``) or one event per line
    (``application/x-ndjson``), optionally gzipped. Authentication is HTTP basic: a
    service account's username and secret, with ``project_id`` in the query string
    (pass ``project_id``), or a project token or secret as the username with an empty
    password (leave ``project_id`` out); anything else is a ``401``. At most 2000 events
    and 2 MB of uncompressed body per request, else ``413``.

    Each event is ``{"event": str, "properties": {"time": int, "distinct_id": str,
    "$insert_id": str, ...}}``: a non-empty name, ``time`` in seconds or milliseconds
    since the epoch and not before 1971, ``distinct_id`` a string (empty for no user,
    but not a placeholder such as ``"null"`` or ``"anonymous"``), ``$insert_id`` at most
    36 letters, digits and dashes, fewer than 256 properties, under 1 MB. With
    ``strict=1`` (the default) a request with invalid events is a ``400`` with
    ``failed_records`` (index, insert_id, field, message); the valid events of that
    request are still imported, as Mixpanel does. With ``strict=0`` invalid events are
    dropped silently (see :attr:`dropped`).

    :attr:`events` holds the imported events; one with the same event name,
    ``distinct_id``, ``time`` and ``$insert_id`` as an earlier one is counted in
    :attr:`duplicates` and not kept twice. Keys beside ``event`` and ``properties``
    fail the event unless ``allow_unknown_fields``; those seen are in
    :attr:`unknown_fields_seen` either way.
    """

    PATH = "/import"
    PLACEHOLDERS = frozenset(
        {"anon", "anonymous", "nil", "none", "null", "n/a", "na", "undefined", "unknown",
         "<nil>", "00000000-0000-0000-0000-000000000000"}
    )  # fmt: skip
    INSERT_ID = re.compile(r"^[A-Za-z0-9-]{1,36}$")
    SECONDS_1971 = 31_536_000

    def __init__(
        self,
        username: str,
        password: str = "",
        *,
        project_id: str | None = None,
        allow_unknown_fields: bool = False,
        max_body: int = 2_000_000,
        max_events: int = 2000,
    ) -> None:
        super().__init__()
        self.username = username
        self.password = password
        self.project_id = project_id
        self.allow_unknown_fields = allow_unknown_fields
        self.max_body = max_body
        self.max_events = max_events
        self.events: list[dict[str, Any]] = []
        self.failed_records: list[dict[str, Any]] = []
        self.dropped: list[tuple[Any, str]] = []
        self.duplicates = 0
        self.unknown_fields_seen: set[str] = set()
        self._keys: set[tuple[Any, ...]] = set()

    def handle(self, request: Request) -> Answer:
        if request.path != self.PATH:
            return json_answer(404, {"code": 404, "error": "not found", "status": "error"})
        if request.method != "POST":
            return json_answer(405, {"code": 405, "error": "method not allowed"})
        if request.basic_auth() != (self.username, self.password) or (
            self.project_id is not None and request.param("project_id") != self.project_id
        ):
            self.note(error="bad credentials")
            return json_answer(
                401, {"code": 401, "error": "Invalid credentials", "status": "Unauthorized"}
            )
        if len(request.body) > self.max_body:
            self.note(error=f"body of {len(request.body)} bytes")
            return json_answer(
                413, {"code": 413, "error": "request body too large", "status": "error"}
            )
        strict = request.param("strict") != "0"
        try:
            if request.content_type() == "application/x-ndjson":
                events = [json.loads(line) for line in request.body.splitlines() if line.strip()]
            elif request.content_type() == "application/json":
                events = json.loads(request.body)
            else:
                return json_answer(
                    400, {"code": 400, "error": "unsupported content type", "status": "error"}
                )
        except ValueError:
            return json_answer(
                400, {"code": 400, "error": "unable to parse request body", "status": "error"}
            )
        if not isinstance(events, list):
            return json_answer(
                400, {"code": 400, "error": "expected a JSON array", "status": "error"}
            )
        self.note(items=len(events))
        if len(events) > self.max_events:
            self.note(error=f"{len(events)} events")
            return json_answer(
                413, {"code": 413, "error": "too many events in request", "status": "error"}
            )
        failed = []
        imported = 0
        for index, event in enumerate(events):
            problem = self.problem(event)
            if problem is not None:
                field_name, message = problem
                properties = event.get("properties") if isinstance(event, dict) else None
                insert_id = properties.get("$insert_id") if isinstance(properties, dict) else None
                failed.append({"index": index, "insert_id": insert_id, "field": field_name,
                               "message": message})  # fmt: skip
                if not strict:
                    self.dropped.append((event, message))
                continue
            imported += 1
            properties = event["properties"]
            key = (event["event"], properties["distinct_id"], properties["time"],
                   properties["$insert_id"])  # fmt: skip
            if key in self._keys:
                self.duplicates += 1
                continue
            self._keys.add(key)
            self.events.append(event)
        if failed and strict:
            self.failed_records.extend(failed)
            self.note(error=f"{len(failed)} failed records")
            return json_answer(
                400,
                {"code": 400, "error": "some data points in the request failed validation",
                 "status": "Bad Request", "num_records_imported": imported,
                 "failed_records": failed},
            )  # fmt: skip
        if failed:
            self.note(error=f"dropped {len(failed)} invalid events")
        return json_answer(200, {"code": 200, "num_records_imported": imported, "status": "OK"})

    def problem(self, event: Any) -> tuple[str, str] | None:
        """(field, message) of the first reason Mixpanel refuses ``event``, or None."""
        if not isinstance(event, dict):
            return "event", "each event must be a JSON object"
        unknown = set(event) - {"event", "properties"}
        self.unknown_fields_seen |= unknown
        if unknown and not self.allow_unknown_fields:
            return sorted(unknown)[0], f"unexpected top-level fields {sorted(unknown)}"
        if not _nonempty_str(event.get("event")):
            return "event", "'event' must not be empty"
        properties = event.get("properties")
        if not isinstance(properties, dict):
            return "properties", "'properties' must be an object"
        stamp = properties.get("time")
        if not isinstance(stamp, int) or isinstance(stamp, bool):
            return "properties.time", "'properties.time' is required and must be an integer"
        seconds = stamp // 1000 if stamp > 100_000_000_000 else stamp
        if seconds < self.SECONDS_1971:
            return "properties.time", "'properties.time' is invalid: before 1971-01-01"
        distinct_id = properties.get("distinct_id")
        if not isinstance(distinct_id, str) or len(distinct_id) > 255:
            return "properties.distinct_id", "'properties.distinct_id' must be a string"
        if distinct_id.lower() in self.PLACEHOLDERS:
            return "properties.distinct_id", f"'properties.distinct_id' is invalid: {distinct_id!r}"
        insert_id = properties.get("$insert_id")
        if not isinstance(insert_id, str) or not self.INSERT_ID.match(insert_id):
            return ("properties.$insert_id", "'properties.$insert_id' must be 1 to 36 letters, "
                    "digits or dashes")  # fmt: skip
        if len(properties) > 255:
            return "properties", "events must have fewer than 256 properties"
        if _size(event) >= 1_000_000:
            return "event", "each event must be smaller than 1MB"
        return None


class ContactsApi(ContractServer):
    """A CRM-style upsert: ``PUT /contacts/<email>`` with a JSON object body.

    ``Authorization: Bearer <token>`` is required (``401`` otherwise). The email in the
    path is URL-decoded; a body whose ``email`` differs from it is a ``422``, a body
    that is not a JSON object a ``400``, a path segment without ``@`` a ``404``, any
    other method a ``405``. Success is ``200 {"email": ..., "version": n}``.

    :attr:`contacts` maps each email to the bodies received for it, in order.
    """

    PREFIX = "/contacts/"

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token
        self.contacts: dict[str, list[dict[str, Any]]] = {}

    @property
    def emails(self) -> list[str]:
        return list(self.contacts)

    def bodies(self, email: str) -> list[dict[str, Any]]:
        return list(self.contacts.get(email, []))

    def latest(self, email: str) -> dict[str, Any] | None:
        bodies = self.contacts.get(email)
        return bodies[-1] if bodies else None

    def handle(self, request: Request) -> Answer:
        if not request.path.startswith(self.PREFIX):
            return json_answer(404, {"error": "not found"})
        email = unquote(request.path[len(self.PREFIX) :])
        if "/" in email or "@" not in email:
            return json_answer(404, {"error": f"no contact resource at {request.path}"})
        if request.method != "PUT":
            return json_answer(405, {"error": "method not allowed"}, {"Allow": "PUT"})
        if request.bearer() != self.token:
            self.note(error="bad token")
            return json_answer(401, {"error": "unauthorized"})
        try:
            body = json.loads(request.body)
        except ValueError:
            return json_answer(400, {"error": "body is not valid JSON"})
        if not isinstance(body, dict):
            return json_answer(400, {"error": "body must be a JSON object"})
        self.note(items=1)
        if "email" in body and body["email"] != email:
            self.note(error="email mismatch")
            return json_answer(
                422, {"error": f"email in the body ({body['email']!r}) does not match the URL"}
            )
        self.contacts.setdefault(email, []).append(body)
        return json_answer(200, {"email": email, "version": len(self.contacts[email])})


class SlackWebhook(ContractServer):
    """A Slack incoming webhook, ``POST /services/T000/B000/XXXX`` (``path``).

    The body must be a JSON object: malformed JSON, or a ``text`` that is not a string,
    is ``400 invalid_payload``; a missing or empty ``text`` is ``400 no_text`` (Slack's
    own code for it). Another path is ``404 no_service``. Success is ``200 ok`` (plain
    text, as Slack answers). With ``rate_per_second``, requests beyond that many in any
    one-second window are answered ``429`` with ``Retry-After: 1`` (counted in
    :attr:`throttled`). :attr:`messages` holds the accepted bodies.
    """

    PATH = "/services/T000/B000/XXXX"

    def __init__(self, *, path: str = PATH, rate_per_second: int | None = None) -> None:
        super().__init__()
        self.path = path
        self.rate_per_second = rate_per_second
        self.messages: list[dict[str, Any]] = []
        self.throttled = 0
        self._recent: deque[float] = deque()

    @property
    def webhook_url(self) -> str:
        return self.url + self.path

    @property
    def texts(self) -> list[str]:
        return [message["text"] for message in self.messages]

    def handle(self, request: Request) -> Answer:
        if request.path != self.path:
            return text_answer(404, "no_service")
        if request.method != "POST":
            return text_answer(405, "invalid_method")
        if self.rate_per_second is not None:
            now = time.monotonic()
            while self._recent and now - self._recent[0] >= 1.0:
                self._recent.popleft()
            if len(self._recent) >= self.rate_per_second:
                self.throttled += 1
                self.note(error="rate limited")
                return text_answer(429, "rate_limited", {"Retry-After": "1"})
            self._recent.append(now)
        try:
            body = json.loads(request.body)
        except ValueError:
            return text_answer(400, "invalid_payload")
        if not isinstance(body, dict) or not isinstance(body.get("text", ""), str):
            return text_answer(400, "invalid_payload")
        if not body.get("text"):
            return text_answer(400, "no_text")
        self.note(items=1)
        self.messages.append(body)
        return text_answer(200, "ok")
