"""The clock as an operator runs it: real processes, real PostgreSQL, real HTTP endpoint,
schedules of one second."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from loader import RunResult, open_state
from tests.integration.conftest import Schema, make_job
from tests.support.logs import log_events
from tests.support.processes import nothing_left_running, read_until, start_loader, terminate
from tests.support.server import Delay, Endpoint

__all__ = ["nothing_left_running"]  # the fixture, used by every test here


def events_table(schema: Schema, count: int) -> str:
    schema.execute(
        f"CREATE TABLE events AS SELECT g AS id, now() AS at FROM generate_series(1, {count}) g"
    )
    return f"SELECT id, at FROM {schema.table('events')}"


def write_job(directory: Path, name: str, spec: dict[str, Any]) -> Path:
    directory.mkdir(exist_ok=True)
    path = directory / f"{name}.yml"
    path.write_text(yaml.safe_dump({**spec, "name": name}))
    return path


def start_clock(cwd: Path, *args: str) -> subprocess.Popen[str]:
    """A clock process, returned once it is up (its first log line: signal handlers are
    installed by then), or once it has exited."""
    return start_loader(cwd, "clock", "jobs", *args, up="loader.clock")


def stop_clock(process: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str, float]:
    return terminate(process, timeout)


def scheduled(schema: Schema, endpoint: Endpoint, query: str, **extra: Any) -> dict[str, Any]:
    spec = make_job(schema, endpoint.url, query, source={"cursor": {"column": "id"}}, **extra)
    spec.setdefault("schedule", "every 1s")
    return spec


@pytest.fixture
def add_job(tmp_path: Path, schema: Schema, endpoint: Endpoint) -> Callable[..., Path]:
    """Adds jobs/NAME.yml posting a new table of ``rows`` events to the endpoint, with a
    cursor on id, every second unless ``extra`` says otherwise (it sets job sections)."""

    def add_job(name: str, rows: int, **extra: Any) -> Path:
        query = events_table(schema, rows)
        return write_job(tmp_path / "jobs", name, scheduled(schema, endpoint, query, **extra))

    return add_job


def test_runs_happen_on_time_and_are_incremental(
    tmp_path: Path, schema: Schema, endpoint: Endpoint, pg_state: str, add_job: Callable[..., Path]
) -> None:
    """Every second a run sends the rows added since the last one, each row once."""
    add_job("ticks", rows=10)

    clock = start_clock(tmp_path)
    time.sleep(2.5)
    schema.execute("INSERT INTO events SELECT g, now() FROM generate_series(11, 15) g")
    time.sleep(2.0)
    code, out, _ = stop_clock(clock)

    assert code == 0, out
    assert sorted(endpoint.accepted_ids()) == list(range(1, 16))
    state = open_state(pg_state)
    slots = [s for s in state.slots("ticks") if s.status == "succeeded"]
    state.close()
    assert len(slots) >= 3
    assert all(slot.slot_at == int(slot.slot_at) for slot in slots)  # on whole seconds
    assert log_events(out, "run.started", job="ticks") and log_events(out, "run.ended", job="ticks")


def test_a_slow_job_is_not_overlapped(
    tmp_path: Path, schema: Schema, endpoint: Endpoint, pg_state: str, add_job: Callable[..., Path]
) -> None:
    """A run longer than the interval makes the next slots skip, never run alongside."""
    endpoint.reject_when(lambda body: True, Delay(2.2, 200))
    add_job("slow", rows=3, batch={"size": 1})

    clock = start_clock(tmp_path)
    time.sleep(5)
    code, out, _ = stop_clock(clock)

    assert code == 0, out
    arrivals = sorted(r.at for r in endpoint.requests)
    assert all(b - a >= 2.0 for a, b in zip(arrivals, arrivals[1:], strict=False))
    state = open_state(pg_state)
    statuses = collections.Counter(s.status for s in state.slots("slow"))
    state.close()
    assert statuses["skipped"] >= 1
    assert log_events(out, "clock.slot_skipped", reason="the previous run is still going")


def test_two_clocks_run_each_slot_once(
    tmp_path: Path, schema: Schema, endpoint: Endpoint, pg_state: str, add_job: Callable[..., Path]
) -> None:
    """Two clocks alive at once (a deploy): every slot runs on exactly one of them."""
    add_job("twice", rows=5)
    clocks = [start_clock(tmp_path), start_clock(tmp_path)]
    for second in range(4):
        time.sleep(1)
        schema.execute(f"INSERT INTO events VALUES ({100 + second}, now())")
    time.sleep(1.5)  # a slot after the last insert
    outputs = [stop_clock(clock) for clock in clocks]

    assert all(code == 0 for code, _, _ in outputs), outputs
    ids = endpoint.accepted_ids()
    assert sorted(ids) == sorted(set(ids)) == [1, 2, 3, 4, 5, 100, 101, 102, 103]
    state = open_state(pg_state)
    slots = state.slots("twice")
    runs = state.history("twice", limit=100)
    state.close()
    assert len({s.run_id for s in slots}) == len(slots)
    assert len(runs) == len([s for s in slots if s.status != "missed"])
    ended = [
        e["run_id"] for _, out, _ in outputs for e in log_events(out, "run.ended", job="twice")
    ]
    assert len(ended) == len(set(ended)) == len(runs)  # one run.ended per run, either clock


def test_sigterm_stops_within_the_grace_period_with_state_consistent(
    tmp_path: Path, schema: Schema, endpoint: Endpoint, pg_state: str, add_job: Callable[..., Path]
) -> None:
    """SIGTERM during a long run: the run stops after its request in flight, keeps its
    checkpoint, the clock exits 0 quickly; the next start delivers the rest."""
    endpoint.reject_when(lambda body: True, Delay(0.2, 200))
    add_job("long", rows=400, batch={"size": 10}, schedule="every 1s")

    clock = start_clock(tmp_path)
    deadline = time.monotonic() + 30
    while len(endpoint.requests) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    code, out, took = stop_clock(clock)

    assert code == 0, out
    assert took < 5, out
    assert log_events(out, "run.ended", status="interrupted"), out
    state = open_state(pg_state)
    checkpoint = state.checkpoint("long")
    assert checkpoint is not None, out
    sent = len(endpoint.accepted_ids())
    assert checkpoint.position[0] <= sent < 400, (checkpoint, sent, out)

    endpoint.clear_rejections()
    clock = start_clock(tmp_path)
    deadline = time.monotonic() + 30
    while len(set(endpoint.accepted_ids())) < 400 and time.monotonic() < deadline:
        time.sleep(0.2)
    _, out, _ = stop_clock(clock)
    state.close()
    ids = endpoint.accepted_ids()
    assert sorted(set(ids)) == list(range(1, 401)), out
    assert len(ids) - 400 <= 10  # the batch in flight at most


def test_a_restart_after_missed_slots_makes_one_catch_up_run(
    tmp_path: Path, schema: Schema, endpoint: Endpoint, pg_state: str, add_job: Callable[..., Path]
) -> None:
    """Down for several slots: on restart, one run for the latest, the rest recorded."""
    add_job("gap", rows=2, schedule="every 1s")

    clock = start_clock(tmp_path)
    read_until(clock, '"event": "run.ended"')
    stop_clock(clock)
    state = open_state(pg_state)
    before = {s.slot_at for s in state.slots("gap")}
    time.sleep(3.2)
    clock = start_clock(tmp_path)
    read_until(clock, '"event": "clock.catching_up"')
    code, out, _ = stop_clock(clock)

    assert code == 0, out
    after = state.slots("gap", limit=100)
    state.close()
    new = [s for s in after if s.slot_at not in before]
    missed = [s for s in new if s.status == "missed"]
    caught_up = [s for s in new if s.status != "missed"]
    assert len(missed) >= 2
    # One catch-up run at start, then possibly a regular slot within the half second.
    assert 1 <= len(caught_up) <= 2
    assert max(s.slot_at for s in missed) < min(s.slot_at for s in caught_up)


def test_a_bad_job_file_is_reported_and_the_rest_run(
    tmp_path: Path, schema: Schema, endpoint: Endpoint, pg_state: str, add_job: Callable[..., Path]
) -> None:
    """The clock logs a bad file with its problems and runs the good jobs; --strict
    refuses to start."""
    add_job("good", rows=2)
    (tmp_path / "jobs" / "broken.yml").write_text("source: {url: 'sqlite://'}\nschedul: x\n")

    clock = start_clock(tmp_path)
    time.sleep(1.5)
    code, out, _ = stop_clock(clock)
    assert code == 0
    assert "broken.yml:2: schedul: unknown key; did you mean 'schedule'?" in out
    assert sorted(endpoint.accepted_ids()) == [1, 2]

    strict = subprocess.run(
        [sys.executable, "-m", "loader", "clock", "jobs", "--strict"],
        cwd=tmp_path, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert strict.returncode == 2 and "not starting" in strict.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nosuchdir/"], "no such job file or directory: nosuchdir"),
        (["empty"], "no job files (*.yml, *.yaml) in empty: nothing to schedule"),
        (["empty", "--strict"], "no job files (*.yml, *.yaml) in empty: nothing to schedule"),
        (["empty", "--grace", "60s"], "--grace 60s: at most 25s, because Heroku kills"),
    ],
)
def test_a_clock_that_would_idle_or_be_killed_refuses_to_start(
    tmp_path: Path, args: list[str], message: str
) -> None:
    """A typo in the Procfile, or a grace Heroku would cut short, stops the clock at
    start (exit 2) instead of idling forever or shortening the grace silently."""
    (tmp_path / "empty").mkdir()
    if "--grace" in args:
        (tmp_path / "empty" / "noop.yml").write_text("name: noop\n")
    done = subprocess.run(
        [sys.executable, "-m", "loader", "clock", *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_sighup_reloads_job_files(
    tmp_path: Path, schema: Schema, endpoint: Endpoint, pg_state: str
) -> None:
    """A job added while the clock runs is scheduled after SIGHUP, without a restart."""
    query = events_table(schema, 2)
    # A job that sends nothing: a clock with no job files at all refuses to start.
    idle = scheduled(schema, endpoint, f"{query} WHERE false", schedule="@yearly")
    write_job(tmp_path / "jobs", "idle", idle)
    clock = start_clock(tmp_path)
    time.sleep(0.8)
    write_job(tmp_path / "jobs", "late", scheduled(schema, endpoint, query))
    clock.send_signal(signal.SIGHUP)
    time.sleep(2)
    code, out, _ = stop_clock(clock)

    assert code == 0, out
    assert log_events(out, "clock.reloading"), out
    assert sorted(endpoint.accepted_ids()) == [1, 2]


def test_the_clock_runs_inside_another_app(
    tmp_path: Path, schema: Schema, endpoint: Endpoint, pg_state: str, add_job: Callable[..., Path]
) -> None:
    """Clock.start() runs in a thread of the host app; stop() ends it and its runs."""
    from loader.scheduler import Clock

    add_job("embedded", rows=3)
    state = open_state(pg_state)
    done = threading.Event()

    def run(job: Any, **options: Any) -> RunResult:
        from loader import run_job

        result = run_job(job, **options)
        done.set()
        return result

    clock = Clock([tmp_path / "jobs"], state=state, run=run, env=dict(os.environ))
    clock.start()
    assert done.wait(5)
    clock.stop(timeout=10)
    state.close()
    assert sorted(endpoint.accepted_ids()) == [1, 2, 3]


def test_a_clock_killed_mid_run_leaves_a_closed_slot_and_the_same_keys(
    tmp_path: Path, schema: Schema, endpoint: Endpoint, pg_state: str, add_job: Callable[..., Path]
) -> None:
    """kill -9 of the clock during a run, rows added meanwhile: the next clock's run
    re-sends the batches in flight under their first keys, the killed run is recorded
    abandoned with the rows its checkpoint proves, and its slot is closed."""
    endpoint.reject_when(lambda body: True, Delay(0.2, 200))
    add_job("long", rows=400, batch={"size": 10}, concurrency=2, schedule="every 1s")

    clock = start_clock(tmp_path)
    deadline = time.monotonic() + 30
    while len(endpoint.requests) < 6 and time.monotonic() < deadline:
        time.sleep(0.02)
    clock.kill()
    clock.wait()
    killed = {tuple(row["id"] for row in r.rows()): r.headers["Idempotency-Key"]
              for r in endpoint.requests}  # fmt: skip
    schema.execute("INSERT INTO events SELECT g, now() FROM generate_series(401, 405) g")
    endpoint.clear_rejections()
    clock = start_clock(tmp_path)
    deadline = time.monotonic() + 30
    while len(set(endpoint.accepted_ids())) < 405 and time.monotonic() < deadline:
        time.sleep(0.1)
    _, out, _ = stop_clock(clock)

    state = open_state(pg_state)
    slots = {slot.run_id: slot for slot in state.slots("long", limit=100)}
    runs = {run.run_id: run for run in state.history("long", limit=100)}
    state.close()
    assert sorted(set(endpoint.accepted_ids())) == list(range(1, 406)), out
    (dead,) = [run for run in runs.values() if run.status == "abandoned"]
    assert slots[dead.run_id].status == "abandoned"
    assert "claimed" not in {slot.status for slot in slots.values()}
    assert dead.cursor_to is not None and dead.rows_posted == dead.cursor_to[0] > 0
    later = collections.defaultdict(set)
    for r in endpoint.requests[len(killed) :]:
        later[tuple(row["id"] for row in r.rows())].add(r.headers["Idempotency-Key"])
    resent = [ids for ids in killed if ids in later]
    assert resent and all(later[ids] == {killed[ids]} for ids in resent), (killed, later)
    assert all(ids[0] > dead.rows_posted for ids in resent)
