"""Fingerprints of diff syncs: each key's body as last acknowledged, and who saw it.

A diff sync (``source.diff``) keeps one row per key of a job: the key (the JSON array of
its key columns' values), the fingerprint of the body last acknowledged for it, and the
generation (one per run, from :meth:`FingerprintSql.next_generation`) that last saw the
key in the query's result. A run looks up each read chunk's keys (reads only), so the
comparison depends neither on the order nor on the collation in which the source returns
rows, and no key set is held in memory. When keys vanished (fewer keys matched than
were known), the run reads the result's keys again and marks them seen
(:meth:`FingerprintSql.mark_seen`): the keys left unmarked are the vanished ones.

Fingerprints are written in :meth:`~loader.state.checkpoints.CheckpointSql.record_batch`,
in the transaction that records the batch as acknowledged, and dropped there once a
delete was acknowledged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa

from loader.encoding import dumps
from loader.state.base import SqlBase
from loader.state.schema import fingerprints, meta

# Keys per statement: a few round trips per fetch, each statement small.
_PIECE = 5000
# One look-up per piece of keys, the keys as one parameter (a JSON array on SQLite, an
# array on PostgreSQL): about three times faster than an IN list of as many parameters.
_LOOKUP = {
    "sqlite": sa.text(
        "SELECT key, fp FROM loader_fingerprints WHERE job = :job "
        "AND key IN (SELECT value FROM json_each(:keys))"
    ),
    "postgresql": sa.text(
        "SELECT key, fp FROM loader_fingerprints WHERE job = :job AND key = ANY(:keys)"
    ),
}


class FingerprintSql(SqlBase):
    """Looking up, marking, counting and listing the keys of diff syncs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Per job, the generation of its run that began with no key stored (its first
        # run): until a key turns out stored after all, save_fingerprints inserts.
        self._fresh: dict[str, int] = {}

    def next_generation(self, job: str) -> int:
        """A number for the run of ``job`` about to read, higher than any before."""
        key = f"diffgen:{job}"
        with self._transaction("starting a diff generation") as conn:
            last = _generation(conn, job)
            generation = last + 1 if last is not None else 1
            if last is None:
                conn.execute(sa.insert(meta).values(key=key, value=str(generation)))
            else:
                conn.execute(sa.update(meta).where(meta.c.key == key).values(value=str(generation)))
            stored = conn.execute(
                sa.select(fingerprints.c.key).where(fingerprints.c.job == job).limit(1)
            ).first()
        if stored is None:
            self._fresh[job] = generation
        else:
            self._fresh.pop(job, None)
        return generation

    def _save_fingerprints(
        self, conn: sa.Connection, job: str, rows: Sequence[tuple[str, bytes]], generation: int
    ) -> None:
        """:func:`save_fingerprints` for ``job``'s run of ``generation``, told whether
        that run began with no key stored."""
        fresh = self._fresh.get(job) == generation
        if not save_fingerprints(conn, job, rows, generation, fresh=fresh) and fresh:
            self._fresh.pop(job, None)

    def generation(self, job: str) -> int | None:
        """The generation of ``job``'s last run (``None`` before its first)."""
        with self._transaction("reading the diff generation") as conn:
            return _generation(conn, job)

    def fingerprint_tables(self) -> tuple[str, str, str] | None:
        """On PostgreSQL, the fingerprints' and the meta table's names as another
        session of the same database names them (schema-qualified, quoted), so that a
        source there can join them (see :mod:`loader.dbdiff`), and which database they
        are in (its name and the fingerprints' table OID: another database of the server
        may have tables of the same names); ``None`` on SQLite."""
        with self._transaction("locating the fingerprints") as conn:
            if conn.dialect.name != "postgresql":
                return None
            located = sa.text(
                "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), "
                "current_database() || '/' || c.oid::text "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.oid = to_regclass(:name)"
            )
            found = [conn.execute(located, {"name": t.name}).first() for t in (fingerprints, meta)]
        if found[0] is None or found[1] is None:
            return None
        return found[0][0], found[1][0], found[0][1]

    def analyze_fingerprints(self) -> None:
        """Refresh the database's statistics of the fingerprints (PostgreSQL; a role
        that does not own the table gets a warning from the database, not an error)."""
        with self._transaction("analyzing fingerprints") as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text(f"ANALYZE {fingerprints.name}"))

    def seen_fingerprints(self, job: str, keys: Sequence[str]) -> dict[str, bytes]:
        """The stored fingerprint of each of ``keys`` that ``job`` tracks. Reads only:
        comparing an unchanged row writes nothing."""
        found: dict[str, bytes] = {}
        with self._transaction("reading fingerprints") as conn:
            lookup = _LOOKUP[conn.dialect.name]
            for start in range(0, len(keys), _PIECE):
                piece = keys[start : start + _PIECE]
                values = json.dumps(piece) if conn.dialect.name == "sqlite" else piece
                rows = conn.execute(lookup, {"job": job, "keys": values})
                found.update((key, bytes(fp)) for key, fp in rows)
        return found

    def mark_seen(self, job: str, keys: Sequence[str], generation: int) -> None:
        """Mark those of ``keys`` that ``job`` tracks as seen by ``generation`` (the
        keys it does not mark are the vanished ones)."""
        self._mark(job, keys, generation, "marking keys seen")

    def _mark(self, job: str, keys: Sequence[str], gen: int, doing: str, spare: int = 0) -> None:
        """Set ``gen`` on those of ``keys`` that ``job`` tracks, but on the ones whose
        generation is ``spare`` (``0``: no run's)."""
        table = fingerprints
        with self._transaction(doing) as conn:
            for start in range(0, len(keys), _PIECE):
                piece = keys[start : start + _PIECE]
                where = (table.c.job == job) & table.c.key.in_(piece) & (table.c.gen != spare)
                conn.execute(sa.update(table).where(where).values(gen=gen))

    def fingerprint_count(
        self,
        job: str,
        *,
        not_seen_by: int | None = None,
        marked: int | None = None,
        own: bool = False,
    ) -> int:
        """How many keys ``job`` tracks (with its key ranges, ``NAME#pN``, unless
        ``own``); with ``not_seen_by``, how many of ``job``'s own that generation did
        not see (the vanished ones)."""
        table = fingerprints
        where: sa.ColumnElement[bool] = (table.c.job == job) | table.c.job.startswith(
            f"{job}#", autoescape=True
        )
        if own:
            where = table.c.job == job
        if marked is not None:
            where = (table.c.job == job) & (table.c.gen == marked)
        elif not_seen_by is not None:
            where = table.c.job == job
            where &= table.c.gen != not_seen_by
        with self._transaction("counting fingerprints") as conn:
            return int(conn.execute(sa.select(sa.func.count()).where(where)).scalar() or 0)

    def vanished_keys(
        self, job: str, generation: int, page: int = 1000, *, marked: bool = False
    ) -> Iterator[list[str]]:
        """The keys of ``job`` that ``generation`` did not see (``marked``: that carry
        ``generation`` as a mark, see :meth:`mark_vanished`), in pages of ``page``, read
        page by page (keyset pagination) so they are never all in memory."""
        table = fingerprints
        last: str | None = None
        seen = table.c.gen == generation
        while True:
            where = (table.c.job == job) & (seen if marked else ~seen)
            if last is not None:
                where &= table.c.key > last
            query = sa.select(table.c.key).where(where).order_by(table.c.key).limit(page)
            with self._transaction("reading vanished keys") as conn:
                keys = list(conn.execute(query).scalars())
            if not keys:
                return
            yield keys
            last = keys[-1]

    def ordered_fingerprints(self, job: str, page: int = 20_000) -> Iterator[tuple[int, bytes]]:
        """``(integer key, fingerprint)`` of every key of ``job`` with a single integer
        key, in key order, read a page at a time."""
        # Through the driver's cursor: SQLAlchemy's rows cost more than the merge itself.
        with self._transaction("reading fingerprints") as conn:
            postgres = conn.dialect.name == "postgresql"
        if postgres:
            yield from self._streamed(job, page)
            return
        sql = (
            "SELECT ikey, fp FROM loader_fingerprints WHERE job = ? AND ikey {} ? "
            f"ORDER BY ikey LIMIT {int(page)}"
        )
        last, after = -(2**63), ">="  # from the smallest BIGINT on, then after the last
        while True:
            # SQLite: a page per transaction, so the committing thread is never kept waiting.
            with self._transaction("reading fingerprints") as conn:
                cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
                try:
                    cursor.execute(sql.format(after), (job, last))
                    rows = cursor.fetchall()
                finally:
                    cursor.close()
            yield from rows
            if len(rows) < page:
                return
            last, after = rows[-1][0], ">"

    def _streamed(self, job: str, page: int) -> Iterator[tuple[int, bytes]]:
        """PostgreSQL: one server-side cursor over the whole read (a fast-start index
        scan; pages of ``LIMIT`` would each be planned without statistics on a new table
        and sort what they skip)."""
        sql = (
            "SELECT ikey, fp FROM loader_fingerprints WHERE job = %s AND ikey IS NOT NULL "
            "ORDER BY ikey"
        )
        with self._transaction("reading fingerprints") as conn:
            raw = conn.connection.dbapi_connection
            cursor: Any = raw.cursor(name="loader_fingerprints")  # type: ignore[union-attr]
            try:
                cursor.execute(sql, (job,))
                while rows := cursor.fetchmany(page):
                    yield from rows
            finally:
                cursor.close()

    def mark_vanished(self, job: str, keys: Sequence[str], mark: int) -> None:
        """Mark ``keys`` of ``job`` as vanished with ``mark`` (minus the run's
        generation), except those the run itself recorded as sent (its generation):
        whichever comes first, a key the run sent is never deleted by it."""
        self._mark(job, keys, mark, "marking keys vanished", spare=-mark)

    def forget_fingerprints(self, job: str) -> int:
        """Forget every key of ``job`` and of its key ranges: the next run sends every
        row. Returns how many were forgotten."""
        with self._transaction("forgetting fingerprints") as conn:
            return drop_job_fingerprints(conn, job)


# One statement per group of batches: the keys as one JSON document (PostgreSQL), or
# tuples through the driver's executemany (SQLite). A statement per row through
# SQLAlchemy cost about 50 s per million keys on a first run.
_UPSERT_TAIL = (
    " ON CONFLICT (job, key) DO UPDATE SET fp = excluded.fp, gen = excluded.gen, "
    "ikey = excluded.ikey"
)
_PG_INSERT = (
    "INSERT INTO loader_fingerprints (job, key, fp, gen, ikey) "
    "SELECT :job, t.k, decode(t.f, 'hex'), :gen, t.i "
    "FROM json_to_recordset(CAST(:rows AS json)) AS t(k text, f text, i bigint)"
)
_PG_UPSERT = sa.text(_PG_INSERT + _UPSERT_TAIL)
_SQLITE_UPSERT = (
    "INSERT INTO loader_fingerprints (job, key, fp, gen, ikey) VALUES (?, ?, ?, ?, ?)"
    + _UPSERT_TAIL
)


def save_fingerprints(
    conn: sa.Connection,
    job: str,
    rows: Sequence[tuple[str, bytes]],
    generation: int,
    *,
    fresh: bool = False,
) -> bool:
    """Insert or replace the fingerprint of each ``(key, fingerprint)`` of ``rows``.

    ``fresh``: none of the keys is expected to be stored (the job's first run). On
    PostgreSQL they are then inserted without the upsert's conflict check, which is about
    a quarter of the database's time for them on a first run; if a key is stored after
    all (a run that read a row twice), the insert is undone and the upsert runs instead.
    Returns ``False`` once a key was found stored: the run's next keys are upserted.
    """
    if not rows:
        return fresh
    latest = dict(rows)  # a key twice in one group: its last body is the one sent last
    if conn.dialect.name == "postgresql":
        # One JSON document (psycopg would adapt arrays element by element in Python).
        document = dumps([{"k": k, "f": fp.hex(), "i": _integer(k)} for k, fp in latest.items()])
        values = {"job": job, "gen": generation, "rows": document.decode()}
        if fresh:
            try:
                with conn.begin_nested():  # a savepoint: a conflict undoes this alone
                    conn.execute(sa.text(_PG_INSERT), values)
                return True
            except sa.exc.IntegrityError:
                pass
        conn.execute(_PG_UPSERT, values)
        return False
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.executemany(
            _SQLITE_UPSERT,
            [(job, k, fp, generation, _integer(k)) for k, fp in latest.items()],
        )
    finally:
        cursor.close()
    return fresh  # SQLite's upsert costs about what an insert does


def _generation(conn: sa.Connection, job: str) -> int | None:
    """The generation of ``job``'s last run, as stored in ``loader_meta``."""
    value = conn.execute(sa.select(meta.c.value).where(meta.c.key == f"diffgen:{job}")).scalar()
    return int(value) if value is not None else None


def _integer(key: str) -> int | None:
    """The value of a key of one integer column (``[42]``), else ``None``."""
    inner = key[1:-1]
    if not inner.lstrip("-").isdigit():
        return None
    value = int(inner)
    return value if -(2**63) <= value < 2**63 else None


def drop_fingerprints(conn: sa.Connection, job: str, keys: Sequence[str]) -> None:
    """Forget ``keys`` of ``job`` (their deletes were acknowledged)."""
    for start in range(0, len(keys), _PIECE):
        piece = keys[start : start + _PIECE]
        conn.execute(
            sa.delete(fingerprints).where(
                (fingerprints.c.job == job) & fingerprints.c.key.in_(piece)
            )
        )


def drop_job_fingerprints(conn: sa.Connection, job: str) -> int:
    """Forget every key of ``job`` and of its key ranges (``NAME#pN``)."""
    table = fingerprints
    deleted = conn.execute(
        sa.delete(table).where(
            (table.c.job == job) | table.c.job.startswith(f"{job}#", autoescape=True)
        )
    )
    return int(deleted.rowcount or 0)
