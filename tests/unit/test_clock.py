"""The clock's decisions, with an injected time and run function (no network, no waits
beyond a test's own events): slots, overlap, catch-up, missed slots, reload, isolation."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from loader import JobLockedError, RunResult, SourceError, open_state
from loader.scheduler import Clock, slot_run_id
from loader.state import SqlStateStore

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()


class Fake:
    """A settable wall clock and a run function that records its calls."""

    def __init__(self) -> None:
        self.time = T0
        self.calls: list[str] = []
        self.release = threading.Event()
        self.release.set()
        self.fail_with: Exception | None = None

    def now(self) -> float:
        return self.time

    def advance(self, *clocks: Clock, to: float) -> None:
        """Set the time to ``T0 + to`` and let each clock tick at it."""
        self.time = T0 + to
        for clock in clocks:
            clock.tick(self.time)

    def run(self, job: Any, *, state: Any, stop: Any, run_id: str) -> RunResult:
        self.calls.append(run_id)
        self.release.wait(5)
        if self.fail_with is not None:
            raise self.fail_with
        return RunResult(job.name, run_id, "succeeded", 3, 3, 1, 0, 0.1)


@pytest.fixture
def fake() -> Fake:
    return Fake()


@pytest.fixture
def state(tmp_path: Path) -> Iterator[SqlStateStore]:
    store = open_state(f"sqlite:///{tmp_path / 'state.db'}")
    yield store
    store.close()


def write_job(directory: Path, name: str, schedule: str | None, **extra: str) -> Path:
    lines = [
        "source: {url: 'sqlite:///x.db', query: SELECT 1 AS id}",
        "target: {url: 'http://127.0.0.1:9/in'}",
    ]
    if schedule:
        lines.append(f"schedule: '{schedule}'")
    lines += [f"{key}: {value}" for key, value in extra.items()]
    path = directory / f"{name}.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def start(jobs: Path, state: SqlStateStore, fake: Fake) -> Callable[..., Clock]:
    """Starts a clock on the test's jobs/, state store and fake time: built with ``options``
    and loaded as at start-up (with catch-up)."""

    def start(**options: Any) -> Clock:
        clock = Clock([jobs], state=state, now=fake.now, run=fake.run, env={}, **options)
        clock.load(catch_up=True)
        return clock

    return start


@pytest.fixture
def jobs(tmp_path: Path) -> Path:
    directory = tmp_path / "jobs"
    directory.mkdir()
    return directory


def test_slots_run_once_each_with_deterministic_ids(
    jobs: Path, state: SqlStateStore, fake: Fake, start: Callable[..., Clock]
) -> None:
    """Each due slot runs once, under the run id every clock derives for it."""
    write_job(jobs, "a", "every 10s")
    clock = start()
    assert clock.jobs["a"].next_at == T0 + 10

    for step in (5, 10, 12, 20):
        fake.advance(clock, to=step)
        assert clock.idle(5)

    assert fake.calls == [slot_run_id("a", T0 + 10), slot_run_id("a", T0 + 20)]
    assert slot_run_id("a", T0 + 10) == "a@20260101T120010Z"
    assert [s.status for s in state.slots("a")] == ["succeeded", "succeeded"]


def test_a_slot_claimed_by_another_clock_is_not_run(
    jobs: Path, state: SqlStateStore, fake: Fake, start: Callable[..., Clock]
) -> None:
    """Two clocks on one state store: each slot runs on one of them only."""
    write_job(jobs, "a", "every 10s")
    first, second = start(), start()
    fake.advance(first, second, to=10)
    assert first.idle(5) and second.idle(5)

    assert fake.calls == [slot_run_id("a", T0 + 10)]


def test_a_slot_is_skipped_while_the_previous_run_goes_on(
    jobs: Path, state: SqlStateStore, fake: Fake, start: Callable[..., Clock]
) -> None:
    """No overlap: the next slot of a job still running is skipped and recorded."""
    write_job(jobs, "slow", "every 10s")
    clock = start()
    fake.release.clear()
    fake.advance(clock, to=10)
    fake.advance(clock, to=20)
    fake.release.set()
    assert clock.idle(5)

    assert fake.calls == [slot_run_id("slow", T0 + 10)]
    statuses = {s.slot_at: (s.status, s.detail) for s in state.slots("slow")}
    assert statuses[T0 + 20] == ("skipped", "the previous run is still going")
    assert statuses[T0 + 10][0] == "succeeded"


def test_one_failing_job_does_not_stop_the_others(
    jobs: Path, state: SqlStateStore, fake: Fake, start: Callable[..., Clock]
) -> None:
    """A run raising any error is recorded as failed; the clock goes on."""
    write_job(jobs, "a", "every 10s")
    clock = start()
    fake.fail_with = RuntimeError("boom")
    fake.advance(clock, to=10)
    assert clock.idle(5)
    fake.fail_with = SourceError("db down")
    fake.advance(clock, to=20)
    assert clock.idle(5)
    fake.fail_with = JobLockedError("locked", holder="x")
    fake.advance(clock, to=30)
    assert clock.idle(5)

    statuses = [(s.status, s.detail) for s in reversed(state.slots("a"))]
    assert statuses == [
        ("failed", "RuntimeError: boom"), ("failed", "db down"), ("skipped", "locked"),
    ]  # fmt: skip


def test_after_downtime_the_latest_missed_slot_runs_once(
    jobs: Path, state: SqlStateStore, fake: Fake, start: Callable[..., Clock]
) -> None:
    """A restart runs one catch-up for the latest missed slot; older ones are recorded."""
    write_job(jobs, "a", "every 10s", catch_up="1m")
    clock = start()
    fake.advance(clock, to=10)
    assert clock.idle(5)

    fake.time = T0 + 55  # down for slots 20, 30, 40, 50
    restarted = start()
    assert restarted.idle(5)

    assert fake.calls[-1] == slot_run_id("a", T0 + 50)
    assert len(fake.calls) == 2
    slots = {s.slot_at: s.status for s in state.slots("a")}
    assert slots == {
        T0 + 10: "succeeded", T0 + 20: "missed", T0 + 30: "missed", T0 + 40: "missed",
        T0 + 50: "succeeded",
    }  # fmt: skip
    assert restarted.jobs["a"].next_at == T0 + 60


def test_a_missed_slot_older_than_the_window_is_recorded_not_run(
    jobs: Path, state: SqlStateStore, fake: Fake, start: Callable[..., Clock]
) -> None:
    """Beyond the catch-up window nothing runs at start; every missed slot is recorded."""
    write_job(jobs, "a", "@hourly", catch_up="10m")
    clock = start()
    fake.advance(clock, to=3600)
    assert clock.idle(5)

    fake.time = T0 + 3 * 3600 + 20 * 60  # 14:20: 14:00 is 20 minutes old
    start()

    assert len(fake.calls) == 1
    assert [s.status for s in state.slots("a")] == ["missed", "missed", "succeeded"]


def test_a_job_never_run_has_nothing_to_catch_up(
    jobs: Path, state: SqlStateStore, fake: Fake, start: Callable[..., Clock]
) -> None:
    """The first start of a job does not run it for slots before the clock knew it."""
    write_job(jobs, "a", "every 10s")
    start()
    assert fake.calls == [] and state.slots("a") == []


def test_bad_files_and_unscheduled_jobs_are_left_out(
    jobs: Path, state: SqlStateStore, fake: Fake, start: Callable[..., Clock]
) -> None:
    """A bad job file is reported and left out; jobs without a schedule are ignored."""
    write_job(jobs, "good", "every 10s")
    write_job(jobs, "manual", None)
    (jobs / "bad.yml").write_text("source: {url: 'sqlite://'}\n")
    clock = start()

    assert set(clock.jobs) == {"good"}
    assert list(clock.problems) == [jobs / "bad.yml"]
    assert clock.problems[jobs / "bad.yml"][0].endswith("source.query: required key is missing")


def test_reload_picks_up_new_and_changed_jobs(
    jobs: Path, state: SqlStateStore, fake: Fake, start: Callable[..., Clock]
) -> None:
    """Reloading adds new jobs, drops removed ones and reschedules changed ones."""
    write_job(jobs, "a", "every 10s")
    clock = start()
    write_job(jobs, "b", "every 20s")
    write_job(jobs, "a", "every 30s")
    assert clock._files_changed()

    clock.load(catch_up=False)

    assert {name: s.next_at for name, s in clock.jobs.items()} == {"a": T0 + 30, "b": T0 + 20}
    (jobs / "b.yml").unlink()
    clock.load(catch_up=False)
    assert set(clock.jobs) == {"a"}


def test_a_slot_due_a_moment_ago_is_run_not_missed(
    jobs: Path, state: SqlStateStore, fake: Fake, start: Callable[..., Clock]
) -> None:
    """A clock started just after a slot (a deploy) runs it even with catch_up: 0s; the
    claim decides between the old and the new clock."""
    write_job(jobs, "a", "every 10s", catch_up="0s")
    clock = start()
    fake.advance(clock, to=10)
    assert clock.idle(5)

    fake.time = T0 + 20.5
    second = start()
    assert second.idle(5)

    assert fake.calls[-1] == slot_run_id("a", T0 + 20)
    assert [s.status for s in state.slots("a")] == ["succeeded", "succeeded"]


def test_an_impossible_schedule_is_a_bad_file_not_a_crash(
    jobs: Path, state: SqlStateStore, fake: Fake, start: Callable[..., Clock]
) -> None:
    """A schedule that never fires is reported like any bad file; the rest still run."""
    write_job(jobs, "good", "every 10s")
    write_job(jobs, "never", "0 0 30 2 *")
    clock = start()

    assert set(clock.jobs) == {"good"}
    assert "never matches a date" in clock.problems[jobs / "never.yml"][0]


def test_runs_queued_when_the_clock_stops_do_not_start(
    jobs: Path, state: SqlStateStore, fake: Fake, start: Callable[..., Clock]
) -> None:
    """Stop set before a queued run starts: the slot is recorded as skipped."""
    write_job(jobs, "a", "every 10s")
    clock = start()
    clock._signal.set()
    fake.advance(clock, to=10)
    assert clock.idle(5)

    assert fake.calls == []
    assert state.slots("a")[0].status == "skipped"


def test_with_a_queue_the_clock_only_queues_each_slot_once(
    jobs: Path, state: SqlStateStore, fake: Fake, start: Callable[..., Clock]
) -> None:
    """Given enqueue, a claimed slot is queued (not run here) and recorded as queued; a
    slot due while a run is still waiting is skipped and recorded."""
    write_job(jobs, "a", "every 10s")
    queued: list[tuple[str, str, str, float]] = []
    waiting = [True, False]

    def enqueue(name: str, path: Path, *, run_id: str, slot: float) -> bool:
        queued.append((name, path.name, run_id, slot))
        return waiting.pop(0)

    clock, second = start(enqueue=enqueue), start(enqueue=enqueue)
    for step in (10, 20):
        fake.advance(clock, second, to=step)

    assert fake.calls == []
    assert queued == [
        ("a", "a.yml", slot_run_id("a", T0 + 10), T0 + 10),
        ("a", "a.yml", slot_run_id("a", T0 + 20), T0 + 20),
    ]
    statuses = [(s.status, s.detail) for s in reversed(state.slots("a"))]
    assert statuses == [
        ("queued", None), ("skipped", "a run of the job is still waiting in the queue"),
    ]  # fmt: skip
