"""Scale-out on Procrastinate as an operator runs it: a clock that only queues, workers
as real processes, one real PostgreSQL (state and queue in the test's schema), a real
HTTP endpoint. Workers are killed with SIGKILL and stopped with SIGTERM mid-run."""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from loader import JobQueue, open_state
from tests.integration.conftest import Schema, make_job
from tests.support.logs import log_events
from tests.support.processes import finish, nothing_left_running, start_loader, terminate
from tests.support.server import Delay, Endpoint

__all__ = ["nothing_left_running"]  # the fixture, used by every test here


@pytest.fixture
def pg_state(pg_state: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """State and queue in the test's schema, exported to the processes started."""
    monkeypatch.setenv("LOADER_EXECUTOR", "procrastinate")
    assert cli("db", "upgrade").returncode == 0
    return pg_state


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loader", *args], cwd=cwd, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


def worker(cwd: Path, *args: str) -> subprocess.Popen[str]:
    return start_loader(cwd, "worker", "jobs", "--stalled-after", "2s", *args, up="worker started")


def stop(process: subprocess.Popen[str]) -> tuple[int, str]:
    code, out, _ = terminate(process)
    return code, out


def wait_until(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def write_job(cwd: Path, name: str, spec: dict[str, Any]) -> Path:
    directory = cwd / "jobs"
    directory.mkdir(exist_ok=True)
    path = directory / f"{name}.yml"
    path.write_text(yaml.safe_dump({**spec, "name": name}))
    return path


def events(schema: Schema, count: int) -> str:
    schema.execute(f"CREATE TABLE events AS SELECT g AS id FROM generate_series(1, {count}) g")
    return f"SELECT id FROM {schema.table('events')}"


def history(pg_state: str, job: str) -> list[Any]:
    state = open_state(pg_state)
    try:
        return state.history(job)
    finally:
        state.close()


def queue_statuses(pg_state: str) -> list[str]:
    with JobQueue(pg_state.replace("postgresql+psycopg", "postgresql")) as queue:
        return [run.status for run in queue.runs(("todo", "doing", "failed"))]


def test_an_enqueued_run_runs_on_a_worker(
    tmp_path: Path, schema: Schema, endpoint: Endpoint, pg_state: str
) -> None:
    """`loader run --enqueue` queues the run; a worker process runs it with the same
    runner; `loader status` shows it queued, then finished."""
    path = write_job(tmp_path, "once", make_job(schema, endpoint.url, events(schema, 300)))

    queued = cli("run", "--enqueue", str(path), cwd=tmp_path)
    assert queued.returncode == 0 and "queued run once@" in queued.stdout, queued.stderr
    again = cli("run", "--enqueue", str(path), cwd=tmp_path)
    assert "already waiting in the queue" in again.stdout
    by_name = cli("run", "once", "--enqueue", "--json", cwd=tmp_path)  # jobs/once.yml
    document = json.loads(by_name.stdout)
    assert (document["job"], document["queued"]) == ("once", False), by_name.stderr
    assert document["run_id"].startswith("once@")
    status = cli("status", "--json", cwd=tmp_path)
    assert '"queued": 1' in status.stdout, status.stdout

    process = worker(tmp_path)
    wait_until(lambda: len(endpoint.accepted_ids()) == 300)
    code, out = stop(process)

    assert code == 0, out
    assert sorted(endpoint.accepted_ids()) == list(range(1, 301))
    (run,) = history(pg_state, "once")
    assert run.status == "succeeded" and run.pid == process.pid
    assert queue_statuses(pg_state) == []


def test_one_clock_two_workers_each_slot_runs_once(
    tmp_path: Path, schema: Schema, endpoint: Endpoint, pg_state: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The clock only queues (LOADER_EXECUTOR read from .env); each slot runs once, on
    one of the two workers, which logs its one run.ended."""
    monkeypatch.delenv("LOADER_EXECUTOR")
    (tmp_path / ".env").write_text("LOADER_EXECUTOR=procrastinate\n")
    query = events(schema, 20)
    spec = make_job(schema, endpoint.url, query, schedule="every 1s")
    write_job(tmp_path, "tick", spec)
    workers = [worker(tmp_path), worker(tmp_path)]
    clock = start_loader(tmp_path, "clock", "jobs", up="loader.clock")

    time.sleep(6)
    clock_code, clock_out = stop(clock)
    time.sleep(1.5)  # let the last queued slot run
    outs = [stop(w) for w in workers]

    assert clock_code == 0 and log_events(clock_out, "run.queued", job="tick"), clock_out
    assert all(code == 0 for code, _ in outs), outs
    state = open_state(pg_state)
    runs = state.history("tick", limit=100)
    slot_records = state.slots("tick", limit=100)
    state.close()
    assert len(runs) >= 3
    assert len({run.run_id for run in runs}) == len(runs)
    assert {run.pid for run in runs} <= {w.pid for w in workers}
    assert all(run.status == "succeeded" for run in runs)
    # every run sent the 20 rows once: no slot ran twice
    assert collections.Counter(endpoint.accepted_ids()) == {i: len(runs) for i in range(1, 21)}
    slots = {s.run_id: s.status for s in slot_records}
    assert {run.run_id for run in runs} <= set(slots)
    assert all(slots[run.run_id] == "succeeded" for run in runs)
    ended = [e["run_id"] for _, out in outs for e in log_events(out, "run.ended")]
    assert sorted(ended) == sorted(run.run_id for run in runs)  # one run.ended per run


def slow_incremental(schema: Schema, endpoint: Endpoint, count: int) -> dict[str, Any]:
    endpoint.script("/", *[Delay(0.15)] * 1000)
    return make_job(
        schema, endpoint.url + "/", events(schema, count),
        source={"cursor": {"column": "id"}}, batch={"size": 10},
    )  # fmt: skip


def test_a_run_on_a_killed_worker_resumes_on_another(
    tmp_path: Path, schema: Schema, endpoint: Endpoint, pg_state: str
) -> None:
    """SIGKILL mid-run: the other worker finds the run stalled, queues it again and
    resumes it from the checkpoint; nothing is lost, at most the batch in flight twice."""
    path = write_job(tmp_path, "long", slow_incremental(schema, endpoint, 300))
    first = worker(tmp_path)
    assert cli("run", "--enqueue", str(path), cwd=tmp_path).returncode == 0
    wait_until(lambda: len(endpoint.accepted_ids()) >= 50)
    first.send_signal(signal.SIGKILL)
    finish(first)

    second = worker(tmp_path)
    wait_until(lambda: set(endpoint.accepted_ids()) >= set(range(1, 301)))
    code, out = stop(second)

    assert code == 0, out
    assert log_events(out, "worker.stalled_run", action="queued again"), out
    ids = endpoint.accepted_ids()
    assert sorted(set(ids)) == list(range(1, 301))
    assert len(ids) - 300 <= 10  # the one batch in flight when the worker died
    (run,) = history(pg_state, "long")
    assert run.status == "succeeded" and run.pid == second.pid
    assert queue_statuses(pg_state) == []


def test_sigterm_checkpoints_and_queues_the_run_again(
    tmp_path: Path, schema: Schema, endpoint: Endpoint, pg_state: str
) -> None:
    """SIGTERM mid-run: the worker saves the checkpoint, puts the run back in the queue
    and exits 0; the next worker continues where it stopped."""
    path = write_job(tmp_path, "long", slow_incremental(schema, endpoint, 200))
    first = worker(tmp_path)
    assert cli("run", "--enqueue", str(path), cwd=tmp_path).returncode == 0
    wait_until(lambda: len(endpoint.accepted_ids()) >= 30)
    started = time.monotonic()
    code, out = stop(first)

    assert code == 0 and time.monotonic() - started < 25, out
    assert log_events(out, "run.requeued")
    assert queue_statuses(pg_state) == ["todo"]
    sent_before = len(endpoint.accepted_ids())
    assert sent_before < 200

    second = worker(tmp_path)
    wait_until(lambda: set(endpoint.accepted_ids()) >= set(range(1, 201)))
    stop(second)
    ids = endpoint.accepted_ids()
    assert sorted(ids) == list(range(1, 201))  # nothing sent twice: the checkpoint held
    (run,) = history(pg_state, "long")
    assert run.status == "succeeded" and run.pid == second.pid


def test_the_queue_needs_postgresql(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOADER_EXECUTOR", "procrastinate")
    (tmp_path / "jobs").mkdir()
    result = cli("worker", "jobs", cwd=tmp_path)
    assert result.returncode == 2
    assert "LOADER_STATE_URL is 'sqlite:///" in result.stderr
    assert "set LOADER_QUEUE_URL (or LOADER_STATE_URL) to a postgresql:// URL" in result.stderr


def test_a_partitioned_run_spreads_its_ranges_over_the_workers(
    tmp_path: Path, schema: Schema, endpoint: Endpoint, pg_state: str
) -> None:
    """Each key range is a queued run of its own, on any worker; the whole run ends when
    the last range does, with the sums; requests in flight stay within concurrency."""
    endpoint.reject_when(lambda body: True, Delay(0.05, 200))
    spec = make_job(
        schema, endpoint.url, events(schema, 2000), batch={"size": 50}, concurrency=4,
        source={"cursor": {"column": "id"}, "partition": {"column": "id", "count": 4}},
    )  # fmt: skip
    pings = Endpoint().start()
    spec["heartbeat"] = pings.url + "/hb"
    path = write_job(tmp_path, "wide", spec)
    workers = [worker(tmp_path), worker(tmp_path)]
    assert cli("run", "--enqueue", str(path), cwd=tmp_path).returncode == 0

    def whole_run_ended() -> bool:
        runs = history(pg_state, "wide")
        return bool(runs) and runs[0].status != "running"

    wait_until(whole_run_ended)
    outs = [stop(w) for w in workers]

    assert all(code == 0 for code, _ in outs), outs
    assert collections.Counter(endpoint.accepted_ids()) == {i: 1 for i in range(1, 2001)}
    (whole,) = history(pg_state, "wide")
    assert (whole.status, whole.rows_posted) == ("succeeded", 2000)
    ranges = [run for i in range(4) for run in history(pg_state, f"wide#p{i}")]
    assert sorted(run.rows_posted for run in ranges) == [500] * 4
    assert {run.pid for run in ranges} == {w.pid for w in workers}
    arrivals = sorted(r.at for r in endpoint.requests)
    together = max(sum(1 for t in arrivals if start <= t < start + 0.04) for start in arrivals)
    assert together <= 4
    # One heartbeat per whole run, not one per range.
    pings.stop()
    assert sorted(r.path for r in pings.requests) == ["/hb", "/hb/start"]


def test_a_killed_run_does_not_block_the_run_waiting_behind_it(
    tmp_path: Path, schema: Schema, endpoint: Endpoint, pg_state: str
) -> None:
    """SIGKILL mid-run while the next run of the job is already waiting: the stalled one
    is ended (it cannot be queued twice) and the waiting one resumes from the checkpoint."""
    path = write_job(tmp_path, "long", slow_incremental(schema, endpoint, 200))
    first = worker(tmp_path)
    assert cli("run", "--enqueue", str(path), cwd=tmp_path).returncode == 0
    wait_until(lambda: len(endpoint.accepted_ids()) >= 30)
    first.send_signal(signal.SIGKILL)
    finish(first)
    assert "queued run" in cli("run", "--enqueue", str(path), cwd=tmp_path).stdout

    second = worker(tmp_path)
    wait_until(lambda: set(endpoint.accepted_ids()) >= set(range(1, 201)))
    wait_until(lambda: queue_statuses(pg_state) == [])
    code, out = stop(second)

    assert code == 0 and "the run already waiting takes over" in out, out
    assert len(endpoint.accepted_ids()) - 200 <= 10


def test_a_stopping_worker_keeps_its_runs_from_being_taken_for_stalled(
    tmp_path: Path, schema: Schema, endpoint: Endpoint, pg_state: str
) -> None:
    """While a worker told to stop waits for a slow request, it keeps sending heartbeats:
    the other worker does not run the same run a second time meanwhile."""
    endpoint.script("/", Delay(0.2), Delay(0.2), Delay(4.0))
    spec = make_job(schema, endpoint.url + "/", events(schema, 100),
                    source={"cursor": {"column": "id"}}, batch={"size": 10})  # fmt: skip
    path = write_job(tmp_path, "slow", spec)
    first = worker(tmp_path)
    assert cli("run", "--enqueue", str(path), cwd=tmp_path).returncode == 0
    wait_until(lambda: len(endpoint.requests) >= 3)  # the 4 s request is under way
    second = worker(tmp_path)
    code, out = stop(first)

    assert code == 0 and log_events(out, "run.requeued"), out
    wait_until(lambda: set(endpoint.accepted_ids()) >= set(range(1, 101)))
    code, out = stop(second)
    assert not log_events(out, "worker.stalled_run")
    assert sorted(endpoint.accepted_ids()) == list(range(1, 101))


def test_enqueue_refuses_options_a_worker_would_not_see(tmp_path: Path) -> None:
    path = tmp_path / "j.yml"
    path.write_text("source: {url: 'sqlite://', query: SELECT 1}\ntarget: {url: 'http://x.io/'}\n")
    result = cli("run", "--enqueue", "--dry-run", "--target-url", "http://127.0.0.1:9/",
                 str(path), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2
    assert "--dry-run, --target-url cannot go with it" in result.stderr


def test_a_worker_without_the_queue_tables_says_how_to_set_them_up(
    tmp_path: Path, schema: Schema, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOADER_STATE_URL", schema.scoped_url)
    (tmp_path / "jobs").mkdir()
    result = cli("worker", "jobs", cwd=tmp_path)
    assert result.returncode == 7, result.stderr
    assert "`loader db upgrade`" in result.stderr and "Traceback" not in result.stderr


def test_a_partitioned_run_that_cannot_be_split_is_recorded_failed(
    tmp_path: Path, schema: Schema, endpoint: Endpoint, pg_state: str
) -> None:
    schema.execute("CREATE TABLE words AS SELECT 'w' || g AS word FROM generate_series(1, 9) g")
    spec = make_job(schema, endpoint.url, f"SELECT word FROM {schema.table('words')}",
                    source={"partition": {"column": "word", "count": 2}})  # fmt: skip
    path = write_job(tmp_path, "words", spec)
    process = worker(tmp_path)
    assert cli("run", "--enqueue", str(path), cwd=tmp_path).returncode == 0
    wait_until(lambda: bool(history(pg_state, "words")) and
               history(pg_state, "words")[0].status != "running")  # fmt: skip
    stop(process)
    (run,) = history(pg_state, "words")
    assert run.status == "failed" and "key ranges need an integer column" in (run.error or "")
    assert endpoint.requests == []


def test_a_worker_killed_in_the_middle_of_a_range_loses_nothing(
    tmp_path: Path, schema: Schema, endpoint: Endpoint, pg_state: str
) -> None:
    """kill -9 of the worker running the ranges: the other worker recovers them, every
    row arrives, and the whole run ends succeeded."""
    endpoint.script("/", *[Delay(0.1)] * 1000)
    spec = make_job(
        schema, endpoint.url + "/", events(schema, 400), batch={"size": 10}, concurrency=2,
        source={"cursor": {"column": "id"}, "partition": {"column": "id", "count": 2}},
    )  # fmt: skip
    path = write_job(tmp_path, "split", spec)
    first = worker(tmp_path)
    assert cli("run", "--enqueue", str(path), cwd=tmp_path).returncode == 0
    wait_until(lambda: len(endpoint.accepted_ids()) >= 60)
    first.send_signal(signal.SIGKILL)
    finish(first)

    second = worker(tmp_path)
    wait_until(lambda: set(endpoint.accepted_ids()) >= set(range(1, 401)))
    wait_until(lambda: history(pg_state, "split")[0].status != "running")
    code, out = stop(second)

    assert code == 0 and log_events(out, "worker.stalled_run"), out
    (whole,) = history(pg_state, "split")
    assert whole.status == "succeeded"
    assert len(endpoint.accepted_ids()) - 400 <= 2 * 10  # a batch in flight per range
