"""The naive loader a user would write first: psycopg fetchmany, json.dumps(default=str),
one httpx post after another. Run: ``python -m bench.baseline DB_URL TABLE TARGET_URL``."""

from __future__ import annotations

import json
import sys

import httpx
import psycopg


def main(db_url: str, table: str, target: str, batch: int = 1000) -> None:
    with psycopg.connect(db_url) as conn, httpx.Client() as client:
        cursor = conn.cursor()
        cursor.execute(f"SELECT * FROM {table}")
        names = [column.name for column in cursor.description or []]
        while rows := cursor.fetchmany(batch):
            body = json.dumps([dict(zip(names, row, strict=True)) for row in rows], default=str)
            client.post(target, content=body, headers={"Content-Type": "application/json"})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
