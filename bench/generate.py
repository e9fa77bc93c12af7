"""Create the benchmark table: N rows of bigint, int, text, numeric, jsonb, timestamptz
and uuid, built by generate_series. Reused when it already holds N rows."""

from __future__ import annotations

import psycopg

COLUMNS = "id, n, label, amount, doc, created_at, uid"


def table_name(rows: int) -> str:
    return f"loader_bench_{rows}"


def ensure_table(url: str, rows: int) -> str:
    """Create (or reuse) the table for ``rows`` rows; return its name."""
    name = table_name(rows)
    with psycopg.connect(url, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
        if exists and exists[0]:
            count = conn.execute(f"SELECT count(*) FROM {name}").fetchone()
            if count and count[0] == rows:
                return name
            conn.execute(f"DROP TABLE {name}")
        conn.execute(
            f"""
            CREATE TABLE {name} AS
            SELECT g::bigint AS id,
                   (g % 100000)::int AS n,
                   'user-' || g || '@example.com' AS label,
                   round((g * 1.37) % 100000, 2)::numeric(12, 2) AS amount,
                   jsonb_build_object('plan', CASE WHEN g % 3 = 0 THEN 'pro' ELSE 'free' END,
                                      'seats', g % 50, 'ratio', 0.25) AS doc,
                   timestamptz '2024-01-01 00:00:00+00' + g * interval '1.5 second' AS created_at,
                   md5(g::text)::uuid AS uid
            FROM generate_series(1, {rows}) AS g
            """
        )
        conn.execute(f"ALTER TABLE {name} ADD PRIMARY KEY (id)")
        conn.execute(f"VACUUM ANALYZE {name}")
    return name
