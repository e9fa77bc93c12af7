"""Diff syncs: only new and changed rows are sent, then one delete per vanished key.

Each test runs against both state backends (SQLite file, PostgreSQL) unless it says; the
source is the real PostgreSQL, the endpoint a real HTTP server on loopback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from loader import LoaderError, QueryError, build_job, defaults, open_state, run_job
from loader.cli.options import exit_code
from loader.state import SqlStateStore
from loader.vanished import TooManyDeletesError
from tests.integration.conftest import Schema, make_job
from tests.support.server import Endpoint


@pytest.fixture(params=["sqlite", "postgres"])
def state_url(
    request: pytest.FixtureRequest, schema: Schema, isolated_state: str,
    monkeypatch: pytest.MonkeyPatch,
) -> str:  # fmt: skip
    """The state store URL for this test, also exported for the CLI it starts."""
    if request.param == "sqlite":
        return isolated_state
    url = schema.scoped_url
    monkeypatch.setenv("LOADER_STATE_URL", url)
    return url


@pytest.fixture
def state(state_url: str) -> Iterator[SqlStateStore]:
    """The state store at ``state_url``, closed after the test."""
    store = open_state(state_url)
    yield store
    store.close()


def stats(schema: Schema, count: int) -> str:
    """A customer_stats table of ``count`` users; the query has no updated_at."""
    schema.execute(
        "CREATE TABLE customer_stats AS SELECT g AS user_id, 'plan' || (g % 3) AS plan, "
        f"g * 2 AS orders FROM generate_series(1, {count}) AS g"
    )
    return f"SELECT user_id, plan, orders FROM {schema.table('customer_stats')}"


def diff_job(schema: Schema, endpoint: Endpoint, query: str, **diff: Any) -> Any:
    extra_target = diff.pop("target", {})
    spec = {"key": "user_id", **diff}
    if spec.pop("deletes", True):
        spec["deletes"] = {"url": endpoint.url + "/users/{user_id}"}
    return build_job(
        make_job(schema, endpoint.url + "/import", query, source={"diff": spec},
                 target=extra_target, batch={"size": 100})
    )  # fmt: skip


def posted(endpoint: Endpoint) -> list[int]:
    """The user_id of every row posted to /import and acknowledged."""
    return [row["user_id"] for r in endpoint.requests if r.ok and r.path == "/import"
            for row in r.rows()]  # fmt: skip


def deleted(endpoint: Endpoint) -> list[int]:
    """The user ids of the DELETE requests acknowledged (404: gone already)."""
    return [int(r.path.rsplit("/", 1)[1]) for r in endpoint.requests
            if r.method == "DELETE" and r.status in (200, 404)]  # fmt: skip


def test_first_run_sends_all_then_unchanged_rerun_sends_nothing(
    schema: Schema, endpoint: Endpoint, state: SqlStateStore
) -> None:
    """The first run sends every row; a rerun over the same data sends no request."""
    job = diff_job(schema, endpoint, stats(schema, 1000))
    first = run_job(job, state=state)
    assert sorted(posted(endpoint)) == list(range(1, 1001))
    assert (first.rows_posted, first.rows_unchanged) == (1000, 0)
    endpoint.requests.clear()
    second = run_job(job, state=state)
    assert endpoint.requests == []
    assert (second.rows_read, second.rows_posted, second.rows_unchanged) == (1000, 0, 1000)
    assert state.fingerprint_count("test_job") == 1000


def test_updated_and_inserted_rows_exactly_are_sent(
    schema: Schema, endpoint: Endpoint, state: SqlStateStore
) -> None:
    """With 1% of rows updated and a few inserted, exactly those rows go out."""
    job = diff_job(schema, endpoint, stats(schema, 2000))
    run_job(job, state=state)
    endpoint.requests.clear()
    schema.execute("UPDATE customer_stats SET orders = orders + 1 WHERE user_id % 100 = 7")
    schema.execute(
        "INSERT INTO customer_stats SELECT g, 'new', 0 FROM generate_series(5001, 5005) g"
    )
    result = run_job(job, state=state)
    expected = [i for i in range(1, 2001) if i % 100 == 7] + list(range(5001, 5006))
    assert sorted(posted(endpoint)) == expected
    assert {row["orders"] for row in endpoint.rows("/import") if row["user_id"] == 7} == {15}
    assert (result.rows_posted, result.rows_unchanged) == (25, 1980)
    assert deleted(endpoint) == []


def test_per_row_target_and_composite_key(
    schema: Schema, endpoint: Endpoint, state: SqlStateStore
) -> None:
    """Per-row PUTs with a two-column key: only the changed (account, user) pair is sent."""
    schema.execute(
        "CREATE TABLE members AS SELECT a AS account_id, u AS user_id, a * u AS score "
        "FROM generate_series(1, 3) a, generate_series(1, 4) u"
    )
    query = f"SELECT account_id, user_id, score FROM {schema.table('members')}"
    job = build_job(make_job(
        schema, endpoint.url + "/m/{account_id}/{user_id}", query,
        source={"diff": {"key": ["account_id", "user_id"],
                         "deletes": {"url": endpoint.url + "/m/{account_id}/{user_id}"}}},
        target={"per_row": True, "method": "PUT"},
    ))  # fmt: skip
    run_job(job, state=state)
    assert len([r for r in endpoint.requests if r.method == "PUT"]) == 12
    endpoint.requests.clear()
    schema.execute("UPDATE members SET score = 99 WHERE account_id = 2 AND user_id = 3")
    schema.execute("DELETE FROM members WHERE account_id = 3 AND user_id = 1")
    run_job(job, state=state)
    sent = [(r.method, r.path) for r in endpoint.requests]
    assert sent == [("PUT", "/m/2/3"), ("DELETE", "/m/3/1")]
    assert endpoint.requests[0].json() == {"account_id": 2, "user_id": 3, "score": 99}


def test_rejected_row_is_not_recorded_and_goes_again(
    schema: Schema, endpoint: Endpoint, state: SqlStateStore
) -> None:
    """A rejected row is dead-lettered without a fingerprint: the next run sends it again."""
    job = diff_job(schema, endpoint, stats(schema, 50))
    endpoint.reject_when(lambda body: b'"user_id":13,' in body, 422)
    run_job(job, state=state)
    assert 13 not in posted(endpoint) and state.fingerprint_count("test_job") == 49
    endpoint.clear_rejections()
    endpoint.requests.clear()
    run_job(job, state=state)
    assert posted(endpoint) == [13]


def test_vanished_keys_get_a_delete_after_all_upserts(
    schema: Schema, endpoint: Endpoint, state: SqlStateStore
) -> None:
    """Deleted rows: exactly those keys get a DELETE, after every upsert was acknowledged."""
    job = diff_job(schema, endpoint, stats(schema, 500))
    run_job(job, state=state)
    endpoint.requests.clear()
    schema.execute("DELETE FROM customer_stats WHERE user_id IN (3, 250, 499)")
    schema.execute("UPDATE customer_stats SET plan = 'x' WHERE user_id = 10")
    endpoint.script("/users/250", 404)  # already gone: counts as done
    result = run_job(job, state=state)
    assert sorted(deleted(endpoint)) == [3, 250, 499]
    methods = [r.method for r in endpoint.requests]
    assert methods == ["POST", "DELETE", "DELETE", "DELETE"]
    assert result.rows_deleted == 3 and state.fingerprint_count("test_job") == 497
    endpoint.requests.clear()
    run_job(job, state=state)
    assert endpoint.requests == []


def test_breaker_stops_half_vanished_before_any_delete(
    schema: Schema, endpoint: Endpoint, state: SqlStateStore
) -> None:
    """50% of keys vanishing stops the run with exit 4 before a single delete is sent."""
    job = diff_job(schema, endpoint, stats(schema, 200))
    run_job(job, state=state)
    endpoint.requests.clear()
    schema.execute("DELETE FROM customer_stats WHERE user_id % 2 = 0")
    with pytest.raises(TooManyDeletesError, match=r"100 of 200 keys vanished") as caught:
        run_job(job, state=state)
    assert [r for r in endpoint.requests if r.method == "DELETE"] == []
    assert state.fingerprint_count("test_job") == 200
    assert exit_code(caught.value) == defaults.EXIT_DELIVERY


def test_failed_read_sends_no_delete(
    schema: Schema, endpoint: Endpoint, state: SqlStateStore
) -> None:
    """A query failing midway (after batches went out) sends no delete at all."""
    stats(schema, 300)
    schema.execute("DELETE FROM customer_stats WHERE user_id = 5")
    query = (
        f"SELECT user_id, plan, 1 / (CASE WHEN user_id = 290 AND "
        f"current_setting('app.boom', true) = 'on' THEN 0 ELSE 1 END) AS orders "
        f"FROM {schema.table('customer_stats')} ORDER BY user_id"
    )
    job = diff_job(schema, endpoint, query)
    run_job(job, state=state)
    schema.execute("DELETE FROM customer_stats WHERE user_id = 7")
    schema.execute(f"ALTER DATABASE {schema.url.rsplit('/', 1)[1]} SET app.boom = 'on'")
    try:
        endpoint.requests.clear()
        with pytest.raises(LoaderError):
            run_job(job, state=state)
    finally:
        schema.execute(f"ALTER DATABASE {schema.url.rsplit('/', 1)[1]} RESET app.boom")
    assert [r for r in endpoint.requests if r.method == "DELETE"] == []
    run_job(job, state=state)
    assert deleted(endpoint) == [7]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("UPDATE customer_stats SET user_id = NULL WHERE user_id = 11990", "NULL key"),
        ("UPDATE customer_stats SET user_id = 11991 WHERE user_id = 11990", "user_id=11991"),
    ],
)
def test_null_and_duplicate_keys_refused_before_sending(
    schema: Schema, endpoint: Endpoint, setup: str, message: str
) -> None:
    """A NULL or repeated key near the end of the result (three fetches in) stops the
    run before any request, naming the key."""
    job = diff_job(schema, endpoint, stats(schema, 12_000))
    schema.execute(setup)
    with pytest.raises(QueryError, match=message):
        run_job(job)
    assert endpoint.requests == []


def test_a_key_the_run_recorded_as_sent_is_never_marked_vanished_by_it(
    schema: Schema, endpoint: Endpoint, state: SqlStateStore
) -> None:
    """Marking vanished keys skips those the same run recorded as acknowledged (its
    generation), whichever of the two comes first: a run never deletes what it sent."""
    job = diff_job(schema, endpoint, stats(schema, 5))
    run_job(job, state=state)
    generation = state.generation("test_job")
    assert generation is not None
    state.mark_vanished("test_job", ["[1]", "[2]"], -generation)
    assert list(state.vanished_keys("test_job", -generation, marked=True)) == []
    state.mark_vanished("test_job", ["[1]", "[2]"], -(generation + 1))
    assert list(state.vanished_keys("test_job", -(generation + 1), marked=True)) == [
        ["[1]", "[2]"]]  # fmt: skip


def test_full_refresh_sends_every_row_and_rewrites_fingerprints(
    schema: Schema, endpoint: Endpoint, state: SqlStateStore
) -> None:
    """--full-refresh sends every row; the next plain run sends nothing again."""
    job = diff_job(schema, endpoint, stats(schema, 300))
    run_job(job, state=state)
    schema.execute("UPDATE customer_stats SET orders = 0 WHERE user_id = 9")
    endpoint.requests.clear()
    refreshed = run_job(job, state=state, full_refresh=True)
    assert sorted(posted(endpoint)) == list(range(1, 301)) and refreshed.rows_unchanged == 0
    endpoint.requests.clear()
    run_job(job, state=state)
    assert endpoint.requests == []


def test_dry_run_shows_what_would_be_sent_and_deleted(
    schema: Schema, endpoint: Endpoint, state: SqlStateStore
) -> None:
    """A dry run counts the changed rows and the deletes, previews them, writes nothing."""
    job = diff_job(schema, endpoint, stats(schema, 400))
    run_job(job, state=state)
    schema.execute("UPDATE customer_stats SET plan = 'gold' WHERE user_id IN (4, 5)")
    schema.execute("DELETE FROM customer_stats WHERE user_id IN (6, 7, 8)")
    endpoint.requests.clear()
    dry = run_job(job, state=state, dry_run=True, preview=5)
    assert endpoint.requests == []
    assert (dry.rows_unchanged, dry.rows_deleted) == (395, 3)
    assert [row["user_id"] for p in dry.preview for row in json.loads(p.body)] == [4, 5]
    real = run_job(job, state=state)
    assert (real.rows_posted, real.rows_deleted) == (2, 3)


def test_cli_state_show_and_reset_count_and_forget_keys(
    schema: Schema, endpoint: Endpoint, state_url: str, tmp_path: Path
) -> None:
    """`loader state show` reports the keys tracked; `state reset` forgets them, and the
    next run sends every row again."""
    job = make_job(schema, endpoint.url + "/import", stats(schema, 120),
                   source={"diff": {"key": "user_id"}})  # fmt: skip
    path = tmp_path / "stats.yml"
    path.write_text(yaml.safe_dump(job))
    assert cli("run", str(path), cwd=tmp_path).returncode == 0
    shown = cli("state", "show", str(path), "--json", cwd=tmp_path)
    assert json.loads(shown.stdout)["diff_keys"] == 120
    assert "diff keys:    120 tracked" in cli("state", "show", str(path), cwd=tmp_path).stdout
    assert cli("state", "reset", str(path), "--yes", cwd=tmp_path).returncode == 0
    endpoint.requests.clear()
    rerun = cli("run", str(path), cwd=tmp_path)
    assert rerun.returncode == 0 and len(posted(endpoint)) == 120
    endpoint.requests.clear()
    again = cli("run", str(path), cwd=tmp_path)
    assert "unchanged             120" in again.stdout + again.stderr
    assert endpoint.requests == []


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "loader", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
