"""The ``loader`` command as a user runs it: exit codes, messages, secrets, memory."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from loader import defaults
from tests.integration.conftest import Schema
from tests.support.memory import peak_rss_kib
from tests.support.server import Endpoint

CANARY_PASSWORD = "pw-canary-7d1f0c"
CANARY_TOKEN = "tok-canary-93b2ae"


def loader(
    *args: str, cwd: Path, env: dict[str, str] | None = None, unset: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a subprocess, as a user would."""
    environ = {k: v for k, v in os.environ.items() if k not in unset}
    return subprocess.run(
        [sys.executable, "-m", "loader", *args],
        cwd=cwd,
        env={**environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_password(url: str, password: str) -> str:
    """``url`` with ``password`` set (trust auth ignores it; the canary must not leak)."""
    scheme, rest = url.split("://", 1)
    userinfo, host = rest.split("@", 1)
    return f"{scheme}://{userinfo.split(':')[0]}:{password}@{host}"


def write_job(tmp_path: Path, db_url: str, target_url: str, query: str, extra: str = "") -> Path:
    path = tmp_path / "job.yml"
    path.write_text(
        textwrap.dedent(
            f"""\
            source:
              url: {db_url}
              query: {query}
            target:
              url: {target_url}
              headers:
                Authorization: Bearer ${{CRM_TOKEN}}
            retry:
              attempts: 2
              backoff: 10ms
            """
        )
        + extra
    )
    return path


@pytest.fixture
def table(schema: Schema) -> str:
    schema.execute(
        "CREATE TABLE users AS SELECT g AS id, 'u' || g AS name FROM generate_series(1, 30) g"
    )
    return schema.table("users")


ENV = {"CRM_TOKEN": CANARY_TOKEN}


def test_run_prints_a_summary_and_exits_0(
    tmp_path: Path, schema: Schema, table: str, endpoint: Endpoint
) -> None:
    """A successful run exits 0 and prints rows read, posted, requests and retries."""
    job = write_job(tmp_path, schema.url, endpoint.url, f"SELECT * FROM {table} ORDER BY id")

    done = loader("run", str(job), cwd=tmp_path, env=ENV)

    assert done.returncode == defaults.EXIT_OK, done.stderr
    assert "job: succeeded" in done.stdout
    assert "rows posted            30" in done.stdout
    assert len(endpoint.rows()) == 30
    assert endpoint.requests[0].headers["Authorization"] == f"Bearer {CANARY_TOKEN}"


def test_env_file_is_read_without_overriding_the_environment(
    tmp_path: Path, schema: Schema, table: str, endpoint: Endpoint
) -> None:
    """Variables come from .env unless the real environment sets them."""
    job = write_job(tmp_path, "${DB}", endpoint.url, f"SELECT * FROM {table}")
    (tmp_path / ".env").write_text(f"DB={schema.url}\nCRM_TOKEN=from-dotenv\n")

    done = loader("run", str(job), cwd=tmp_path, env=ENV)

    assert done.returncode == 0, done.stderr
    assert endpoint.requests[0].headers["Authorization"] == f"Bearer {CANARY_TOKEN}"


@pytest.mark.parametrize(
    ("case", "code", "message"),
    [
        ("bad_sql", defaults.EXIT_SOURCE, 'relation "nowhere" does not exist'),
        ("unreachable_database", defaults.EXIT_SOURCE, "cannot connect to postgresql+psycopg://"),
        ("unreachable_endpoint", defaults.EXIT_DELIVERY, "gave up after 2 attempts"),
        ("rejected", defaults.EXIT_DELIVERY, "400 Bad Request: {\"error\": \"bad row\""),
        ("missing_env_var", defaults.EXIT_CONFIG, "job.yml:7: target.headers.Authorization: "
         "environment variable CRM_TOKEN is not set"),
        ("malformed_yaml", defaults.EXIT_CONFIG, "job.yml:13: invalid YAML: while parsing a "
         "flow sequence started at line 12: expected ',' or ']', but got '<stream end>'"),
        ("unknown_key", defaults.EXIT_CONFIG, "job.yml:12: batch.sise: unknown key; "
         "did you mean 'size'?"),
    ],
)  # fmt: skip
def test_bad_input_gets_a_clear_error_and_sends_nothing(
    tmp_path: Path,
    schema: Schema,
    table: str,
    endpoint: Endpoint,
    case: str,
    code: int,
    message: str,
) -> None:
    """Each bad input exits with its documented code and a message naming the problem."""
    db_url, target_url, query, extra = schema.url, endpoint.url, f"SELECT * FROM {table}", ""
    env = dict(ENV)
    if case == "bad_sql":
        query = "SELECT * FROM nowhere"
    elif case == "unreachable_database":
        db_url = f"postgresql://postgres@127.0.0.1:{closed_port()}/test"
    elif case == "unreachable_endpoint":
        target_url = f"http://127.0.0.1:{closed_port()}/in"
    elif case == "rejected":
        endpoint.script("/", (400, {}, b'{"error": "bad row"}'))
        target_url = endpoint.url + "/"
        extra = "on_reject: fail\n"
    elif case == "missing_env_var":
        env = {}
    elif case == "malformed_yaml":
        extra = "batch:\n  size: [1, 2\n"
    elif case == "unknown_key":
        extra = "batch:\n  sise: 10\n"
    job = write_job(tmp_path, db_url, target_url, query, extra)

    done = loader("run", str(job), cwd=tmp_path, env=env, unset=("CRM_TOKEN",))

    assert done.returncode == code, done.stdout + done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    if case != "rejected":
        assert endpoint.requests == []


def test_no_secret_appears_in_any_output(
    tmp_path: Path, schema: Schema, table: str, endpoint: Endpoint
) -> None:
    """The DB password and the Authorization token never appear, whatever happens."""
    db_url = with_password(schema.url, CANARY_PASSWORD)
    query = f"SELECT * FROM {table}"
    outputs: list[str] = []

    def run(*args: str, target: str = endpoint.url, sql: str = query, url: str = db_url) -> None:
        job = write_job(tmp_path, url, target, sql)
        done = loader("-v", *args, str(job), cwd=tmp_path, env=ENV)
        outputs.append(done.stdout + done.stderr)

    run("run")
    run("run", "--dry-run")
    run("validate")
    run("run", sql="SELECT * FROM nowhere")
    run("run", url=f"postgresql://postgres:{CANARY_PASSWORD}@127.0.0.1:{closed_port()}/test")
    run("run", url=f"postgres://postgres:{CANARY_PASSWORD}@127.0.0.1:{closed_port()}/test")
    # The endpoint echoes the token back in an error body and in a retryable one.
    endpoint.script(
        "/echo",
        (503, {}, f"overloaded for Bearer {CANARY_TOKEN}".encode()),
        (401, {}, f'{{"error": "bad token {CANARY_TOKEN}"}}'.encode()),
    )
    run("run", target=endpoint.url + "/echo")
    run("run", target=f"http://user:{CANARY_PASSWORD}@127.0.0.1:{closed_port()}/x")

    assert len(outputs) == 8
    assert "***" in "".join(outputs)
    for output in outputs:
        assert CANARY_PASSWORD not in output
        assert CANARY_TOKEN not in output


def test_100k_rows_exactly_once_with_flat_memory(
    tmp_path: Path, schema: Schema, endpoint: Endpoint
) -> None:
    """100,000 rows arrive once each; peak memory does not grow with the row count."""
    schema.execute(
        "CREATE TABLE big AS SELECT g AS id, repeat(md5(g::text), 8) AS payload "
        "FROM generate_series(1, 100000) g"
    )
    peaks = {}
    for rows in (10_000, 100_000):
        job = write_job(
            tmp_path, schema.url, endpoint.url,
            f"SELECT * FROM {schema.table('big')} WHERE id <= {rows}",
        )  # fmt: skip
        peaks[rows] = peak_rss_kib(job, tmp_path, ENV)
    ids = [row["id"] for row in endpoint.rows()]
    assert len(ids) == 110_000
    assert sorted(set(ids)) == list(range(1, 100_001))
    assert ids.count(1) == 2 and ids.count(100_000) == 1
    # 100,000 rows are about 27 MB of JSON: a run holding them would grow by far more.
    assert peaks[100_000] - peaks[10_000] < 8 * 1024, peaks


def test_check_reports_what_works_and_sends_nothing(
    tmp_path: Path, schema: Schema, table: str, endpoint: Endpoint
) -> None:
    """`loader check` reaches the database (query described, not run), the endpoint
    (a connection, no request) and the state store; a dead endpoint is named."""
    job = write_job(tmp_path, schema.url, endpoint.url, f"SELECT * FROM {table}")
    good = loader("check", str(job), cwd=tmp_path, env=ENV)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "ok   source: the query returns id, name" in good.stdout
    assert "ok   target: 127.0.0.1:" in good.stdout and "ok   state:" in good.stdout
    assert endpoint.requests == []

    dead = write_job(tmp_path, schema.url, f"http://127.0.0.1:{closed_port()}/in",
                     "SELECT * FROM nowhere")  # fmt: skip
    bad = loader("check", str(dead), cwd=tmp_path, env=ENV)
    assert bad.returncode == defaults.EXIT_SOURCE
    assert "FAIL source: " in bad.stdout and 'relation "nowhere" does not exist' in bad.stdout
    assert "FAIL target: " in bad.stdout and "ConnectionRefusedError" in bad.stdout
