"""The state store's locks, fencing and epochs, on both backends."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from loader import JobLockedError, LockLostError, StateError, build_job, open_state, run_job
from loader.lease import LockKeeper
from loader.state import Lease, SqlStateStore
from tests.integration.conftest import Schema, make_job
from tests.support.server import Endpoint


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, schema: Schema, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return schema.scoped_url


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(url: str, clock: Clock) -> Iterator[SqlStateStore]:
    state = open_state(url, clock=clock)
    yield state
    state.close()


def forge_holder(url: str, job: str, *, pid: int, host: str | None = None) -> None:
    """Make the lock of ``job`` look held by another process."""
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        values = {"pid": pid, "started": None}
        if host is not None:
            values["host"] = host
        conn.execute(
            sa.text("UPDATE loader_locks SET " + ", ".join(f"{k} = :{k}" for k in values)
                    + " WHERE job = :job"),
            {**values, "job": job},
        )  # fmt: skip
    engine.dispose()


def test_a_live_lock_holds_until_it_expires(store: SqlStateStore, clock: Clock) -> None:
    """Another live holder's lease blocks until it expires; then it is taken over with a
    higher token, and the old holder's writes are fenced off."""
    first = store.acquire("job", "run-1", ttl=60)
    with pytest.raises(JobLockedError):
        store.acquire("job", "run-2", ttl=60)
    clock.now += 61
    second = store.acquire("job", "run-2", ttl=60)
    assert second.token == first.token + 1

    with pytest.raises(StateError, match="lost the lock"):
        store.record_batch(first, "run-1", fingerprint="f", position=(5,))
    store.record_batch(second, "run-2", fingerprint="f", position=(7,))
    checkpoint = store.checkpoint("job")
    assert checkpoint is not None and checkpoint.position == (7,)


def test_a_lock_left_by_a_dead_process_is_taken_at_once(store: SqlStateStore, url: str) -> None:
    """Same machine, PID gone: no need to wait for the lease to expire."""
    store.acquire("job", "run-1", ttl=3600)
    forge_holder(url, "job", pid=2**22 + 12345)  # no such process
    assert store.acquire("job", "run-2", ttl=60).token == 2


def test_another_machine_with_the_same_pid_is_not_presumed_dead(
    store: SqlStateStore, url: str
) -> None:
    """A holder on another host (or PID namespace) is never judged by local PIDs."""
    store.acquire("job", "run-1", ttl=3600)
    forge_holder(url, "job", pid=2**22 + 12345, host="other-host|boot|ns")
    with pytest.raises(JobLockedError, match="other-host"):
        store.acquire("job", "run-2", ttl=60)


def test_reset_waits_for_the_lock_and_starts_a_new_epoch(store: SqlStateStore) -> None:
    """A reset while a run holds the job is refused; afterwards the epoch moves on."""
    lease = store.acquire("job", "run-1")
    store.record_batch(lease, "run-1", fingerprint="f", position=(3,))
    with pytest.raises(JobLockedError):
        store.reset("job")
    store.release(lease)

    assert store.epoch("job") == 0
    assert store.reset("job") is True
    assert store.checkpoint("job") is None and store.epoch("job") == 1


def test_keys_change_after_a_reset(
    schema: Schema, endpoint: Endpoint, store: SqlStateStore
) -> None:
    """Re-sending from the start after a reset does not reuse the first keys."""
    schema.execute("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 4) g")
    job = build_job(make_job(schema, endpoint.url, f"SELECT id FROM {schema.table('t')}",
                             source={"cursor": {"column": "id"}}))  # fmt: skip
    run_job(job, state=store)
    store.reset(job.name)
    run_job(job, state=store)

    first, second = endpoint.requests
    assert first.body == second.body
    assert first.headers["Idempotency-Key"] != second.headers["Idempotency-Key"]


class FlakyStore:
    """A state store whose renewals fail as scripted."""

    def __init__(self, *failures: StateError) -> None:
        self.failures = list(failures)
        self.renewals = 0

    def renew(self, lease: Lease, *, ttl: float) -> None:
        self.renewals += 1
        if self.failures:
            raise self.failures.pop(0)


def test_a_failed_renewal_is_retried_before_the_lock_is_given_up() -> None:
    """One transient error does not stop the run; losing the lock does, at once."""
    lease = Lease("job", "run", 1)
    lost = threading.Event()
    keeper = LockKeeper(FlakyStore(StateError("database restarting")), lease, 0.3, lost)  # type: ignore[arg-type]
    time.sleep(0.5)
    keeper.stop()
    assert not lost.is_set()
    keeper.check()

    lost = threading.Event()
    store = FlakyStore(LockLostError("run x lost the lock of job 'job' to another run"))
    keeper = LockKeeper(store, lease, 0.3, lost)  # type: ignore[arg-type]
    assert lost.wait(2)
    keeper.stop()
    with pytest.raises(StateError, match="lost the lock"):
        keeper.check()


def test_a_dead_attempts_lock_is_broken_by_its_own_run_id_only(
    store: SqlStateStore, url: str
) -> None:
    """A worker resuming run R breaks the lock an earlier attempt of R held (on a machine
    that died), fencing that attempt off; a lock of another run stays. The run's record
    starts again under the same id."""
    first = store.acquire("job", "job@slot-1", ttl=60)
    forge_holder(url, "job", pid=4242, host="another-machine")
    store.start_run("job@slot-1", "job", None)
    assert not store.break_lock("job", "job@slot-2")
    with pytest.raises(JobLockedError):
        store.acquire("job", "job@slot-1", ttl=60)

    assert store.break_lock("job", "job@slot-1")
    again = store.acquire("job", "job@slot-1", ttl=60)
    store.start_run("job@slot-1", "job", (5,))
    with pytest.raises(StateError, match="lost the lock"):
        store.record_batch(first, "job@slot-1", fingerprint="f", position=(5,))
    store.record_batch(again, "job@slot-1", fingerprint="f", position=(9,))
    (run,) = store.history("job")
    assert (run.run_id, run.status, run.cursor_from) == ("job@slot-1", "running", (5,))
