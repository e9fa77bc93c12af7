"""Durable state: checkpoints, run history, dead letters and run locks.

One implementation over SQLAlchemy serves both backends: a SQLite file by default
(``.loader/state.db``) and PostgreSQL when ``LOADER_STATE_URL`` is set. Every write is one
transaction, so a process killed at any moment leaves the state as it was before or after
that write, never in between. Tables are created on first use and carry a schema version.

Locks are leases: a run holds its job's lock until ``expires_at`` and renews it while it
runs. Each acquisition increments a fencing ``token``; a checkpoint is written only while
the writer's token is still the lock's, so a run that lost its lock cannot move the
checkpoint. A lease left by a killed process is taken over when it expires, or at once
when its process is known dead (same host, PID gone).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from loader import defaults
from loader.database import driver_message, engine_url
from loader.errors import JobLockedError, LockLostError, StateError
from loader.redact import Redactor, mask_url
from loader.result import Position

SCHEMA_VERSION = 1

"""A cursor position: ``(column value, key value)``, or ``(column value,)``."""

_metadata = sa.MetaData()
_meta = sa.Table(
    "loader_meta",
    _metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(200), nullable=False),
)
_checkpoints = sa.Table(
    "loader_checkpoints",
    _metadata,
    sa.Column("job", sa.String(200), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("position", sa.Text, nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)
_runs = sa.Table(
    "loader_runs",
    _metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("job", sa.String(200), nullable=False, index=True),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("ended_at", sa.Float),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("rows_read", sa.BigInteger, nullable=False, default=0),
    sa.Column("rows_posted", sa.BigInteger, nullable=False, default=0),
    sa.Column("rows_rejected", sa.BigInteger, nullable=False, default=0),
    sa.Column("requests", sa.BigInteger, nullable=False, default=0),
    sa.Column("retries", sa.BigInteger, nullable=False, default=0),
    sa.Column("cursor_from", sa.Text),
    sa.Column("cursor_to", sa.Text),
    sa.Column("error", sa.Text),
)
_dead_letters = sa.Table(
    "loader_dead_letters",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job", sa.String(200), nullable=False, index=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("row", sa.Text, nullable=False),
    sa.Column("status", sa.Integer),
    sa.Column("excerpt", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)
_slots = sa.Table(
    "loader_slots",
    _metadata,
    sa.Column("job", sa.String(200), primary_key=True),
    sa.Column("slot_at", sa.Float, primary_key=True),
    sa.Column("run_id", sa.String(255), nullable=False, unique=True),
    sa.Column("clock", sa.String(255), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("claimed_at", sa.Float, nullable=False),
    sa.Column("detail", sa.Text),
)
_alert_states = sa.Table(
    "loader_alert_states",
    _metadata,
    sa.Column("job", sa.String(200), primary_key=True),
    sa.Column("failing_since", sa.Float),
    sa.Column("last_alert_at", sa.Float),
    sa.Column("lagging_since", sa.Float),
    sa.Column("last_success_at", sa.Float),
)
_locks = sa.Table(
    "loader_locks",
    _metadata,
    sa.Column("job", sa.String(200), primary_key=True),
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started", sa.BigInteger),
    sa.Column("token", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)


@dataclass(frozen=True)
class Lease:
    """A held run lock. ``token`` fences writes made under it."""

    job: str
    owner: str
    token: int


@dataclass(frozen=True)
class Checkpoint:
    """The last acknowledged cursor position of a job."""

    job: str
    fingerprint: str
    position: Position
    run_id: str
    updated_at: float


@dataclass(frozen=True)
class RunRecord:
    """One run as recorded in the history."""

    run_id: str
    job: str
    status: str
    started_at: float
    ended_at: float | None
    host: str
    pid: int
    rows_read: int
    rows_posted: int
    rows_rejected: int
    requests: int
    retries: int
    cursor_from: Position | None
    cursor_to: Position | None
    error: str | None


@dataclass(frozen=True)
class SlotRecord:
    """One scheduled slot of a job, as the clock recorded it."""

    job: str
    slot_at: float
    run_id: str
    clock: str
    status: str
    claimed_at: float
    detail: str | None


@dataclass(frozen=True)
class AlertState:
    """What the alerting remembers of a job between runs."""

    job: str
    failing_since: float | None = None
    last_alert_at: float | None = None
    lagging_since: float | None = None
    last_success_at: float | None = None


@dataclass(frozen=True)
class DeadLetter:
    """A row the endpoint rejected, kept for inspection and replay."""

    id: int
    job: str
    run_id: str
    row: bytes
    status: int | None
    excerpt: str
    attempts: int
    created_at: float
    updated_at: float


class StateStore(Protocol):
    """What the runner and the CLI need from a state store."""

    def acquire(self, job: str, owner: str, *, ttl: float = ...) -> Lease: ...
    def renew(self, lease: Lease, *, ttl: float = ...) -> None: ...
    def release(self, lease: Lease) -> None: ...
    def break_lock(self, job: str, owner: str) -> bool: ...
    def checkpoint(self, job: str) -> Checkpoint | None: ...
    def lag_position(self, job: str) -> Position | None: ...
    def record_batch(
        self,
        lease: Lease,
        run_id: str,
        *,
        fingerprint: str,
        position: Position | None,
        dead_letters: Sequence[tuple[bytes, int | None, str]] = ...,
        ttl: float = ...,
    ) -> None: ...
    def reset(self, job: str) -> bool: ...
    def epoch(self, job: str) -> int: ...
    def partition_bounds(
        self, job: str, count: int, compute: Callable[[], tuple[int, ...]], *, keep: bool = ...
    ) -> tuple[int, ...]: ...
    def start_run(self, run_id: str, job: str, cursor_from: Position | None) -> None: ...
    def finish_run(
        self, run_id: str, status: str, *, only_running: bool = ..., **counts: Any
    ) -> bool: ...
    def history(self, job: str, limit: int = ...) -> list[RunRecord]: ...
    def run_record(self, run_id: str) -> RunRecord | None: ...
    def dead_letters(self, job: str, limit: int | None = ...) -> list[DeadLetter]: ...
    def dead_letter_count(self, job: str) -> int: ...
    def update_dead_letter(self, letter_id: int, status: int | None, excerpt: str) -> None: ...
    def delete_dead_letters(self, ids: Sequence[int]) -> None: ...
    def purge_dead_letters(self, job: str) -> int: ...
    def claim_slot(self, job: str, slot_at: float, run_id: str, clock: str) -> bool: ...
    def finish_slot(
        self, job: str, slot_at: float, status: str, detail: str | None = ...
    ) -> None: ...
    def record_missed(self, job: str, slots: Sequence[float], clock: str, detail: str) -> None: ...
    def last_slot(self, job: str) -> float | None: ...
    def slots(self, job: str, limit: int = ...) -> list[SlotRecord]: ...
    def alert_state(self, job: str) -> AlertState: ...
    def save_alert_state(self, state: AlertState) -> None: ...
    def close(self) -> None: ...


def _run_record(row: Any) -> RunRecord:
    return RunRecord(
        **{
            **row._asdict(),
            "cursor_from": decode_position(row.cursor_from) if row.cursor_from else None,
            "cursor_to": decode_position(row.cursor_to) if row.cursor_to else None,
        }
    )


def encode_position(position: Position) -> str:
    """A position as JSON text with each value's type, so it binds back exactly."""
    return json.dumps([_tag(value) for value in position])


def decode_position(text: str) -> Position:
    """The inverse of :func:`encode_position`."""
    return tuple(_untag(item) for item in json.loads(text))


def _tag(value: Any) -> dict[str, str]:
    if isinstance(value, bool) or value is None:
        raise StateError(f"a cursor value cannot be {value!r}")
    if isinstance(value, int):
        return {"t": "int", "v": str(value)}
    if isinstance(value, Decimal):
        return {"t": "decimal", "v": str(value)}
    if isinstance(value, float):
        return {"t": "float", "v": repr(value)}
    if isinstance(value, datetime):
        return {"t": "datetime", "v": value.isoformat()}
    if isinstance(value, date):
        return {"t": "date", "v": value.isoformat()}
    if isinstance(value, uuid.UUID):
        return {"t": "uuid", "v": str(value)}
    if isinstance(value, str):
        return {"t": "str", "v": value}
    raise StateError(
        f"a cursor value of type {type(value).__name__} cannot be stored; "
        "use a timestamp, integer, numeric, date, uuid or text column"
    )


def _untag(item: dict[str, str]) -> Any:
    kind, value = item["t"], item["v"]
    parse: dict[str, Callable[[str], Any]] = {
        "int": int,
        "decimal": Decimal,
        "float": float,
        "datetime": datetime.fromisoformat,
        "date": date.fromisoformat,
        "uuid": uuid.UUID,
        "str": str,
    }
    return parse[kind](value)


def _read(path: str) -> str:
    try:
        with open(path) as file:
            return file.read().strip()
    except OSError:
        return ""


def _machine() -> str:
    """Who can see whose processes: the host name, its boot and the PID namespace. Two
    containers sharing a host name but not a PID namespace are different machines."""
    boot = _read("/proc/sys/kernel/random/boot_id")[:8] or "-"
    try:
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        namespace = "-"
    return f"{socket.gethostname()}|{boot}|{namespace}"


def _started(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), or ``None`` if unknown."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _process_gone(pid: int, started: int | None) -> bool:
    """True when ``pid`` no longer runs, or now names another process than ``started``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    now = _started(pid)
    return started is not None and now is not None and now != started


def state_url(url: str | None = None, env: dict[str, str] | None = None) -> str:
    """The state store URL: ``url``, else ``$LOADER_STATE_URL``, else the SQLite default."""
    environ = os.environ if env is None else env
    return url or environ.get(defaults.STATE_URL_ENV) or f"sqlite:///{defaults.STATE_PATH}"


def open_state(url: str | None = None, *, clock: Callable[[], float] = time.time) -> SqlStateStore:
    """Open (and create on first use) the state store at :func:`state_url`."""
    return SqlStateStore(state_url(url), clock=clock)


class SqlStateStore:
    """The state store on SQLite or PostgreSQL (any SQLAlchemy database in principle)."""

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._host = _machine()
        self._pid = os.getpid()
        self._started = _started(self._pid)
        parsed = engine_url(url)
        self.url = mask_url(parsed.render_as_string(hide_password=False))
        try:
            if parsed.get_backend_name() == "sqlite":
                self._engine = self._sqlite_engine(parsed)
            else:
                self._engine = sa.create_engine(parsed, pool_size=2, pool_pre_ping=True)
            self._migrate()
        except SQLAlchemyError as exc:
            raise StateError(
                f"cannot open the state store {self.url}: {driver_message(exc, Redactor())}"
            ) from exc

    @staticmethod
    def _sqlite_engine(url: sa.URL) -> sa.Engine:
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy's BEGIN below decide when transactions start.
            dbapi_connection.isolation_level = None
            dbapi_connection.execute("PRAGMA journal_mode=WAL")
            dbapi_connection.execute("PRAGMA synchronous=NORMAL")

        @sa.event.listens_for(engine, "begin")
        def _begin(connection: sa.Connection) -> None:
            # Take the write lock up front: read-then-write transactions never deadlock.
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine

    def _migrate(self) -> None:
        with self._engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Several processes may open a new store at once: one creates the tables.
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7349561207349561)")
            _metadata.create_all(conn, checkfirst=True)
            row = conn.execute(
                sa.select(_meta.c.value).where(_meta.c.key == "schema_version")
            ).first()
            if row is None:
                conn.execute(
                    sa.insert(_meta).values(key="schema_version", value=str(SCHEMA_VERSION))
                )
            elif int(row.value) > SCHEMA_VERSION:
                raise StateError(
                    f"the state store {self.url} has schema version {row.value}, newer than "
                    f"this loader's {SCHEMA_VERSION}; upgrade loader"
                )

    @contextmanager
    def _transaction(self, what: str) -> Iterator[sa.Connection]:
        try:
            with self._engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StateError(
                f"state store {self.url}: {what} failed: {driver_message(exc, Redactor())}"
            ) from exc

    def close(self) -> None:
        """Close the store's connections."""
        self._engine.dispose()

    # Locks

    def acquire(self, job: str, owner: str, *, ttl: float = defaults.LOCK_TTL) -> Lease:
        """Take ``job``'s lock for ``owner`` (a run id), or raise :class:`JobLockedError`."""
        now = self._clock()
        values = {
            "owner": owner,
            "host": self._host,
            "pid": self._pid,
            "started": self._started,
            "expires_at": now + ttl,
        }
        try:
            with self._transaction("taking the lock") as conn:
                row = conn.execute(
                    sa.select(_locks).where(_locks.c.job == job).with_for_update()
                ).first()
                if row is None:
                    conn.execute(sa.insert(_locks).values(job=job, token=1, **values))
                    return Lease(job, owner, 1)
                if row.expires_at > now and not self._dead(row.host, row.pid, row.started):
                    raise JobLockedError(
                        f"job {job!r} is locked by run {row.owner} (pid {row.pid} on "
                        f"{row.host.split('|')[0]}) until {_when(row.expires_at)}; "
                        "wait for it to finish, or for the lock to expire",
                        holder=f"{row.owner}@{row.host}:{row.pid}",
                    )
                conn.execute(
                    sa.update(_runs)
                    .where(_runs.c.run_id == row.owner, _runs.c.status == "running")
                    .values(status="abandoned", ended_at=now, error="the run's process died")
                )
                token = int(row.token) + 1
                conn.execute(
                    sa.update(_locks).where(_locks.c.job == job).values(token=token, **values)
                )
                return Lease(job, owner, token)
        except StateError as exc:
            if isinstance(exc.__cause__, IntegrityError):  # another run inserted it first
                raise JobLockedError(
                    f"job {job!r} is locked by another run that started just now",
                    holder="unknown",
                ) from exc
            raise

    def _dead(self, host: str, pid: int, started: int | None) -> bool:
        return host == self._host and _process_gone(pid, started)

    def renew(self, lease: Lease, *, ttl: float = defaults.LOCK_TTL) -> None:
        """Extend ``lease``; raise :class:`StateError` if another run took the lock."""
        with self._transaction("renewing the lock") as conn:
            self._fence(conn, lease, ttl)

    def _fence(self, conn: sa.Connection, lease: Lease, ttl: float) -> None:
        result = conn.execute(
            sa.update(_locks)
            .where(_locks.c.job == lease.job, _locks.c.token == lease.token)
            .values(expires_at=self._clock() + ttl)
        )
        if result.rowcount != 1:
            raise LockLostError(
                f"run {lease.owner} lost the lock of job {lease.job!r} to another run; "
                "it stops without moving the checkpoint"
            )

    def release(self, lease: Lease) -> None:
        """Give the lock up (if still held by ``lease``)."""
        with self._transaction("releasing the lock") as conn:
            conn.execute(
                sa.update(_locks)
                .where(_locks.c.job == lease.job, _locks.c.token == lease.token)
                .values(expires_at=0.0)
            )

    def break_lock(self, job: str, owner: str) -> bool:
        """Expire ``job``'s lock if ``owner`` holds it (an attempt of that run that is
        known to be dead); ``True`` if it did. Its writes are fenced off from then on."""
        with self._transaction("releasing the lock") as conn:
            result = conn.execute(
                sa.update(_locks)
                .where(_locks.c.job == job, _locks.c.owner == owner, _locks.c.expires_at > 0)
                .values(expires_at=0.0)
            )
        return bool(result.rowcount)

    # Checkpoints

    def checkpoint(self, job: str) -> Checkpoint | None:
        """``job``'s checkpoint, or ``None`` before its first acknowledged batch."""
        with self._transaction("reading the checkpoint") as conn:
            row = conn.execute(sa.select(_checkpoints).where(_checkpoints.c.job == job)).first()
        if row is None:
            return None
        return Checkpoint(
            row.job, row.fingerprint, decode_position(row.position), row.run_id, row.updated_at
        )

    def lag_position(self, job: str) -> Position | None:
        """The position that tells how far ``job`` lags: its checkpoint's, or, for a
        partitioned job, that of its least advanced range."""
        with self._transaction("reading the checkpoint") as conn:
            rows = conn.execute(
                sa.select(_checkpoints.c.position).where(
                    (_checkpoints.c.job == job)
                    | _checkpoints.c.job.startswith(f"{job}#", autoescape=True)
                )
            ).all()
        positions = [decode_position(row.position) for row in rows]
        try:
            return min((p for p in positions if p), default=None, key=lambda p: p[0])
        except TypeError:  # values of different types: none is comparable
            return None

    def record_batch(
        self,
        lease: Lease,
        run_id: str,
        *,
        fingerprint: str,
        position: Position | None,
        dead_letters: Sequence[tuple[bytes, int | None, str]] = (),
        ttl: float = defaults.LOCK_TTL,
    ) -> None:
        """Record a batch as done, in one transaction: keep its rejected rows as dead
        letters and move the checkpoint to ``position`` (when the job has a cursor).

        Only while ``lease`` still holds the lock: a run that lost it writes nothing.
        """
        now = self._clock()
        with self._transaction("saving the checkpoint") as conn:
            self._fence(conn, lease, ttl)
            if dead_letters:
                conn.execute(
                    sa.insert(_dead_letters),
                    [
                        {
                            "job": lease.job,
                            "run_id": run_id,
                            "row": row.decode("utf-8"),
                            "status": status,
                            "excerpt": excerpt,
                            "attempts": 1,
                            "created_at": now,
                            "updated_at": now,
                        }
                        for row, status, excerpt in dead_letters
                    ],
                )
            if position is None:
                return
            values = {
                "fingerprint": fingerprint,
                "position": encode_position(position),
                "run_id": run_id,
                "updated_at": now,
            }
            updated = conn.execute(
                sa.update(_checkpoints).where(_checkpoints.c.job == lease.job).values(**values)
            )
            if updated.rowcount == 0:
                conn.execute(sa.insert(_checkpoints).values(job=lease.job, **values))

    def reset(self, job: str) -> bool:
        """Forget ``job``'s checkpoint: the next run starts from ``cursor.start``.

        Takes the job's lock (raises :class:`JobLockedError` while a run holds it, which
        would write its checkpoint back) and starts a new epoch, so the batches sent
        again do not reuse the idempotency keys of their first sending."""
        lease = self.acquire(job, f"reset-{uuid.uuid4().hex[:8]}")
        try:
            with self._transaction("resetting the checkpoint") as conn:
                deleted = conn.execute(sa.delete(_checkpoints).where(_checkpoints.c.job == job))
                # Its partitions' checkpoints and key ranges go with it.
                ranges = conn.execute(
                    sa.delete(_checkpoints).where(
                        _checkpoints.c.job.startswith(f"{job}#", autoescape=True)
                    )
                )
                conn.execute(
                    sa.delete(_meta).where(
                        _meta.c.key.startswith(f"partitions:{job}:", autoescape=True)
                    )
                )
                key = f"epoch:{job}"
                epoch = conn.execute(sa.select(_meta.c.value).where(_meta.c.key == key)).scalar()
                if epoch is None:
                    conn.execute(sa.insert(_meta).values(key=key, value="1"))
                else:
                    conn.execute(
                        sa.update(_meta).where(_meta.c.key == key).values(value=str(int(epoch) + 1))
                    )
        finally:
            self.release(lease)
        return bool(deleted.rowcount or ranges.rowcount)

    def epoch(self, job: str) -> int:
        """How many times ``job``'s checkpoint was reset (part of idempotency keys); a
        partition (``NAME#pN``) shares its job's."""
        job = job.split("#", 1)[0]
        with self._transaction("reading the checkpoint") as conn:
            value = conn.execute(
                sa.select(_meta.c.value).where(_meta.c.key == f"epoch:{job}")
            ).scalar()
        return int(value) if value is not None else 0

    def partition_bounds(
        self,
        job: str,
        count: int,
        compute: Callable[[], tuple[int, ...]],
        *,
        keep: bool = True,
    ) -> tuple[int, ...]:
        """The boundaries of ``job``'s ``count`` key ranges: computed (by ``compute``) and
        kept at the first partitioned run, then the same for every run, so each range's
        checkpoint keeps its meaning (``reset`` forgets them). ``keep=False`` (a dry run)
        computes them without keeping them."""
        key = f"partitions:{job}:{count}"
        read = sa.select(_meta.c.value).where(_meta.c.key == key)
        with self._transaction("reading the partitions") as conn:
            stored = conn.execute(read).scalar()
        if stored is None:
            bounds = compute()
            if not keep:
                return bounds
            try:
                with self._transaction("saving the partitions") as conn:
                    conn.execute(sa.insert(_meta).values(key=key, value=json.dumps(bounds)))
                return bounds
            except StateError:  # another run saved them first: use those
                with self._transaction("reading the partitions") as conn:
                    stored = conn.execute(read).scalar()
                if stored is None:
                    raise
        return tuple(int(bound) for bound in json.loads(stored))

    # Run history

    def start_run(self, run_id: str, job: str, cursor_from: Position | None) -> None:
        """Record that a run started (again, for a run resumed under the same id)."""
        values = {
            "status": "running",
            "started_at": self._clock(),
            "ended_at": None,
            "error": None,
            "host": self._host,
            "pid": self._pid,
            "cursor_from": encode_position(cursor_from) if cursor_from else None,
        }
        with self._transaction("recording the run") as conn:
            again = conn.execute(sa.update(_runs).where(_runs.c.run_id == run_id).values(**values))
            if not again.rowcount:
                conn.execute(sa.insert(_runs).values(run_id=run_id, job=job, **values))

    def finish_run(
        self, run_id: str, status: str, *, only_running: bool = False, **counts: Any
    ) -> bool:
        """Record how a run ended: ``status`` and the counters in ``counts``; ``False``
        when no record changed. With ``only_running``, a run that already ended is left
        as it is, so of several processes ending one run, one records it."""
        cursor_to = counts.pop("cursor_to", None)
        values = {**counts, "status": status, "ended_at": self._clock()}
        if cursor_to is not None:
            values["cursor_to"] = encode_position(cursor_to)
        with self._transaction("recording the run") as conn:
            update = sa.update(_runs).where(_runs.c.run_id == run_id)
            if only_running:
                update = update.where(_runs.c.status == "running")
            done = conn.execute(update.values(**values))
        return bool(done.rowcount)

    def history(self, job: str, limit: int = 20) -> list[RunRecord]:
        """``job``'s most recent runs, newest first."""
        rows = self._newest(_runs, _runs.c.started_at, job, limit, "reading the history")
        return [_run_record(row) for row in rows]

    def run_record(self, run_id: str) -> RunRecord | None:
        """The run ``run_id``, or ``None`` if it was never recorded."""
        with self._transaction("reading the history") as conn:
            row = conn.execute(sa.select(_runs).where(_runs.c.run_id == run_id)).first()
        return _run_record(row) if row is not None else None

    # Dead letters

    def dead_letters(self, job: str, limit: int | None = None) -> list[DeadLetter]:
        """``job``'s dead letters, oldest first."""
        query = sa.select(_dead_letters).where(_dead_letters.c.job == job)
        with self._transaction("reading dead letters") as conn:
            rows = conn.execute(query.order_by(_dead_letters.c.id).limit(limit)).all()
        return [DeadLetter(**{**row._asdict(), "row": row.row.encode("utf-8")}) for row in rows]

    def dead_letter_count(self, job: str) -> int:
        """How many dead letters ``job`` has."""
        query = sa.select(sa.func.count()).where(_dead_letters.c.job == job)
        with self._transaction("counting dead letters") as conn:
            return int(conn.execute(query).scalar_one())

    def update_dead_letter(self, letter_id: int, status: int | None, excerpt: str) -> None:
        """Record another failed delivery of a dead letter."""
        with self._transaction("updating a dead letter") as conn:
            conn.execute(
                sa.update(_dead_letters)
                .where(_dead_letters.c.id == letter_id)
                .values(
                    status=status,
                    excerpt=excerpt,
                    attempts=_dead_letters.c.attempts + 1,
                    updated_at=self._clock(),
                )
            )

    def delete_dead_letters(self, ids: Sequence[int]) -> None:
        """Remove dead letters (delivered on replay)."""
        with self._transaction("deleting dead letters") as conn:
            conn.execute(sa.delete(_dead_letters).where(_dead_letters.c.id.in_(list(ids))))

    def purge_dead_letters(self, job: str) -> int:
        """Remove all of ``job``'s dead letters; return how many there were."""
        with self._transaction("purging dead letters") as conn:
            result = conn.execute(sa.delete(_dead_letters).where(_dead_letters.c.job == job))
        return int(result.rowcount)

    # Scheduled slots (the clock)

    def claim_slot(self, job: str, slot_at: float, run_id: str, clock: str) -> bool:
        """Claim ``job``'s slot for ``clock``; ``False`` if another clock already did.

        The primary key makes this at most once per slot, however many clocks run."""
        try:
            with self._transaction("claiming a slot") as conn:
                conn.execute(
                    sa.insert(_slots).values(
                        job=job, slot_at=slot_at, run_id=run_id, clock=clock,
                        status="claimed", claimed_at=self._clock(),
                    )
                )  # fmt: skip
        except StateError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                return False
            raise
        return True

    def finish_slot(self, job: str, slot_at: float, status: str, detail: str | None = None) -> None:
        """Record how a claimed slot ended (the run's status, or ``skipped``)."""
        with self._transaction("recording a slot") as conn:
            conn.execute(
                sa.update(_slots)
                .where(_slots.c.job == job, _slots.c.slot_at == slot_at)
                .values(status=status, detail=detail)
            )

    def record_missed(self, job: str, slots: Sequence[float], clock: str, detail: str) -> None:
        """Record slots that passed while no clock ran (never run, never dropped silently)."""
        now = self._clock()
        for slot_at in slots:
            run_id = f"{job}@missed@{slot_at!r}"
            with contextlib.suppress(StateError), self._transaction("recording a slot") as conn:
                conn.execute(
                    sa.insert(_slots).values(
                        job=job, slot_at=slot_at, run_id=run_id, clock=clock,
                        status="missed", claimed_at=now, detail=detail,
                    )
                )  # fmt: skip

    def last_slot(self, job: str) -> float | None:
        """The latest slot of ``job`` any clock claimed or recorded."""
        with self._transaction("reading slots") as conn:
            value = conn.execute(
                sa.select(sa.func.max(_slots.c.slot_at)).where(_slots.c.job == job)
            ).scalar()
        return None if value is None else float(value)

    def slots(self, job: str, limit: int = 50) -> list[SlotRecord]:
        """``job``'s most recent slots, newest first."""
        rows = self._newest(_slots, _slots.c.slot_at, job, limit, "reading slots")
        return [SlotRecord(**row._asdict()) for row in rows]

    # Alerting

    def alert_state(self, job: str) -> AlertState:
        """What alerting remembers of ``job`` (a fresh state for a new job)."""
        with self._transaction("reading the alert state") as conn:
            row = conn.execute(sa.select(_alert_states).where(_alert_states.c.job == job)).first()
        return AlertState(**row._asdict()) if row is not None else AlertState(job)

    def save_alert_state(self, state: AlertState) -> None:
        """Keep ``state`` for the job's next run."""
        values = {k: v for k, v in state.__dict__.items() if k != "job"}
        with self._transaction("saving the alert state") as conn:
            updated = conn.execute(
                sa.update(_alert_states).where(_alert_states.c.job == state.job).values(**values)
            )
            if updated.rowcount == 0:
                conn.execute(sa.insert(_alert_states).values(job=state.job, **values))

    def _newest(
        self, table: sa.Table, order: sa.Column[Any], job: str, limit: int, what: str
    ) -> Sequence[sa.Row[Any]]:
        with self._transaction(what) as conn:
            return conn.execute(
                sa.select(table).where(table.c.job == job).order_by(order.desc()).limit(limit)
            ).all()


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")
