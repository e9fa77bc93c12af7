"""A run killed with batches in flight: the next run re-cuts those batches first, so each
unchanged one goes out again under its first Idempotency-Key; the killed run's record
keeps what its checkpoint proves, and its clock slot is closed.

Each test runs against both state backends (SQLite file, PostgreSQL).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from loader import Status, build_job, delivery, open_state, run_job, runner, sink
from loader.state import SqlStateStore
from tests.integration.conftest import Schema, make_job
from tests.support.server import Delay, Endpoint, Recorded


@pytest.fixture(params=["sqlite", "postgres"])
def state_url(
    request: pytest.FixtureRequest, schema: Schema, isolated_state: str,
    monkeypatch: pytest.MonkeyPatch,
) -> str:  # fmt: skip
    """The state store URL for this test, also exported for the CLI it starts."""
    if request.param == "sqlite":
        return isolated_state
    monkeypatch.setenv("LOADER_STATE_URL", schema.scoped_url)
    return schema.scoped_url


def _events(schema: Schema, count: int) -> str:
    schema.execute(
        f"CREATE TABLE events AS SELECT g AS id, 'e' || g AS name, "
        f"timestamptz '2024-05-01 12:00:00+00' + g * interval '1 second' AS updated_at "
        f"FROM generate_series(1, {count}) AS g"
    )
    return f"SELECT id, name, updated_at FROM {schema.table('events')}"


def _spec(schema: Schema, endpoint: Endpoint, query: str, **extra: Any) -> dict[str, Any]:
    cursor = {"column": "updated_at", "key": "id"}
    return make_job(schema, endpoint.url, query, source={"cursor": cursor}, **extra)


def _kill_with_batches_in_flight(
    tmp_path: Path, spec: dict[str, Any], endpoint: Endpoint, requests: int
) -> None:
    """Run ``spec`` as a real process and kill -9 it once ``requests`` requests arrived
    (the later ones held unanswered) and the earlier ones were committed."""
    path = tmp_path / "job.yml"
    path.write_text(yaml.safe_dump(spec))
    process = subprocess.Popen(
        [sys.executable, "-m", "loader", "run", str(path)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while len(endpoint.requests) < requests:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.01)
    time.sleep(0.5)  # the answered batches are committed by now
    process.kill()
    process.communicate()
    assert process.returncode == -signal.SIGKILL


def _key_by_ids(requests: list[Recorded]) -> dict[tuple[int, ...], str]:
    return {tuple(row["id"] for row in r.rows()): r.headers["Idempotency-Key"] for r in requests}


def test_a_killed_runs_unchanged_batches_go_again_under_their_first_keys(
    tmp_path: Path, schema: Schema, endpoint: Endpoint, state_url: str
) -> None:
    """kill -9 with four batches in flight (the last a partial one of 28 rows), then new
    rows and one updated row: the rerun re-sends the three unchanged batches under their
    first keys, the changed one under a new key, and every row arrives."""
    query = _events(schema, 2028)  # 21 batches of 100, the last of 28
    # Batches 18 to 21 reach the endpoint and are never answered before the kill.
    endpoint.reject_when(lambda body: b'"id":1701,' in body or b'"id":1801,' in body
                         or b'"id":1901,' in body or b'"id":2001,' in body,
                         Delay(60, 200))  # fmt: skip
    spec = _spec(schema, endpoint, query, batch={"size": 100}, concurrency=4)
    _kill_with_batches_in_flight(tmp_path, spec, endpoint, 21)
    first = _key_by_ids(endpoint.requests)
    in_flight = sorted(ids for ids in first if ids[0] > 1700)
    assert [len(ids) for ids in in_flight] == [100, 100, 100, 28]

    schema.execute(
        "INSERT INTO events SELECT g, 'new', timestamptz '2024-05-02 00:00:00+00' + g * "
        "interval '1 second' FROM generate_series(2029, 2100) AS g"
    )
    schema.execute("UPDATE events SET updated_at = '2024-05-03 00:00:00+00' WHERE id = 1750")
    endpoint.clear_rejections()
    killed_requests = len(endpoint.requests)
    state = open_state(state_url)
    result = run_job(build_job(spec), state=state)
    history = state.history("test_job")
    state.close()

    rerun = _key_by_ids(endpoint.requests[killed_requests:])
    for ids in in_flight[1:]:  # unchanged: re-sent alone, under the first key
        assert rerun[ids] == first[ids], ids
    changed = tuple(i for i in in_flight[0] if i != 1750)
    assert rerun[changed] != first[in_flight[0]]
    assert sorted(set(endpoint.accepted_ids())) == list(range(1, 2101))
    assert result.rows_posted == 328 - 1 + 72 + 1
    killed = history[1]
    assert (killed.status, killed.rows_posted) == (Status.ABANDONED, 1700)
    assert killed.cursor_to is not None and killed.cursor_to[1] == 1700


def test_a_cursor_jobs_batch_is_hashed_once_for_its_cut_and_its_request(
    schema: Schema, endpoint: Endpoint, isolated_state: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each batch's body is hashed once (SHA-256, about 0.11 CPU s per million rows):
    the key its cut records is the one its request carries."""
    scopes: list[str] = []

    def counted(job: str, scope: str, body: bytes) -> str:
        scopes.append(scope)
        return sink.idempotency_key(job, scope, body)

    monkeypatch.setattr(runner, "idempotency_key", counted)
    monkeypatch.setattr(delivery, "idempotency_key", counted)
    spec = _spec(schema, endpoint, _events(schema, 250), batch={"size": 100})
    state = open_state(isolated_state)
    assert run_job(build_job(spec), state=state).rows_posted == 250
    state.close()
    assert len(scopes) == len(set(scopes)) == len(endpoint.requests) == 3
    assert [r.headers["Idempotency-Key"] for r in endpoint.requests] == [
        sink.idempotency_key("test_job", scope, r.body)
        for scope, r in zip(scopes, endpoint.requests, strict=True)
    ]


def test_parts_of_a_cursor_jobs_batch_get_keys_of_their_own(
    schema: Schema, endpoint: Endpoint, isolated_state: str
) -> None:
    """The key a cursor job's batch carries from its cut goes with that body only: the
    halves of a batch the endpoint refuses as too large, and the parts of later batches
    split up front, each get their own. No key ever goes with two different bodies."""
    endpoint.reject_when(lambda body: body.count(b'"id":') > 40, 413)
    spec = _spec(schema, endpoint, _events(schema, 300), batch={"size": 100})
    state = open_state(isolated_state)
    assert run_job(build_job(spec), state=state).rows_posted == 300
    state.close()
    bodies: dict[str, set[bytes]] = {}
    for request in endpoint.requests:
        bodies.setdefault(request.headers["Idempotency-Key"], set()).add(request.body)
    assert all(len(sent) == 1 for sent in bodies.values())
    assert len(bodies) > 3 and sorted(set(endpoint.accepted_ids())) == list(range(1, 301))


def loader_cli(tmp_path: Path, *args: str) -> str:
    """Run ``loader ARGS`` in ``tmp_path``; its standard output (it must succeed)."""
    done = subprocess.run(
        [sys.executable, "-m", "loader", *args], cwd=tmp_path, capture_output=True, text=True,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_killed_run_shows_that_its_lock_lapsed_until_the_next_run(
    tmp_path: Path, schema: Schema, endpoint: Endpoint, state_url: str
) -> None:
    """kill -9 leaves the run recorded as running: history and status say its lock
    lapsed (its process is gone), and the next run records it abandoned."""
    query = _events(schema, 300)
    endpoint.reject_when(lambda body: b'"id":201,' in body, Delay(60, 200))
    spec = _spec(schema, endpoint, query, batch={"size": 100})
    _kill_with_batches_in_flight(tmp_path, spec, endpoint, 3)
    history = json.loads(loader_cli(tmp_path, "history", "job.yml", "--json"))["runs"]
    assert [(r["status"], r["lock_lapsed_at"] is not None) for r in history] == [
        ("running", True)]  # fmt: skip
    (row,) = json.loads(loader_cli(tmp_path, "status", "job.yml", "--json"))["jobs"]
    assert row["status"] == "running" and row["lock_lapsed_at"] is not None
    assert "running, lock lapsed" in loader_cli(tmp_path, "status", "job.yml")
    assert "running, lock lapsed" in loader_cli(tmp_path, "history", "job.yml")

    endpoint.clear_rejections()
    state = open_state(state_url)
    assert run_job(build_job(spec), state=state).status is Status.SUCCEEDED
    state.close()
    history = json.loads(loader_cli(tmp_path, "history", "job.yml", "--json"))["runs"]
    assert [(r["status"], r["lock_lapsed_at"]) for r in history] == [
        ("succeeded", None), ("abandoned", None)]  # fmt: skip


def test_a_running_run_shows_its_lock_lapsed_once_it_expired_or_was_given_up(
    url_store: SqlStateStore,
) -> None:
    """A run recorded as running holds its lock while the lock is live; once the lock
    expired unrenewed, the record says when; a lock given up says so at once; a run
    that never held the job's lock (a partitioned run waiting on its ranges) says
    nothing."""
    store = url_store
    store.start_run("live", "job", None)
    taken = time.time()
    lease = store.acquire("job", "live", ttl=0.5)
    assert store.history("job")[0].lock_lapsed_at is None
    time.sleep(0.6)
    lapsed = store.run_record("live")
    assert lapsed is not None and lapsed.lock_lapsed_at is not None
    assert taken + 0.5 <= lapsed.lock_lapsed_at <= time.time()  # when it expired
    store.renew(lease, ttl=30)
    assert store.history("job")[0].lock_lapsed_at is None
    store.release(lease)
    (released,) = store.history("job")
    assert released.lock_lapsed_at is not None and released.lock_lapsed_at <= time.time()
    store.start_run("waiting", "other", None)
    assert store.history("other")[0].lock_lapsed_at is None


def test_a_batch_re_cut_twice_keeps_its_first_key(
    tmp_path: Path, schema: Schema, endpoint: Endpoint, state_url: str
) -> None:
    """A run that re-cut a crashed run's batches and is killed too leaves them recorded
    with their first keys: a third run still sends them under those keys."""
    query = _events(schema, 250)
    endpoint.reject_when(lambda body: b'"id":101,' in body or b'"id":201,' in body,
                         Delay(60, 200))  # fmt: skip
    spec = _spec(schema, endpoint, query, batch={"size": 100}, concurrency=2)
    _kill_with_batches_in_flight(tmp_path, spec, endpoint, 3)
    first = _key_by_ids(endpoint.requests)
    schema.execute("INSERT INTO events VALUES (251, 'new', '2024-05-02 00:00:00+00')")
    _kill_with_batches_in_flight(tmp_path, spec, endpoint, 5)
    second = _key_by_ids(endpoint.requests[3:])
    endpoint.clear_rejections()
    state = open_state(state_url)
    run_job(build_job(spec), state=state)
    state.close()
    third = _key_by_ids(endpoint.requests[5:])

    for ids in (tuple(range(101, 201)), tuple(range(201, 251))):
        assert first[ids] == second[ids] == third[ids], ids
    assert third[(251,)] not in first.values()
    assert sorted(set(endpoint.accepted_ids())) == list(range(1, 252))


def test_a_taken_over_run_closes_its_clock_slot(url_store: SqlStateStore) -> None:
    """The run whose lock is taken over after its process died is recorded abandoned with
    the counts its last checkpoint saved, and its claimed slot is closed."""
    store = url_store
    run_id = "job@20260101T000000Z"
    assert store.claim_slot("job", 1.0, run_id, "clock-a")
    store.start_run(run_id, "job", None)
    lease = store.acquire("job", run_id, ttl=0.0)
    counts = {"rows_posted": 7, "rows_rejected": 0, "cursor_to": (7,)}
    store.record_batch(lease, run_id, fingerprint="f", position=(7,), ttl=0.0, counts=counts)
    time.sleep(0.01)
    store.acquire("job", "next-run")

    (record,) = store.history("job")
    assert (record.status, record.rows_posted, record.cursor_to) == ("abandoned", 7, (7,))
    (slot,) = store.slots("job")
    assert (slot.status, slot.detail) == ("abandoned", "the run's process died")


def test_a_taken_over_partitioned_run_counts_its_ranges(url_store: SqlStateStore) -> None:
    """A partitioned run whose process died is recorded with the sums of the counts its
    ranges' checkpoints kept."""
    store = url_store
    store.start_run("whole", "job", None)
    store.acquire("job", "whole", ttl=0.0)
    for index, posted in enumerate((30, 12)):
        part = f"whole#p{index}"
        store.start_run(part, f"job#p{index}", None)
        part_lease = store.acquire(f"job#p{index}", part)
        counts = {"rows_posted": posted, "rows_rejected": index, "cursor_to": (posted,)}
        store.record_batch(part_lease, part, fingerprint="f", position=(posted,), counts=counts)
    time.sleep(0.01)
    store.acquire("job", "next-run")

    whole = store.run_record("whole")
    assert whole is not None
    assert (whole.status, whole.rows_posted, whole.rows_rejected) == ("abandoned", 42, 1)


@pytest.fixture(params=["sqlite", "postgres"])
def url_store(request: pytest.FixtureRequest, schema: Schema, tmp_path: Path) -> Any:
    url = f"sqlite:///{tmp_path / 'state.db'}" if request.param == "sqlite" else schema.scoped_url
    store = open_state(url)
    yield store
    store.close()


def test_row_ids_are_the_same_on_both_encoding_paths_and_every_resend(
    schema: Schema, endpoint: Endpoint, isolated_state: str
) -> None:
    """The PostgreSQL fast path and the generic path add the same row_id to each row, a
    full refresh sends the same ids again, and an updated row gets a new one."""
    query = _events(schema, 300)
    forced = query.replace("SELECT id,", "SELECT ARRAY[now()] AS forces_generic, id,")
    fast = build_job(
        _spec(schema, endpoint, query, target={"url": endpoint.url + "/fast", "row_id": "rid"})
    )
    target = {"url": endpoint.url + "/generic", "row_id": "rid", "omit": ["forces_generic"]}
    generic = build_job(_spec(schema, endpoint, forced, target=target))

    run_job(fast)
    run_job(generic, full_refresh=True)
    run_job(fast, full_refresh=True)
    schema.execute("UPDATE events SET updated_at = '2024-05-03 00:00:00+00' WHERE id = 5")
    run_job(fast)

    fast_rows, generic_rows = endpoint.rows("/fast"), endpoint.rows("/generic")
    assert len(fast_rows) == 601 and len(generic_rows) == 300
    ids = {row["id"]: row["rid"] for row in generic_rows}
    assert [(row["id"], row["rid"]) for row in fast_rows[:600]] == list(ids.items()) * 2
    assert len(set(ids.values())) == 300
    assert fast_rows[600]["id"] == 5 and fast_rows[600]["rid"] not in ids.values()


def test_pending_cuts_chain_from_the_checkpoint_and_forget_the_rest(
    url_store: SqlStateStore,
) -> None:
    """The cuts read back are those chaining from the checkpoint, the latest of each
    start; stale ones are deleted, acknowledged ones dropped with the checkpoint, and a
    reset forgets them all."""
    store = url_store
    lease = store.acquire("job", "run-a")

    def cut(after: str, last: str) -> int:
        return store.record_cut(lease, "run-a", scope=f"s:{after}", after=after, last=last,
                                rows=1, key=f"k:{after}")  # fmt: skip

    first, _, stale = cut("start", "[a]"), cut("[a]", "[b]"), cut("[x]", "[y]")
    replacing = cut("[a]", "[b]")
    chain = store.pending_cuts(lease, "start")
    assert [(c.after, c.last) for c in chain] == [("start", "[a]"), ("[a]", "[b]")]
    assert chain[1].id == replacing

    store.record_batch(lease, "run-a", fingerprint="f", position=(1,), cuts=[first])
    assert [c.id for c in store.pending_cuts(lease, "[a]")] == [replacing]
    assert stale != replacing and store.pending_cuts(lease, "[x]") == []  # not kept
    cut("[b]", "[c]")
    store.release(lease)
    store.reset("job")
    lease = store.acquire("job", "run-b")
    assert store.pending_cuts(lease, "[b]") == []
