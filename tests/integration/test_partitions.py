"""Partitioned loads run inline: key ranges as runs of their own, each with its own
checkpoint, side by side within the job's concurrency."""

from __future__ import annotations

import collections
from datetime import UTC, datetime
from typing import Any

import pytest

from loader import QueryError, RejectedError, build_job, flush_notifications, open_state, run_job
from tests.integration.conftest import Schema, make_job
from tests.support.server import Delay, Endpoint


def partitioned(schema: Schema, endpoint: Endpoint, **extra: Any) -> dict[str, Any]:
    schema.execute(
        "CREATE TABLE events AS SELECT g AS id, g % 7 AS kind FROM generate_series(1, 2000) g"
    )
    query = f"SELECT id, kind FROM {schema.table('events')}"
    source = {"cursor": {"column": "id"}, "partition": {"column": "id", "count": 4}}
    return make_job(
        schema, endpoint.url, query, source=source, batch={"size": 50}, concurrency=4,
        **extra,
    )  # fmt: skip


def test_ranges_run_side_by_side_each_with_its_checkpoint(
    schema: Schema, endpoint: Endpoint, isolated_state: str
) -> None:
    """Every row once; each range keeps its own checkpoint; the next run sends only new
    rows (new keys above the top go to the last range)."""
    job = build_job(partitioned(schema, endpoint))
    endpoint.reject_when(lambda body: True, Delay(0.05, 200))
    result = run_job(job)

    assert result.status == "succeeded" and result.rows_posted == 2000
    assert collections.Counter(endpoint.accepted_ids()) == {i: 1 for i in range(1, 2001)}
    # Side by side, within the cap: each request takes 50 ms, so the requests arriving
    # within any 40 ms are the ones in flight together.
    arrivals = sorted(r.at for r in endpoint.requests)
    together = max(sum(1 for t in arrivals if start <= t < start + 0.04) for start in arrivals)
    assert 1 < together <= job.concurrency
    state = open_state(isolated_state)
    checkpoints = [state.checkpoint(f"{job.name}#p{i}") for i in range(4)]
    assert [c.position for c in checkpoints if c] == [(500,), (1000,), (1500,), (2000,)]
    runs = {run.job: run for i in range(4) for run in state.history(f"{job.name}#p{i}")}
    assert {run.rows_posted for run in runs.values()} == {500}
    (parent,) = state.history(job.name)
    assert (parent.status, parent.rows_posted) == ("succeeded", 2000)

    schema.execute("INSERT INTO events VALUES (5000, 1), (1700, 2)")
    again = run_job(job)
    assert again.rows_posted == 1  # 5000, in the last range; 1700 is behind its checkpoint
    assert endpoint.accepted_ids()[-1] == 5000
    state.close()


def test_a_failing_range_fails_the_run_and_the_others_finish(
    schema: Schema, endpoint: Endpoint, isolated_state: str
) -> None:
    """One range refused (on_reject: fail) fails the run; the other ranges deliver."""
    job = build_job(partitioned(schema, endpoint, on_reject="fail"))
    endpoint.reject_when(lambda body: b'"id":1200,' in body, (400, {}, b"no"))

    with pytest.raises(RejectedError) as caught:
        run_job(job)

    assert caught.value.result is not None and caught.value.result.status == "failed"
    delivered = set(endpoint.accepted_ids())
    assert set(range(1, 1001)) | set(range(1501, 2001)) <= delivered
    assert 1200 not in delivered


def test_reset_forgets_every_range_and_its_boundaries(
    schema: Schema, endpoint: Endpoint, isolated_state: str
) -> None:
    """`state reset` of the job resets its ranges: the next run sends everything again,
    cut by boundaries computed anew from the current key span."""
    job = build_job(partitioned(schema, endpoint))
    state = open_state(isolated_state)
    run_job(job, state=state)
    schema.execute("INSERT INTO events SELECT g, 0 FROM generate_series(2001, 4000) g")

    assert state.reset(job.name)
    assert all(state.checkpoint(f"{job.name}#p{i}") is None for i in range(4))
    result = run_job(job, state=state)

    assert result.rows_posted == 4000
    runs = [state.history(f"{job.name}#p{i}", limit=1)[0] for i in range(4)]
    assert [run.rows_posted for run in runs] == [1000] * 4  # 1..4000 cut in four
    state.close()


def test_a_dry_run_keeps_no_boundaries(
    schema: Schema, endpoint: Endpoint, isolated_state: str
) -> None:
    """A dry run of a partitioned job previews requests and records nothing, not even the
    ranges: a real run after more rows arrive cuts the span it finds then."""
    job = build_job(partitioned(schema, endpoint))
    state = open_state(isolated_state)

    preview = run_job(job, state=state, dry_run=True)

    assert preview.status == "dry-run" and preview.rows_read == 2000
    assert endpoint.requests == [] and state.history(job.name) == []
    schema.execute("INSERT INTO events SELECT g, 0 FROM generate_series(2001, 4000) g")
    run_job(job, state=state)
    runs = [state.history(f"{job.name}#p{i}", limit=1)[0] for i in range(4)]
    assert [run.rows_posted for run in runs] == [1000] * 4
    state.close()


def test_keys_all_null_are_sent_as_one_range(
    schema: Schema, endpoint: Endpoint, isolated_state: str
) -> None:
    """A partition column without values yet leaves nothing to split: the rows go as one
    range, and no boundaries are kept."""
    schema.execute(
        "CREATE TABLE drafts AS SELECT g AS id, NULL::int AS k FROM generate_series(1, 30) g"
    )
    job = build_job(make_job(schema, endpoint.url, f"SELECT id, k FROM {schema.table('drafts')}",
                             source={"partition": {"column": "k", "count": 3}}))  # fmt: skip

    result = run_job(job)

    assert result.status == "succeeded" and sorted(endpoint.accepted_ids()) == list(range(1, 31))
    state = open_state(isolated_state)
    assert [run.rows_posted for run in state.history(f"{job.name}#all")] == [30]
    state.close()


def test_a_row_limit_counts_for_the_whole_run(
    schema: Schema, endpoint: Endpoint, isolated_state: str
) -> None:
    job = build_job(partitioned(schema, endpoint))
    assert run_job(job, limit=70).rows_posted == 70
    assert len(endpoint.accepted_ids()) == 70


def test_reset_leaves_other_jobs_ranges_alone(schema: Schema, isolated_state: str) -> None:
    """`state reset a_2` does not touch job a-2's ranges (`_` is not a wildcard)."""
    state = open_state(isolated_state)
    lease = state.acquire("a-2#p0", "r1")
    state.record_batch(lease, "r1", fingerprint="f", position=(5,))
    state.release(lease)
    state.reset("a_2")
    assert state.checkpoint("a-2#p0") is not None
    state.close()


def test_a_partitioned_job_lags_as_much_as_its_slowest_range(
    schema: Schema, endpoint: Endpoint, isolated_state: str
) -> None:
    """Cursor lag (status, metrics, max_lag alerts) is that of the least advanced range:
    the run's result carries it, and so does the state store."""
    schema.execute(
        "CREATE TABLE ev AS SELECT g AS id, timestamptz '2024-01-01 00:00:00+00' + "
        "g * interval '1 day' AS at FROM generate_series(1, 40) g"
    )
    job = build_job(make_job(
        schema, endpoint.url, f"SELECT id, at FROM {schema.table('ev')}",
        source={"cursor": {"column": "at", "key": "id"},
                "partition": {"column": "id", "count": 2}},
        alerts={"webhook": endpoint.url + "/alerts", "max_lag": "1h"},
    ))  # fmt: skip
    state = open_state(isolated_state)

    result = run_job(job, state=state)

    # Ranges 1..20 and 21..40: the first range's last row (day 20) is the oldest.
    expected = (datetime(2024, 1, 21, tzinfo=UTC), 20)
    assert result.checkpoint == expected
    assert state.lag_position(job.name) == expected
    assert flush_notifications(timeout=10)
    lagging = [r.json() for r in endpoint.requests if r.path == "/alerts"]
    assert [a["event"] for a in lagging] == ["lagging"]
    state.close()


def test_a_partitioned_run_reports_progress_of_the_whole_run(
    schema: Schema, endpoint: Endpoint, isolated_state: str
) -> None:
    """progress= reaches the ranges (it used to be dropped): each report is the sum over
    the ranges so far, never going back, and the last one counts every row."""
    job = build_job(partitioned(schema, endpoint))
    reports: list[int] = []
    result = run_job(job, progress=lambda so_far: reports.append(so_far.rows_posted))

    assert result.rows_posted == 2000
    assert reports and reports == sorted(reports)
    assert reports[-1] == 2000
    assert max(reports) > 500  # more than one range's rows: the sums, not one range's


def test_a_run_that_cannot_be_split_is_recorded_failed(
    schema: Schema, endpoint: Endpoint, isolated_state: str
) -> None:
    """A partition column that holds no integers fails the run before anything is sent;
    its history row and its result say failed, with the reason (not succeeded)."""
    schema.execute(
        "CREATE TABLE events AS SELECT g AS id, 'k' || g AS kind FROM generate_series(1, 9) g"
    )
    source = {"partition": {"column": "kind", "count": 2}}
    spec = make_job(schema, endpoint.url, f"SELECT id, kind FROM {schema.table('events')}",
                    source=source)  # fmt: skip
    job = build_job(spec)

    with pytest.raises(QueryError) as caught:
        run_job(job)

    assert caught.value.result is not None and caught.value.result.status == "failed"
    state = open_state(isolated_state)
    (record,) = state.history(job.name)
    state.close()
    assert record.status == "failed" and "integer column" in (record.error or "")
    assert endpoint.requests == []
