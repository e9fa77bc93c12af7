"""MySQL/MariaDB sources: streamed, exact types, incremental, against the real MariaDB.

The server comes from ``LOADER_TEST_MARIADB_URL`` (e.g. mysql://root@127.0.0.1:3306/test);
without it every test here fails saying what to set.
"""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pymysql
import pytest
import yaml

from loader import SourceError, build_job, run_job
from tests.support.memory import peak_rss_kib
from tests.support.server import Endpoint

ENV_VAR = "LOADER_TEST_MARIADB_URL"


@pytest.fixture(scope="session")
def mariadb_url() -> str:
    url = os.environ.get(ENV_VAR)
    if not url:
        pytest.fail(
            f"The MariaDB tests need a server: set {ENV_VAR}, e.g. "
            f"{ENV_VAR}=mysql://root@127.0.0.1:3306/test",
            pytrace=False,
        )
    return url


def connect(url: str) -> pymysql.connections.Connection:  # type: ignore[type-arg]
    rest = url.split("://", 1)[1]
    user, hostpart = rest.split("@", 1)
    host, database = hostpart.split("/", 1)
    hostname, _, port = host.partition(":")
    return pymysql.connect(host=hostname, port=int(port or 3306), user=user.split(":")[0],
                           database=database, autocommit=True)  # fmt: skip


@pytest.fixture
def table(mariadb_url: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:10]}"
    yield name
    with connect(mariadb_url) as conn, conn.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {name}")


ROWS = 100_000
EVERY_TYPE = """
CREATE TABLE {name} (
  id BIGINT PRIMARY KEY, big BIGINT UNSIGNED, amount DECIMAL(30, 10), ratio DOUBLE,
  label VARCHAR(100) CHARACTER SET utf8mb4, flag BOOL, at DATETIME(6), stamp TIMESTAMP(6) NULL,
  day DATE, blob_col BLOB, maybe INT NULL
);
INSERT INTO {name}
SELECT seq, 18446744073709551615 - seq, seq * 1.0000000001 + 0.1, seq / 4,
       CONCAT('user ', seq, ' "q" ✓'), seq % 2 = 0,
       TIMESTAMP('2024-01-01 00:00:00') + INTERVAL seq SECOND + INTERVAL 5 MICROSECOND,
       TIMESTAMP('2024-01-01 00:00:00') + INTERVAL seq MINUTE,
       DATE('2024-01-01') + INTERVAL (seq % 365) DAY, UNHEX(LPAD(HEX(seq), 8, '0')),
       IF(seq % 10 = 0, NULL, seq)
FROM seq_1_to_{rows}
"""


def create(url: str, name: str, rows: int) -> None:
    with connect(url) as conn, conn.cursor() as cursor:
        cursor.execute("SET time_zone = '+00:00'")
        for statement in EVERY_TYPE.format(name=name, rows=rows).split(";"):
            cursor.execute(statement)


def job(url: str, endpoint: Endpoint, query: str, **extra: object) -> dict[str, object]:
    return {"name": "maria", "source": {"url": url, "query": query, **extra},
            "target": {"url": endpoint.url}, "concurrency": 1}  # fmt: skip


def test_every_type_arrives_exactly_once(mariadb_url: str, table: str, endpoint: Endpoint) -> None:
    """A 100,000-row MariaDB table arrives once, with exact values."""
    create(mariadb_url, table, ROWS)
    result = run_job(build_job(job(mariadb_url, endpoint, f"SELECT * FROM {table}")))

    assert result.rows_posted == ROWS
    rows = endpoint.rows()
    assert sorted(row["id"] for row in rows) == list(range(1, ROWS + 1))
    for row in rows[:: ROWS // 500]:
        g = row["id"]
        assert row["big"] == 18446744073709551615 - g
        expected = (Decimal(g) * Decimal("1.0000000001") + Decimal("0.1")).quantize(
            Decimal("1E-10")
        )
        assert str(row["amount"]) == str(expected)
        assert float(row["ratio"]) == g / 4
        assert row["label"] == f'user {g} "q" ✓'
        assert row["flag"] == (1 if g % 2 == 0 else 0)
        at = datetime(2024, 1, 1) + timedelta(seconds=g, microseconds=5)
        assert row["at"] == at.isoformat()  # DATETIME: no time zone, no offset
        stamp = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(minutes=g)
        assert row["stamp"].endswith("Z")  # TIMESTAMP: an instant, in UTC
        assert datetime.fromisoformat(row["stamp"]) == stamp
        assert row["day"] == (date(2024, 1, 1) + timedelta(days=g % 365)).isoformat()
        assert base64.b64decode(row["blob_col"]) == bytes.fromhex(f"{g:08x}")
        assert row["maybe"] == (None if g % 10 == 0 else g)


def test_incremental_and_streamed_with_flat_memory(
    mariadb_url: str, table: str, endpoint: Endpoint, tmp_path: Path
) -> None:
    """A cursor resumes after the checkpoint; 100,000 rows stream with flat memory."""
    create(mariadb_url, table, ROWS)
    peaks = {}
    for rows in (10_000, ROWS):
        spec = job(mariadb_url, endpoint, f"SELECT * FROM {table} WHERE id <= {rows}",
                   cursor={"column": "id"})  # fmt: skip
        spec["name"] = f"maria_{rows}"
        path = tmp_path / f"job_{rows}.yml"
        path.write_text(yaml.safe_dump(spec))
        peaks[rows] = peak_rss_kib(path, tmp_path)
    assert peaks[ROWS] - peaks[10_000] < 12 * 1024, peaks

    spec = job(mariadb_url, endpoint, f"SELECT id FROM {table}", cursor={"column": "id"})
    first = run_job(build_job(spec), limit=40)
    second = run_job(build_job(spec))
    assert (first.rows_posted, second.rows_posted) == (40, ROWS - 40)


def test_a_missing_driver_names_the_extra_to_install(endpoint: Endpoint) -> None:
    """A URL whose driver is not installed says which pip extra brings it."""
    spec = {
        "name": "x",
        "source": {"url": "mysql+mysqldb://root@127.0.0.1/test", "query": "SELECT 1"},
        "target": {"url": endpoint.url},
    }
    with pytest.raises(SourceError, match=r"pip install 'dynoloader\[mysql\]'"):
        run_job(build_job(spec))
