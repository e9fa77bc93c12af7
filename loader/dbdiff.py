"""A diff sync compared by the database: the query joined with the stored fingerprints.

When the state store is a PostgreSQL database the source can read (the same database,
typically ``DATABASE_URL`` for both) and PostgreSQL writes each row's JSON (the fast path
of :mod:`loader.pgjson`), the database itself hashes each row's JSON (the fingerprint
of the body as sent: ``hashtextextended``, the 64-bit hash PostgreSQL's hash partitioning
relies on, about as costly as reading the JSON's length, where MD5 would cost more than
writing the JSON) and joins the result with ``loader_fingerprints`` on the key: only new
and changed rows come back, with their hash, followed by the stored keys the result no
longer has. An unchanged row never leaves the database.

Fingerprints written this way differ from those loader computes (XXH3-128): a job
whose comparison moves from one side to the other (its state store moved, its columns
no longer all of a type the database writes as JSON) sends every row once, as a first
run does.

The source must see the state store as it is now, not a replica lagging behind it: the
run's generation (written to the store's ``loader_meta`` just before the read) must be
visible in the source's own snapshot, or loader compares the rows itself (see
:class:`loader.diff.Differ`). Only SQL and that check are here; :mod:`loader.source`
runs them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loader import job as jobmodel
from loader.cursor import POSTGRES_TYPES, Described, inner_query

__all__ = ["Compare", "compared_query", "key_ordered", "sees_store", "stored_fingerprint"]

# Key types the join and the stored integer key (``ikey``, a BIGINT) agree on.
_INTEGER_KEYS = {"int2", "int4", "int8"}
# Key types whose JSON is the same from loader's encoding and from jsonb_build_array
# (char(n), whose padding the two may treat apart, is left to loader).
_TEXT_KEYS = {"text", "varchar"}


@dataclass(frozen=True)
class Compare:
    """What the source needs to let the database compare a diff sync: the state
    store's tables (schema-qualified, quoted), the job (or key range) whose fingerprints
    to join, the generation the source must see in ``loader_meta`` (proof it reads the
    store as it is), ``everything`` (``--full-refresh``: every row comes back) and
    ``vanished`` (the keys gone from the result come back too: the job sends deletes).
    ``store`` names the store's database and the fingerprints' table OID: the source
    must be in that database, not another one of the server with tables of the same
    names."""

    fingerprints: str
    meta: str
    store: str
    job: str
    generation: int
    everything: bool = False
    vanished: bool = True


def key_ordered(config: jobmodel.Source) -> jobmodel.Source:
    """``config`` with its query's rows in ascending order of its single diff key
    column (for comparing by merging, when the database does not compare)."""
    diff = config.diff
    if diff is None or len(diff.key) != 1:
        return config
    quote = "`" if config.url.startswith(("mysql", "mariadb")) else '"'
    query = (
        f"SELECT * FROM (\n{inner_query(config)}\n) AS diff_ordered "
        f"ORDER BY {quote}{diff.key[0]}{quote}"
    )
    return config.model_copy(update={"query": query})


def sees_store(raw: Any, compare: Compare) -> bool:
    """Whether the psycopg connection ``raw`` (in its read-only transaction) can read
    the state store's tables and sees the run's generation in them. Runs no statement
    that can fail on a missing table or a missing privilege, which would abort the
    transaction."""
    names = (compare.fingerprints, compare.meta)
    found = raw.execute(
        "SELECT to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL", names
    ).fetchone()
    if not found or not found[0]:
        return False
    database = raw.execute(
        "SELECT current_database() || '/' || to_regclass(%s)::oid::text", names[:1]
    ).fetchone()
    if not database or database[0] != compare.store:
        return False
    allowed = raw.execute(
        "SELECT has_table_privilege(%s, 'SELECT') AND has_table_privilege(%s, 'SELECT')",
        names,
    ).fetchone()
    if not allowed or not allowed[0]:
        return False
    row = raw.execute(
        f"SELECT value FROM {compare.meta} WHERE key = %s", (f"diffgen:{compare.job}",)
    ).fetchone()
    return row is not None and row[0] == str(compare.generation)


def compared_query(
    sql: str, width: int, key_index: int, described: Described, config: jobmodel.Source,
    compare: Compare,
) -> str | None:  # fmt: skip
    """The fast query ``sql`` (``width`` columns: the JSON first, the diff key's columns
    ending at ``key_index``, the JSON's hash last) joined with the stored fingerprints:
    its new and changed rows, each followed by its stored key when it had one
    (``loader_known``, the key as stored), then (with ``compare.vanished``) a row per
    stored key the result lacks (NULL but for ``loader_known``). ``None`` when a key
    column is of a type other than an integer or text. Binds ``:loader_diff_job``.

    Two parts of one statement (one snapshot): a left join, which PostgreSQL runs in
    parallel workers where the JSON is written, and an anti-join on the key columns
    alone for the vanished keys (a full join would run in one process). Without deletes
    the second part is left out: the key check counts the result's rows.

    A single integer key joins on the stored integer (``ikey``); other keys on the
    stored key (a JSON array) read as ``jsonb``, equal to the array of the row's key
    columns whatever the spacing: integers and strings are written alike by both."""
    diff = config.diff
    if diff is None:
        return None
    types = [POSTGRES_TYPES.get(described.types.get(name, 0)) for name in diff.key]
    if not all(kind in _INTEGER_KEYS or kind in _TEXT_KEYS for kind in types):
        return None
    first = key_index - len(diff.key) + 1
    if len(diff.key) == 1 and types[0] in _INTEGER_KEYS:
        stored, on = "ikey AS k", f"f.k = d.c{key_index}"
        gone = f'k."{diff.key[0]}" = f.k'
        where = " AND ikey IS NOT NULL"
    else:
        columns = [f"d.c{first + i}" for i in range(len(diff.key))]
        stored, on = "key::jsonb AS k", f"f.k = jsonb_build_array({', '.join(columns)})"
        keys = ", ".join(f'k."{name}"' for name in diff.key)
        gone = f"f.k = jsonb_build_array({keys})"
        where = ""
    fingerprints = f"{compare.fingerprints} WHERE job = :loader_diff_job{where}"
    names = ", ".join(f"c{i}" for i in range(width))
    changed = "" if compare.everything else (
        f"\nWHERE f.fp IS DISTINCT FROM int8send(d.c{width - 1})"
    )  # fmt: skip
    joined = (
        f"SELECT d.*, f.key AS loader_known\nFROM (\n{sql}\n) AS d({names})\n"
        f"LEFT JOIN (SELECT key, {stored}, fp FROM {fingerprints}) AS f ON {on}{changed}"
    )
    if not compare.vanished:
        return joined
    nulls = ", ".join("NULL" for _ in range(width))
    return (
        f"{joined}\nUNION ALL\n"
        f"SELECT {nulls}, f.key FROM (SELECT key, {stored} FROM {fingerprints}) AS f\n"
        f"WHERE NOT EXISTS (SELECT 1 FROM (\n{inner_query(config)}\n) AS k WHERE {gone})"
    )


def stored_fingerprint(value: int) -> bytes:
    """The fingerprint stored for a row the database hashed (``hashtextextended``):
    its 64-bit value as 8 bytes, as PostgreSQL's ``int8send`` writes it."""
    return value.to_bytes(8, "big", signed=True)
