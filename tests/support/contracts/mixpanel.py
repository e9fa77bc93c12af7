"""Mixpanel's Import Events API (``POST /import``) as a contract."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.support.contracts.base import (
    Answer,
    ContractServer,
    Request,
    json_answer,
    json_size,
    nonempty_str,
)


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
        parsed = self._events(request)
        if isinstance(parsed, Answer):
            return parsed
        events, strict = parsed
        failed, imported = self._import(events, strict)
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

    def _events(self, request: Request) -> tuple[list[Any], bool] | Answer:
        """(events, strict) of a request Mixpanel reads, or the answer refusing it."""
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
        return events, strict

    def _import(self, events: list[Any], strict: bool) -> tuple[list[dict[str, Any]], int]:
        """Import the valid events not seen before: (failed records, events imported)."""
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
        return failed, imported

    def problem(self, event: Any) -> tuple[str, str] | None:
        """(field, message) of the first reason Mixpanel refuses ``event``, or None."""
        if not isinstance(event, dict):
            return "event", "each event must be a JSON object"
        unknown = set(event) - {"event", "properties"}
        self.unknown_fields_seen |= unknown
        if unknown and not self.allow_unknown_fields:
            return sorted(unknown)[0], f"unexpected top-level fields {sorted(unknown)}"
        if not nonempty_str(event.get("event")):
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
        if json_size(event) >= 1_000_000:
            return "event", "each event must be smaller than 1MB"
        return None
