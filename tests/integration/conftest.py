"""Integration fixtures: a real PostgreSQL, a fresh schema per test.

The server comes from ``LOADER_TEST_DATABASE_URL`` when set, else from testcontainers
when a Docker engine answers; otherwise every integration test fails saying what to set.
"""

from __future__ import annotations

import gc
import os
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.kinto import Kinto

ENV_VAR = "LOADER_TEST_DATABASE_URL"


def _docker_problem() -> str | None:
    """Why no Docker engine can be used, or None when one answers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the docker client leaks a socket when it fails
        try:
            import docker

            client = docker.from_env(timeout=3)
            try:
                client.ping()
            finally:
                client.close()
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            gc.collect()
    return None


def _container_url(request: pytest.FixtureRequest) -> str:
    problem = _docker_problem()
    if problem is None:
        from testcontainers.community.postgres import PostgresContainer

        container = PostgresContainer("postgres:16-alpine", driver=None)
        container.start()
        request.addfinalizer(container.stop)
        return str(container.get_connection_url())
    pytest.fail(
        f"The integration tests need PostgreSQL. Set {ENV_VAR}, e.g. "
        f"{ENV_VAR}=postgresql://postgres@127.0.0.1:5432/test, or run a Docker engine "
        f"so testcontainers can start one (Docker: {problem})",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def database_url(request: pytest.FixtureRequest) -> str:
    """A PostgreSQL URL (libpq form) for a database the tests may create schemas in."""
    url = os.environ.get(ENV_VAR) or _container_url(request)
    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.Error as exc:
        pytest.fail(f"cannot connect to {ENV_VAR}: {exc}", pytrace=False)
    return url


@dataclass
class Schema:
    """A schema of its own for one test, dropped afterwards."""

    url: str
    name: str

    def execute(self, sql: str, params: Any = None) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"SET search_path TO {self.name}")
            conn.execute(sql, params)

    def table(self, name: str) -> str:
        return f"{self.name}.{name}"

    @property
    def scoped_url(self) -> str:
        """The URL with this schema first on the search path (bare table names)."""
        separator = "&" if "?" in self.url else "?"
        return f"{self.url}{separator}options=-csearch_path%3D{self.name}"


@pytest.fixture
def schema(database_url: str) -> Iterator[Schema]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    yield Schema(database_url, name)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {name} CASCADE")


@pytest.fixture
def pg_state(schema: Schema, monkeypatch: pytest.MonkeyPatch) -> str:
    """State in PostgreSQL (as on Heroku), in the test's schema; exported to the
    processes a test starts."""
    monkeypatch.setenv("LOADER_STATE_URL", schema.scoped_url)
    return schema.scoped_url


def make_job(schema: Schema, endpoint_url: str, query: str, **sections: Any) -> dict[str, Any]:
    """A job mapping reading ``query`` from the test database and posting to ``endpoint_url``."""
    source = {"url": schema.url, "query": query, **sections.pop("source", {})}
    target = {"url": endpoint_url, **sections.pop("target", {})}
    retry = {"attempts": 3, "backoff": "10ms", "max_backoff": "50ms", **sections.pop("retry", {})}
    # One request at a time unless a test asks for more: scripted answers stay in order.
    sections.setdefault("concurrency", 1)
    return {"name": "test_job", "source": source, "target": target, "retry": retry, **sections}


@pytest.fixture
def kinto(tmp_path: Path) -> Iterator[Kinto]:
    """A real Kinto server on loopback (see :mod:`tests.support.kinto`)."""
    server = Kinto(tmp_path).start()
    yield server
    server.stop()
