"""The database is only read: a query that closes the wrapping subquery and adds
``COMMIT; DELETE ...`` (or ``DROP TABLE``) runs nothing, on every path and command.

Two layers, each tested on its own: a job whose query holds more than one statement is
refused before anything connects (the CLI exits 2 naming ``source.query``); and SQL
holding the query reaches each database in a way that cannot run a second statement,
proven here with jobs that skip the first layer (``model_copy`` does not validate).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from loader import Job, JobConfigError, LoaderError, SourceError, build_job, run_job
from loader.database import execute_query
from loader.probes import describe_query, key_range
from loader.source import open_stream
from tests.integration.conftest import Schema, make_job
from tests.integration.test_cli import closed_port, loader
from tests.integration.test_mariadb import connect, mariadb_url  # noqa: F401
from tests.support.server import Endpoint

VICTIM_ROWS = [(1,), (2,), (3,)]


def escapes(victim: str) -> list[str]:
    """Queries that close the subquery loader wraps them in, commit, and write."""
    return [
        f"SELECT 1 AS a) s; COMMIT; DELETE FROM {victim} WHERE x = 1; SELECT * FROM (SELECT 1 AS a",
        f"SELECT 1 AS a) s; COMMIT; DROP TABLE {victim}; SELECT * FROM (SELECT 1 AS a",
    ]


def runs(victim: str) -> list[tuple[str, dict[str, object]]]:
    """Escapes with the settings under which a run sends them: wrapped (with a cursor),
    or as they are (without one, where no describe step wraps them first)."""
    plain = f"SELECT 1 AS a; COMMIT; DELETE FROM {victim} WHERE x = 1"
    wrapped = [(query, {"cursor": {"column": "a"}}) for query in escapes(victim)]
    return [*wrapped, (plain, {})]


@pytest.fixture
def victim(schema: Schema) -> Iterator[str]:
    """A table the escapes try to change; unchanged after the test, or the test fails."""
    schema.execute("CREATE TABLE victim (x int PRIMARY KEY)")
    schema.execute("INSERT INTO victim VALUES (1), (2), (3)")
    yield schema.table("victim")
    with psycopg.connect(schema.url) as conn:
        rows = conn.execute(f"SELECT x FROM {schema.table('victim')} ORDER BY x").fetchall()
    assert rows == VICTIM_ROWS


def unchecked(job: Job, query: str) -> Job:
    """``job`` with ``query`` as it is, past the model's check (as a bug might let it)."""
    return job.model_copy(update={"source": job.source.model_copy(update={"query": query})})


def escaping_job(schema: Schema, endpoint: Endpoint, query: str, **sections: object) -> Job:
    job = build_job(make_job(schema, endpoint.url, "SELECT 1 AS a", **sections))
    return unchecked(job, query)


@pytest.mark.parametrize("which", [0, 1], ids=["delete", "drop"])
@pytest.mark.parametrize("command", ["check", "run --dry-run", "run"])
def test_the_cli_refuses_a_query_of_several_statements_before_connecting(
    tmp_path: Path, schema: Schema, victim: str, endpoint: Endpoint, command: str, which: int
) -> None:
    """check, run --dry-run and run exit 2 naming source.query; nothing reaches the
    database or the endpoint."""
    query = escapes(victim)[which].replace('"', '\\"')
    job = tmp_path / "job.yml"
    job.write_text(
        f'source:\n  url: {schema.url}\n  query: "{query}"\ntarget:\n  url: {endpoint.url}\n'
    )
    done = loader(*command.split(), str(job), cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "job.yml:3: source.query: holds more than one statement" in done.stderr
    assert "loader runs exactly one SELECT" in done.stderr
    assert endpoint.requests == []


def test_a_trailing_semicolon_and_semicolons_in_text_are_one_statement(
    schema: Schema, victim: str, endpoint: Endpoint
) -> None:
    """A trailing ';', and ';' in strings, quoted names and comments, run as before."""
    query = f"SELECT x, ';' AS \"a;b\", $$;$$ AS c FROM {victim} -- ; DELETE\n WHERE x = 1;"
    result = run_job(build_job(make_job(schema, endpoint.url, query)))
    assert result.status == "succeeded" and result.rows_posted == 1


def test_the_model_refuses_several_statements() -> None:
    """build_job (the library's front door) refuses the escape, naming source.query."""
    data = {"name": "ro", "source": {"url": "sqlite:///x.db", "query": escapes("victim")[0]},
            "target": {"url": "http://127.0.0.1:9/"}}  # fmt: skip
    with pytest.raises(JobConfigError, match=r"source\.query: holds more than one statement"):
        build_job(data)


@pytest.mark.parametrize("which", [0, 1], ids=["delete", "drop"])
def test_describe_and_key_range_run_one_statement(
    schema: Schema, victim: str, endpoint: Endpoint, which: int
) -> None:
    """describe_query (check) and key_range (partitions) fail; the database runs nothing."""
    job = escaping_job(schema, endpoint, escapes(victim)[which])
    with pytest.raises(SourceError, match="cannot insert multiple commands"):
        describe_query(job.source, job.redactor())
    with pytest.raises(SourceError, match="cannot insert multiple commands"):
        key_range(job.source, job.redactor(), "a")


@pytest.mark.parametrize("fast", [True, False], ids=["json-fast-path", "generic"])
@pytest.mark.parametrize("cursor", [False, True], ids=["plain", "cursor"])
def test_the_stream_runs_one_statement(
    schema: Schema, victim: str, endpoint: Endpoint, fast: bool, cursor: bool
) -> None:
    """open_stream fails before a row, with or without a cursor, on either path."""
    sections = {"source": {"cursor": {"column": "a"}}} if cursor else {}
    for query in escapes(victim):
        job = escaping_job(schema, endpoint, query, **sections)
        with pytest.raises(SourceError, match="cannot insert multiple commands"):  # noqa: SIM117
            with open_stream(job.source, job.redactor(), fast=fast):
                pass


@pytest.mark.parametrize("how", ["execute_query", "psycopg stream"])
def test_the_streaming_statements_run_one_statement(schema: Schema, victim: str, how: str) -> None:
    """The two ways rows are streamed (a declared cursor, psycopg's stream) each refuse a
    second statement, even when the describe step did not run first."""
    sql = f"SELECT * FROM (\n{escapes(victim)[0]}\n) AS loader_source"
    if how == "execute_query":
        engine = sa.create_engine(schema.url.replace("postgresql://", "postgresql+psycopg://"))
        with engine.connect() as connection, pytest.raises(sa.exc.ProgrammingError):
            execute_query(connection, sql, {}, 10).fetchall()
        engine.dispose()
    else:
        with psycopg.connect(schema.url) as raw, pytest.raises(psycopg.errors.SyntaxError):
            list(raw.cursor(binary=True).stream(sql, {}, size=10))


@pytest.mark.parametrize("which", [0, 1], ids=["delete", "drop"])
@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_a_run_runs_one_statement(
    schema: Schema, victim: str, endpoint: Endpoint, dry_run: bool, which: int
) -> None:
    """run_job (what run, run --dry-run and the workers call) fails and sends nothing."""
    job = escaping_job(schema, endpoint, escapes(victim)[which])
    with pytest.raises(SourceError, match="cannot insert multiple commands"):
        run_job(job, dry_run=dry_run)
    assert endpoint.requests == []


def test_a_partitioned_run_runs_one_statement(
    schema: Schema, victim: str, endpoint: Endpoint
) -> None:
    """A partitioned job (key range, then one range query per partition) fails and
    sends nothing; a worker runs the same run_job with the job's partition."""
    source = {"cursor": {"column": "a"}, "partition": {"column": "a", "count": 2}}
    for query in escapes(victim):
        job = escaping_job(schema, endpoint, query, source=source)
        with pytest.raises(LoaderError, match="cannot insert multiple commands"):
            run_job(job)
    assert endpoint.requests == []


def test_mariadb_runs_one_statement_even_when_the_url_asks_for_more(
    mariadb_url: str,  # noqa: F811
    endpoint: Endpoint,
) -> None:
    """On MariaDB (PyMySQL), also with ?client_flag= asking for multi-statements, the
    escape is a syntax error and the table is untouched."""
    with connect(mariadb_url) as conn, conn.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS ro_victim")
        cursor.execute("CREATE TABLE ro_victim (x int PRIMARY KEY)")
        cursor.execute("INSERT INTO ro_victim VALUES (1), (2), (3)")
    try:
        for url in (mariadb_url, f"{mariadb_url}?client_flag=65536"):
            for query, source in runs("ro_victim"):
                data = {"name": "ro", "source": {"url": url, "query": "SELECT 1 AS a", **source},
                        "target": {"url": endpoint.url}}  # fmt: skip
                job = unchecked(build_job(data), query)
                with pytest.raises(SourceError, match="error in your SQL syntax"):
                    describe_query(job.source, job.redactor())
                with pytest.raises(SourceError, match="error in your SQL syntax"):
                    run_job(job)
        with connect(mariadb_url) as conn, conn.cursor() as cursor:
            cursor.execute("SELECT x FROM ro_victim ORDER BY x")
            assert cursor.fetchall() == ((1,), (2,), (3,))
    finally:
        with connect(mariadb_url) as conn, conn.cursor() as cursor:
            cursor.execute("DROP TABLE IF EXISTS ro_victim")
    assert endpoint.requests == []


def test_sqlite_runs_one_statement(tmp_path: Path, endpoint: Endpoint) -> None:
    """On SQLite, sqlite3 refuses the escape and the table is untouched."""
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.executescript("CREATE TABLE victim (x int); INSERT INTO victim VALUES (1),(2),(3);")
    conn.close()
    for query, source in runs("victim"):
        data = {"name": "ro", "source": {"url": f"sqlite:///{path}", "query": "SELECT 1 AS a",
                                         **source}, "target": {"url": endpoint.url}}  # fmt: skip
        job = unchecked(build_job(data), query)
        with pytest.raises(SourceError):  # the plain one is a syntax error when wrapped
            describe_query(job.source, job.redactor())
        with pytest.raises(SourceError, match="one statement at a time"):
            run_job(job)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT x FROM victim ORDER BY x").fetchall() == VICTIM_ROWS
    conn.close()
    assert endpoint.requests == []


def test_the_refusal_comes_before_connecting(tmp_path: Path, endpoint: Endpoint) -> None:
    """With a database that cannot be reached, check still names source.query (exit 2):
    nothing tried to connect."""
    job = tmp_path / "job.yml"
    query = escapes("victim")[0]
    job.write_text(f'source:\n  url: postgresql://postgres@127.0.0.1:{closed_port()}/test\n'
                   f'  query: "{query}"\ntarget:\n  url: {endpoint.url}\n')  # fmt: skip
    done = loader("check", str(job), cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "source.query: holds more than one statement" in done.stderr
    assert "connect" not in done.stdout + done.stderr
