"""The recipes in jobs/ run against servers that enforce each API's documented contract.

Each recipe file is loaded as it is, with environment variables pointing it at the
test's PostgreSQL schema (through the connection's search_path) and at a contract
server (tests/support/contracts/). The server refuses what the real API refuses, so
a green test means the SQL builds the API's event shape, the batches stay inside its
limits and the credentials go where the API reads them.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest

from loader import RunResult, TooManyRejectionsError, load_job, run_job
from loader.errors import SinkError
from loader.rows import row_id
from tests.integration.conftest import Schema
from tests.support.contracts import AmplitudeV2, ContractServer, MixpanelImport, SegmentBatch

ROOT = Path(__file__).resolve().parents[2]
JOBS = ROOT / "jobs"
ROWS = 5000
MORE = 300
BIG_EVERY = 10  # every tenth event carries a 20 KB property: bodies fill up by bytes first

WRITE_KEY = "wk-segment-test-0123456789"
AMPLITUDE_KEY = "amp-key-0123456789abcdef"
MP_ACCOUNT = "loader-import.4c1b2a.mp-service-account"
MP_SECRET = "mp-secret-0123456789"
MP_PROJECT = "3141592"


@pytest.fixture
def events(schema: Schema) -> Schema:
    """An ``events`` table like an app's: bigint id, nullable user, jsonb properties."""
    schema.execute(
        "CREATE TABLE events (id bigint PRIMARY KEY, user_id text, name text NOT NULL, "
        "properties jsonb, created_at timestamptz NOT NULL)"
    )
    schema.execute("CREATE INDEX ON events (created_at, id)")
    insert_events(schema, 1, ROWS)
    return schema


def insert_events(schema: Schema, first: int, last: int) -> None:
    """Events ``first``..``last``: three share each second (the cursor key breaks the
    ties), every 250th has no user, every tenth has a 20 KB property, a few have none."""
    schema.execute(
        f"""
        INSERT INTO events
        SELECT g,
               CASE WHEN g % 250 = 0 THEN NULL ELSE 'user-' || lpad((g % 997)::text, 5, '0') END,
               (ARRAY['Signed Up', 'Order Completed', 'Page Viewed'])[g % 3 + 1],
               CASE WHEN g % 101 = 0 THEN NULL ELSE
                 jsonb_build_object('plan', 'pro', 'n', g, 'price', g * 1.25)
                 || CASE WHEN g % {BIG_EVERY} = 0
                         THEN jsonb_build_object('notes', repeat('x', 20000))
                         ELSE '{{}}'::jsonb END
               END,
               timestamptz '2024-05-01 12:00:00Z' + (g / 3) * interval '1 second'
        FROM generate_series({first}, {last}) AS g
        """
    )


def ids(first: int, last: int, *, with_user_only: bool) -> list[int]:
    return [i for i in range(first, last + 1) if not (with_user_only and i % 250 == 0)]


def created_at(event: int) -> datetime:
    """The ``created_at`` of event ``event`` (see :func:`insert_events`)."""
    return datetime(2024, 5, 1, 12, tzinfo=UTC) + timedelta(seconds=event // 3)


def rid(job: str, event: int) -> str:
    """The ``target.row_id`` of event ``event`` in recipe ``job`` (cursor created_at, id)."""
    return row_id(job, (created_at(event), event))


@cache
def events_by_rid(job: str) -> dict[str, int]:
    """The event id of each row id of ``job``, for every event a test inserts."""
    return {rid(job, event): event for event in range(1, ROWS + MORE + 1)}


def run(recipe: str, env: dict[str, str]) -> RunResult:
    return run_job(load_job(JOBS / recipe, env=env))


def run_cli(recipe: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``loader run jobs/<recipe>`` in a subprocess, with only ``env`` added."""
    return subprocess.run(
        [sys.executable, "-m", "loader", "run", str(JOBS / recipe)],
        cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def basic(username: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def started(server: ContractServer) -> Iterator[Any]:
    server.start()
    yield server
    server.stop()


def by_id(keys: list[int], items: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return dict(zip(keys, items, strict=True))


def assert_within(server: ContractServer, *, max_bytes: int, max_items: int) -> None:
    """Every request was accepted, within the limits, and some were cut by bytes."""
    sizes = [exchange.size for exchange in server.exchanges]
    counts = [exchange.items or 0 for exchange in server.exchanges]
    assert server.rejected == 0, [e.error for e in server.exchanges if not e.ok]
    assert max(sizes) <= max_bytes and max(counts) <= max_items
    assert sum(count < max_items for count in counts) >= 2  # the byte limit mattered


# Segment ------------------------------------------------------------------------------


@pytest.fixture
def segment() -> Iterator[SegmentBatch]:
    yield from started(SegmentBatch(WRITE_KEY))


def segment_env(schema: Schema, server: SegmentBatch, **extra: str) -> dict[str, str]:
    env = {"DATABASE_URL": schema.scoped_url, "SEGMENT_API_URL": server.url}
    return {**env, "SEGMENT_WRITE_KEY": WRITE_KEY, **extra}


def segment_ids(server: SegmentBatch) -> list[int]:
    by_rid = events_by_rid("segment_batch")
    return [by_rid[event["messageId"]] for event in server.events]


def test_segment_recipe_delivers_every_event_once_within_the_limits(
    events: Schema, segment: SegmentBatch
) -> None:
    """Every event with a user arrives once as a valid track call, in requests under
    500 KB with the write key; a second run sends only the events added since."""
    result = run("segment_batch.yml", segment_env(events, segment))

    expected = ids(1, ROWS, with_user_only=True)
    assert result.status == "succeeded" and result.rows_posted == len(expected)
    assert sorted(segment_ids(segment)) == expected
    assert segment.dropped == [] and segment.duplicates == 0
    assert_within(segment, max_bytes=500 * 1024, max_items=1000)
    assert {e.headers["authorization"] for e in segment.exchanges} == {basic(WRITE_KEY)}
    assert by_id(segment_ids(segment), segment.events)[10] == {  # a 20 KB property
        "type": "track",
        "userId": "user-00010",
        "event": "Order Completed",
        "properties": {"n": 10, "plan": "pro", "notes": "x" * 20000, "price": 12.50},
        "timestamp": "2024-05-01T12:00:03Z",
        "messageId": rid("segment_batch", 10),
    }

    insert_events(events, ROWS + 1, ROWS + MORE)
    again = run("segment_batch.yml", segment_env(events, segment))

    assert again.rows_posted == len(ids(ROWS + 1, ROWS + MORE, with_user_only=True))
    assert sorted(segment_ids(segment)) == ids(1, ROWS + MORE, with_user_only=True)
    assert segment.duplicates == 0 and segment.rejected == 0


def test_segment_recipe_stops_when_the_write_key_is_missing(
    events: Schema, segment: SegmentBatch, tmp_path: Path
) -> None:
    """Without SEGMENT_WRITE_KEY the recipe sends an empty key, which Segment refuses
    with a 400: the run fails (exit 4) once max_rejected is passed, nothing accepted."""
    env = segment_env(events, segment)
    del env["SEGMENT_WRITE_KEY"]

    done = run_cli("segment_batch.yml", env, tmp_path)

    assert done.returncode == 4, done.stderr
    assert "more than max_rejected (50)" in done.stderr and "missing write key" in done.stderr
    assert segment.events == [] and segment.dropped == []
    assert {e.error for e in segment.exchanges} == {"missing write key"}


def test_segment_drops_events_sent_with_an_unknown_write_key(
    events: Schema, segment: SegmentBatch
) -> None:
    """A wrong (non-empty) write key is not caught: Segment answers 200 and drops the
    events, so the run succeeds while nothing is kept. This is why the recipe says to
    check the source's debugger after the first run."""
    result = run("segment_batch.yml", segment_env(events, segment, SEGMENT_WRITE_KEY="wk-typo"))

    assert result.status == "succeeded"
    assert segment.events == []
    assert {reason for _, reason in segment.dropped} == {"unknown write key"}
    assert len(segment.dropped) == result.rows_posted


# Amplitude ----------------------------------------------------------------------------


@pytest.fixture
def amplitude() -> Iterator[AmplitudeV2]:
    yield from started(AmplitudeV2(AMPLITUDE_KEY))


def amplitude_env(schema: Schema, server: AmplitudeV2, **extra: str) -> dict[str, str]:
    env = {"DATABASE_URL": schema.scoped_url, "AMPLITUDE_API_URL": server.url}
    return {**env, "AMPLITUDE_API_KEY": AMPLITUDE_KEY, **extra}


def test_amplitude_recipe_delivers_every_event_once_within_the_limits(
    events: Schema, amplitude: AmplitudeV2
) -> None:
    """Every event with a user arrives once, valid for HTTP V2, in requests under 1 MB
    and 2000 events carrying the API key; a second run sends only the new events."""
    result = run("amplitude_events.yml", amplitude_env(events, amplitude))

    expected = ids(1, ROWS, with_user_only=True)
    assert result.status == "succeeded" and result.rows_posted == len(expected)
    assert sorted(event["event_id"] for event in amplitude.events) == expected
    assert amplitude.duplicates == 0
    assert_within(amplitude, max_bytes=1_000_000, max_items=1000)
    assert by_id([e["event_id"] for e in amplitude.events], amplitude.events)[1] == {
        "user_id": "user-00001",
        "event_type": "Order Completed",
        "time": 1714564800000,  # 2024-05-01T12:00:00Z in milliseconds
        "event_properties": {"n": 1, "plan": "pro", "price": 1.25},
        "event_id": 1,
        "insert_id": rid("amplitude_events", 1),
    }

    insert_events(events, ROWS + 1, ROWS + MORE)
    again = run("amplitude_events.yml", amplitude_env(events, amplitude))

    assert again.rows_posted == len(ids(ROWS + 1, ROWS + MORE, with_user_only=True))
    assert sorted(e["event_id"] for e in amplitude.events) == ids(
        1, ROWS + MORE, with_user_only=True
    )
    assert amplitude.duplicates == 0 and amplitude.rejected == 0


def test_amplitude_drops_the_events_a_recipe_sends_again_by_their_row_ids(
    events: Schema, amplitude: AmplitudeV2
) -> None:
    """A full refresh sends every event again under its first insert_id, so Amplitude
    keeps each once; an updated event (its created_at moved) is a new event."""
    env = amplitude_env(events, amplitude)
    run("amplitude_events.yml", env)
    events.execute("UPDATE events SET created_at = created_at + interval '1 day' WHERE id = 7")

    again = run_job(load_job(JOBS / "amplitude_events.yml", env=env), full_refresh=True)

    expected = ids(1, ROWS, with_user_only=True)
    assert again.rows_posted == len(expected)
    assert amplitude.duplicates == len(expected) - 1
    assert sorted(e["event_id"] for e in amplitude.events) == sorted([*expected, 7])


def test_amplitude_recipe_fails_with_a_wrong_api_key(
    events: Schema, amplitude: AmplitudeV2
) -> None:
    """A wrong key is a 400 for every request: the run stops past max_rejected, naming
    Amplitude's answer, and nothing is ingested."""
    env = amplitude_env(events, amplitude, AMPLITUDE_API_KEY="amp-key-wrong")

    with pytest.raises(TooManyRejectionsError) as caught:
        run("amplitude_events.yml", env)

    assert caught.value.status == 400 and "Invalid API key" in str(caught.value)
    assert "amp-key-wrong" not in str(caught.value)
    assert amplitude.events == []
    assert {e.error for e in amplitude.exchanges} == {"wrong api_key"}


def test_amplitude_recipe_isolates_an_event_amplitude_refuses(
    events: Schema, amplitude: AmplitudeV2
) -> None:
    """A user id shorter than Amplitude's 5 characters makes its whole request a 400;
    loader splits the batch, keeps that event as a dead letter and delivers the rest."""
    events.execute("UPDATE events SET user_id = 'u7' WHERE id = 1234")

    result = run("amplitude_events.yml", amplitude_env(events, amplitude))

    expected = [i for i in ids(1, ROWS, with_user_only=True) if i != 1234]
    assert (result.status, result.rows_rejected) == ("partial", 1)
    assert sorted(event["event_id"] for event in amplitude.events) == expected
    assert amplitude.duplicates == 0


# Mixpanel -----------------------------------------------------------------------------


@pytest.fixture
def mixpanel() -> Iterator[MixpanelImport]:
    yield from started(MixpanelImport(MP_ACCOUNT, MP_SECRET, project_id=MP_PROJECT))


def mixpanel_env(schema: Schema, server: MixpanelImport, **extra: str) -> dict[str, str]:
    env = {"DATABASE_URL": schema.scoped_url, "MIXPANEL_API_URL": server.url,
           "MIXPANEL_PROJECT_ID": MP_PROJECT, "MIXPANEL_SERVICE_ACCOUNT": MP_ACCOUNT}  # fmt: skip
    return {**env, "MIXPANEL_SERVICE_SECRET": MP_SECRET, **extra}


def mixpanel_ids(server: MixpanelImport) -> list[int]:
    by_rid = events_by_rid("mixpanel_import")
    return [by_rid[e["properties"]["$insert_id"]] for e in server.events]


def test_mixpanel_recipe_delivers_every_event_once_within_the_limits(
    events: Schema, mixpanel: MixpanelImport
) -> None:
    """Every event arrives once (those without a user with an empty distinct_id),
    gzipped, under 2 MB uncompressed and 2000 events, with the service account; a
    second run sends only the new events."""
    result = run("mixpanel_import.yml", mixpanel_env(events, mixpanel))

    assert result.status == "succeeded" and result.rows_posted == ROWS
    assert sorted(mixpanel_ids(mixpanel)) == ids(1, ROWS, with_user_only=False)
    assert Counter(mixpanel_ids(mixpanel)).most_common(1)[0][1] == 1
    assert mixpanel.failed_records == [] and mixpanel.duplicates == 0
    assert mixpanel.unknown_fields_seen == set()  # the cursor's columns were omitted
    assert_within(mixpanel, max_bytes=2_000_000, max_items=2000)
    for exchange in mixpanel.exchanges:
        assert exchange.headers["authorization"] == basic(MP_ACCOUNT, MP_SECRET)
        assert exchange.headers["content-encoding"] == "gzip"
        assert exchange.path == "/import"
    first = by_id(mixpanel_ids(mixpanel), mixpanel.events)[1]
    assert first["event"] == "Order Completed"
    assert first["properties"] == {
        "n": 1, "plan": "pro", "price": 1.25, "time": 1714564800,
        "distinct_id": "user-00001", "$insert_id": rid("mixpanel_import", 1),
    }  # fmt: skip
    no_user = by_id(mixpanel_ids(mixpanel), mixpanel.events)[250]
    assert no_user["properties"]["distinct_id"] == ""

    insert_events(events, ROWS + 1, ROWS + MORE)
    again = run("mixpanel_import.yml", mixpanel_env(events, mixpanel))

    assert again.rows_posted == MORE
    assert sorted(mixpanel_ids(mixpanel)) == ids(1, ROWS + MORE, with_user_only=False)
    assert mixpanel.duplicates == 0 and mixpanel.rejected == 0


def test_mixpanel_recipe_fails_at_once_with_a_wrong_secret(
    events: Schema, mixpanel: MixpanelImport, tmp_path: Path
) -> None:
    """A wrong service-account secret is a 401: the run fails at the first answer
    (exit 4), without splitting batches or retrying, the secret masked; nothing is
    imported."""
    env = mixpanel_env(events, mixpanel, MIXPANEL_SERVICE_SECRET="mp-secret-wrong")

    done = run_cli("mixpanel_import.yml", env, tmp_path)

    assert done.returncode == 4, done.stderr
    assert "401" in done.stderr and "mp-secret-wrong" not in done.stdout + done.stderr
    assert mixpanel.events == []
    assert 1 <= mixpanel.requests <= 4  # the requests already in flight (concurrency 4)
    assert {e.status for e in mixpanel.exchanges} == {401}

    # The right secret for another project is refused the same way.
    with pytest.raises(SinkError) as caught:
        run("mixpanel_import.yml", mixpanel_env(events, mixpanel, MIXPANEL_PROJECT_ID="2718281"))
    assert caught.value.status == 401 and mixpanel.events == []


# The contracts themselves -------------------------------------------------------------


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def test_the_contracts_refuse_what_the_apis_refuse(
    segment: SegmentBatch, amplitude: AmplitudeV2, mixpanel: MixpanelImport, http: httpx.Client
) -> None:
    """A green recipe test means something only if the stand-ins are strict: each
    refuses oversized bodies, too many events, bad credentials and malformed events."""
    track = {"type": "track", "userId": "user-1", "event": "Signed Up", "messageId": "m-1"}
    auth = {"Authorization": basic(WRITE_KEY)}
    post = http.post

    def segment_status(body: Any, headers: dict[str, str] = auth) -> int:
        return post(segment.url + "/v1/batch", json=body, headers=headers).status_code

    assert segment_status({"batch": [track]}) == 200
    assert segment_status({"batch": [track]}, {}) == 400  # no write key
    assert segment_status({"batch": [{**track, "x": "y" * 33_000}]}) == 400  # event > 32 KB
    assert segment_status({"batch": [{**track, "p": "y" * 30_000}] * 20}) == 400  # > 500 KB
    assert segment_status({"batch": [{"type": "track", "event": "No User"}]}) == 200
    assert [reason for _, reason in segment.dropped] == ["userId or anonymousId is required"]

    event = {"user_id": "user-1", "event_type": "Signed Up", "time": 1714564800000,
             "insert_id": "events-1"}  # fmt: skip

    def amplitude_answer(events: list[Any], key: str = AMPLITUDE_KEY) -> tuple[int, Any]:
        answer = post(amplitude.url + "/2/httpapi", json={"api_key": key, "events": events})
        return answer.status_code, answer.json()

    status, body = amplitude_answer([event])
    assert status == 200 and body["events_ingested"] == 1
    assert amplitude_answer([event], "nope") == (400, {"code": 400, "error": "Invalid API key"})
    assert amplitude_answer([event] * 2001)[0] == 413
    status, body = amplitude_answer([{**event, "event_properties": {"p": "y" * 600}}] * 1700)
    assert status == 413  # over 1 MB
    status, body = amplitude_answer([event, {**event, "user_id": "u7"}, {"user_id": "user-2"}])
    assert status == 400 and body["events_with_invalid_fields"] == {"user_id": [1]}
    assert body["events_with_missing_fields"] == {"event_type": [2]}
    assert amplitude_answer([{**event, "created_at": "2024-05-01"}])[0] == 400
    assert amplitude_answer([event])[0] == 200
    assert len(amplitude.events) == 1 and amplitude.duplicates == 1  # same insert_id

    properties = {"time": 1714564800, "distinct_id": "user-1", "$insert_id": "events-1"}
    row: dict[str, Any] = {"event": "Signed Up", "properties": properties}
    url = f"{mixpanel.url}/import?strict=1&project_id={MP_PROJECT}"
    good = {"Authorization": basic(MP_ACCOUNT, MP_SECRET)}

    def mixpanel_answer(events: list[Any], headers: dict[str, str] = good) -> tuple[int, Any]:
        answer = post(url, json=events, headers=headers)
        return answer.status_code, answer.json()

    assert mixpanel_answer([row])[0] == 200
    assert mixpanel_answer([row], {"Authorization": basic(MP_ACCOUNT, "nope")})[0] == 401
    assert mixpanel_answer([row] * 2001)[0] == 413
    assert mixpanel_answer([{**row, "pad": "y" * 1100}] * 1900)[0] == 413  # > 2 MB
    bad = [{**row, "properties": {**row["properties"], "distinct_id": "null"}},
           {**row, "properties": {**row["properties"], "time": "2024-05-01"}},
           {**row, "properties": {**row["properties"], "$insert_id": "events-2"}}]  # fmt: skip
    status, body = mixpanel_answer(bad)
    assert status == 400 and body["num_records_imported"] == 1
    assert [(f["index"], f["field"]) for f in body["failed_records"]] == [
        (0, "properties.distinct_id"), (1, "properties.time")]  # fmt: skip
    assert len(mixpanel.events) == 2  # the valid event of a 400 is imported anyway
    status, body = mixpanel_answer([{**row, "id": 3}])  # a key beside event and properties
    assert status == 400 and body["failed_records"][0]["field"] == "id"
