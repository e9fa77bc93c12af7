"""The example database behind ``loader demo``: a small SQLite file of sign-ups."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

PLANS = ("free", "pro", "team")


def create_example_database(path: str | Path, rows: int = 1000) -> Path:
    """(Re)create a SQLite database at ``path`` with a ``signups`` table of ``rows`` rows.

    Every third sign-up is on the ``pro`` plan, which the example job selects.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE signups (id INTEGER PRIMARY KEY, email TEXT NOT NULL, "
            "plan TEXT NOT NULL, seats INTEGER NOT NULL, created_at TEXT NOT NULL)"
        )
        db.executemany(
            "INSERT INTO signups VALUES (?, ?, ?, ?, ?)",
            (
                (
                    n,
                    f"user{n}@example.com",
                    PLANS[n % 3],
                    1 + n % 7,
                    (start + timedelta(minutes=17 * n)).isoformat().replace("+00:00", "Z"),
                )
                for n in range(1, rows + 1)
            ),
        )
    db.close()
    return path
