"""Segment's HTTP Tracking API batch endpoint (``POST /v1/batch``) as a contract."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from tests.support.contracts.base import (
    KIB,
    Answer,
    ContractServer,
    Request,
    json_answer,
    json_size,
    nonempty_str,
)


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
        parsed = self._batch(request)
        if isinstance(parsed, Answer):
            return parsed
        write_key, batch = parsed
        unknown_key = write_key != self.write_key
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
        self._keep(problems, unknown_key)
        if unknown_key or invalid:
            self.note(error="dropped: " + ("unknown write key" if unknown_key else
                                           f"{len(invalid)} invalid events"))  # fmt: skip
        return json_answer(200, {"success": True})

    def _batch(self, request: Request) -> tuple[str, list[Any]] | Answer:
        """(write key, events) of a request Segment reads, or the answer refusing it."""
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
            if json_size(event) > self.max_event:
                self.note(error=f"event {index} over {self.max_event} bytes")
                return json_answer(
                    400,
                    {"success": False,
                     "error": f"event {index} exceeds {self.max_event} bytes"},
                )  # fmt: skip
        return credentials[0], batch

    def _keep(self, problems: list[tuple[int, Any, str | None]], unknown_key: bool) -> None:
        """Keep the valid events not seen before; record the others as dropped."""
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

    def problem(self, event: Any) -> str | None:
        """Why Segment would drop ``event``, or None."""
        if not isinstance(event, dict):
            return "not an object"
        kind = event.get("type")
        if kind not in self.TYPES:
            return f"type must be one of {sorted(self.TYPES)}, got {kind!r}"
        if not (nonempty_str(event.get("userId")) or nonempty_str(event.get("anonymousId"))):
            return "userId or anonymousId is required"
        if kind == "track" and not nonempty_str(event.get("event")):
            return "a track call needs an event name"
        if "messageId" in event and not nonempty_str(event["messageId"]):
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
