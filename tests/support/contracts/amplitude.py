"""Amplitude's HTTP V2 API (``POST /2/httpapi``) as a contract."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from tests.support.contracts.base import (
    Answer,
    ContractServer,
    Request,
    is_int,
    json_answer,
    nonempty_str,
)


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
        parsed = self._events(request)
        if isinstance(parsed, Answer):
            return parsed
        events, min_id_length = parsed
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
        self._keep(events)
        return json_answer(
            200,
            {"code": 200, "events_ingested": len(events),
             "payload_size_bytes": len(request.body),
             "server_upload_time": int(time.time() * 1000)},
        )  # fmt: skip

    def _events(self, request: Request) -> tuple[list[Any], int] | Answer:
        """(events, min_id_length) of a request Amplitude reads, or the answer refusing it."""
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
        if not nonempty_str(payload.get("api_key")):
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
        return events, min_id_length

    def _keep(self, events: list[Any]) -> None:
        """Keep the events whose ``insert_id`` was not seen before."""
        for event in events:
            insert_id = event.get("insert_id")
            if insert_id is not None and insert_id in self._insert_ids:
                self.duplicates += 1
                continue
            if insert_id is not None:
                self._insert_ids.add(insert_id)
            self.events.append(event)

    def problems(self, event: Any, min_id_length: int) -> Iterator[tuple[str, str]]:
        """("invalid" or "missing", field) for each problem of ``event``."""
        if not isinstance(event, dict):
            yield "invalid", "event"
            return
        if not nonempty_str(event.get("event_type")):
            yield ("invalid" if "event_type" in event else "missing"), "event_type"
        ids = [name for name in ("user_id", "device_id") if event.get(name) is not None]
        if not ids:
            yield "missing", "user_id"
        for name in ids:
            value = event[name]
            if not isinstance(value, str) or len(value) < min_id_length:
                yield "invalid", name
        for name in self.INTEGERS:
            if name in event and not is_int(event[name]):
                yield "invalid", name
        if "insert_id" in event and not nonempty_str(event["insert_id"]):
            yield "invalid", "insert_id"
        for name in self.OBJECTS:
            if name in event and not isinstance(event[name], dict):
                yield "invalid", name
        if not self.allow_unknown_fields:
            for name in sorted(set(event) - self.FIELDS):
                yield "invalid", name
