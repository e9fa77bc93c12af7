"""Fingerprints of diff syncs: each key's body as last acknowledged, and who saw it.

A diff sync (``source.diff``) keeps one row per key of a job: the key (the JSON array of
its key columns' values), the fingerprint of the body last acknowledged for it, and the
generation (one per run, from :meth:`FingerprintSql.next_generation`) that last saw the
key in the query's result. Looking up a read chunk's keys marks them seen in the same
statement, so when a run has read the whole result, the keys it did not see are the
vanished ones: no key set is held in memory, and the comparison does not depend on the
order (nor the collation) in which the source returns rows.

Fingerprints are written in :meth:`~loader.state.checkpoints.CheckpointSql.record_batch`,
in the transaction that records the batch as acknowledged, and dropped there once a
delete was acknowledged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from loader.state.base import SqlBase
from loader.state.schema import fingerprints, meta

# Bind parameters per statement: under SQLite's limit (32766), a few round trips per fetch.
_PIECE = 5000


class FingerprintSql(SqlBase):
    """Looking up, marking, counting and listing the keys of diff syncs."""

    def next_generation(self, job: str) -> int:
        """A number for the run of ``job`` about to read, higher than any before."""
        key = f"diffgen:{job}"
        with self._transaction("starting a diff generation") as conn:
            value = conn.execute(sa.select(meta.c.value).where(meta.c.key == key)).scalar()
            generation = int(value) + 1 if value is not None else 1
            if value is None:
                conn.execute(sa.insert(meta).values(key=key, value=str(generation)))
            else:
                conn.execute(sa.update(meta).where(meta.c.key == key).values(value=str(generation)))
        return generation

    def seen_fingerprints(
        self, job: str, keys: Sequence[str], generation: int | None
    ) -> dict[str, bytes]:
        """The stored fingerprint of each of ``keys`` that ``job`` tracks; with a
        ``generation``, those keys are marked seen by it in the same statement (a dry
        run passes ``None`` and writes nothing)."""
        found: dict[str, bytes] = {}
        table = fingerprints
        with self._transaction("reading fingerprints") as conn:
            for start in range(0, len(keys), _PIECE):
                piece = keys[start : start + _PIECE]
                where = (table.c.job == job) & table.c.key.in_(piece)
                if generation is None:
                    statement: sa.Executable = sa.select(table.c.key, table.c.fp).where(where)
                else:
                    statement = (
                        sa.update(table)
                        .where(where)
                        .values(gen=generation)
                        .returning(table.c.key, table.c.fp)
                    )
                found.update((row.key, bytes(row.fp)) for row in conn.execute(statement))
        return found

    def fingerprint_count(self, job: str, *, not_seen_by: int | None = None) -> int:
        """How many keys ``job`` tracks (with its key ranges, ``NAME#pN``); with
        ``not_seen_by``, how many of ``job``'s own that generation did not see (the
        vanished ones)."""
        table = fingerprints
        where: sa.ColumnElement[bool] = (table.c.job == job) | table.c.job.startswith(
            f"{job}#", autoescape=True
        )
        if not_seen_by is not None:
            where = table.c.job == job
            where &= table.c.gen != not_seen_by
        with self._transaction("counting fingerprints") as conn:
            return int(conn.execute(sa.select(sa.func.count()).where(where)).scalar() or 0)

    def vanished_keys(self, job: str, generation: int, page: int = 1000) -> Iterator[list[str]]:
        """The keys of ``job`` that ``generation`` did not see, in pages of ``page``,
        read page by page (keyset pagination) so they are never all in memory."""
        table = fingerprints
        last: str | None = None
        while True:
            where = (table.c.job == job) & (table.c.gen != generation)
            if last is not None:
                where &= table.c.key > last
            query = sa.select(table.c.key).where(where).order_by(table.c.key).limit(page)
            with self._transaction("reading vanished keys") as conn:
                keys = list(conn.execute(query).scalars())
            if not keys:
                return
            yield keys
            last = keys[-1]

    def forget_fingerprints(self, job: str) -> int:
        """Forget every key of ``job`` and of its key ranges: the next run sends every
        row. Returns how many were forgotten."""
        with self._transaction("forgetting fingerprints") as conn:
            return drop_job_fingerprints(conn, job)


def save_fingerprints(
    conn: sa.Connection, job: str, rows: Sequence[tuple[str, bytes]], generation: int
) -> None:
    """Insert or replace the fingerprint of each ``(key, fingerprint)`` of ``rows``."""
    if not rows:
        return
    latest = dict(rows)  # a key twice in one group: its last body is the one sent last
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(fingerprints)
    upsert = statement.on_conflict_do_update(
        index_elements=[fingerprints.c.job, fingerprints.c.key],
        set_={"fp": statement.excluded.fp, "gen": statement.excluded.gen},
    )
    conn.execute(
        upsert, [{"job": job, "key": k, "fp": fp, "gen": generation} for k, fp in latest.items()]
    )


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
