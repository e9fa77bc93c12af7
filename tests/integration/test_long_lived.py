"""A process that runs jobs again and again (a clock, a worker) does not accumulate what
each run creates: its memory levels off (see bench/clock_memory.py for the hour-long run)."""

from __future__ import annotations

import gc

from loader import build_job, run_job
from tests.integration.conftest import Schema, make_job
from tests.support.server import Endpoint


def loader_classes() -> int:
    """How many psycopg loader classes loader has created and that are still alive."""
    gc.collect()
    return sum(
        1 for o in gc.get_objects()
        if isinstance(o, type) and o.__module__ == "loader.database"
    )  # fmt: skip


def test_runs_of_a_postgresql_job_keep_no_classes_behind(
    schema: Schema, endpoint: Endpoint
) -> None:
    """Each connection's date and time loaders are the same classes, not new ones that
    psycopg's class cache would keep for the life of the process (a clock grew by 8 MB
    an hour that way)."""
    schema.execute(
        "CREATE TABLE events AS SELECT g AS id, now() AS at FROM generate_series(1, 3) g"
    )
    job = build_job(make_job(schema, endpoint.url, f"SELECT * FROM {schema.table('events')}"))
    run_job(job, full_refresh=True)
    after_one = loader_classes()

    for _ in range(5):
        run_job(job, full_refresh=True)

    assert loader_classes() == after_one
    assert len(endpoint.rows()) == 6 * 3  # the runs did read and send
