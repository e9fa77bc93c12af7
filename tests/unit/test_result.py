"""Outcomes as values: statuses, a partitioned run's combined result, run options."""

from __future__ import annotations

import threading

from loader import RunOptions, RunResult, Status
from loader.result import combine


def part(status: Status, posted: int, in_flight: int = 0) -> RunResult:
    return RunResult("job#p0", "r#p0", status, posted, posted, 1, 0, 0.1, in_flight=in_flight)


def test_every_status_the_state_store_writes_is_a_status() -> None:
    """A run taken over ("abandoned") and a claimed slot read back as Status members; an
    abandoned range has ended, a running or interrupted one has not."""
    assert Status("abandoned").ended and Status("failed").ended
    assert not Status("running").ended and not Status("interrupted").ended
    assert not Status("claimed").ended


def test_a_partitioned_progress_report_sums_every_range() -> None:
    """Ranges still going make the whole run running; requests in flight add up."""
    whole = combine("job", "r", [part(Status.RUNNING, 5, 2), part(Status.SUCCEEDED, 7, 1)], 1.0)
    assert (whole.status, whole.rows_posted, whole.in_flight) == (Status.RUNNING, 12, 3)
    done = combine("job", "r", [part(Status.SUCCEEDED, 5), part(Status.PARTIAL, 7)], 1.0)
    assert done.status == Status.PARTIAL


def test_no_stop_signal_means_a_fresh_one() -> None:
    """run_job(job, stop=None) keeps working as it always did: the run gets its own event."""
    assert isinstance(RunOptions(stop=None).stop, threading.Event)  # type: ignore[arg-type]
    assert RunOptions().stop is not RunOptions().stop
