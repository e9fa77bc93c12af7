"""The canary suite: a distinct canary in every secret slot, every failure kind driven
through the real CLI, and every output searched for every canary. Zero hits is the bar.

Each (failure kind, output) pair is a test of its own, so a report shows exactly which
combinations leak. The kinds run once per module, side by side, against one loopback
server (:class:`tests.support.canaries.CanaryServer`) and the test database.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
import yaml

from loader import LoaderError, flush_notifications, load_job, open_state, run_job
from tests.support.canaries import CANARIES, CanaryServer, Mailbox, leaks, planted
from tests.support.canary_lab import Case, Lab, Played, closed_port, job_spec, play

JOB = ("{job}",)
CASES = [
    Case("alert_receivers_fail", ("run", *JOB), 4, mode="echo401", auth="basic",
         hooks_fail=True),
    Case("sigterm", ("run", *JOB), 130, mode="drip", auth="oauth2", rows=200, sigterm=True),
    Case("timeout", ("run", *JOB), 4, mode="slow"),
    Case("db_unreachable", ("run", *JOB), 3, db_down=True),
    Case("db_query_fails", ("run", *JOB), 3, query="SELECT * FROM nowhere"),
    Case("http_401_echo", ("run", *JOB), 4, mode="echo401"),
    Case("http_400_echo_bearer", ("run", *JOB), 6, mode="echo400"),
    Case("http_400_echo_basic", ("run", *JOB), 6, mode="echo400", auth="basic"),
    Case("http_400_echo_oauth2", ("run", *JOB), 6, mode="echo400", auth="oauth2"),
    Case("http_500_echo_basic", ("run", *JOB), 4, mode="echo500", auth="basic"),
    Case("redirect_301_basic", ("run", *JOB), 4, mode="r301", auth="basic"),
    Case("redirect_307_oauth2", ("run", *JOB), 4, mode="r307", auth="oauth2"),
    Case("reason_phrase_oauth2", ("run", *JOB), 4, mode="reason", auth="oauth2"),
    Case("reason_phrase_bearer", ("run", *JOB), 4, mode="reason"),
    Case("oauth2_token_error", ("run", *JOB), 4, auth="oauth2-echo"),
    Case("deadletter_list", ("deadletter", "list", *JOB), 0, mode="poison", auth="basic",
         setup=(("run", *JOB),)),
    Case("deadletter_replay", ("deadletter", "replay", *JOB), 6, mode="poison", auth="basic",
         setup=(("run", *JOB),)),
    Case("circuit_breaker", ("run", *JOB), 4, mode="echo400", auth="basic",
         job={"max_rejected": 0}),
    Case("slack_target_500", ("run", *JOB), 4, mode="echo500", auth="basic", slack_target=True),
    Case("lock_held", ("run", *JOB), 5, auth="basic", hold_lock=True),
    Case("check", ("check", *JOB), 0, auth="basic"),
    Case("check_db_unreachable", ("check", *JOB), 3, db_down=True),
    Case("show", ("show", *JOB), 0, auth="basic"),
    Case("show_oauth2", ("show", *JOB), 0, auth="oauth2"),
    Case("dry_run", ("run", "--dry-run", *JOB), 0, auth="basic"),
    Case("history", ("history", *JOB), 0, mode="r301", auth="basic", setup=(("run", *JOB),)),
    Case("status_json", ("status", "--json", *JOB), 0, mode="reason", auth="oauth2",
         setup=(("run", *JOB),)),
    Case("state_show", ("state", "show", *JOB), 0, mode="poison", setup=(("run", *JOB),)),
    # The same kinds with the state in PostgreSQL, its URL carrying a password.
    Case("pg_http_400_echo_basic", ("run", *JOB), 6, mode="echo400", auth="basic",
         state="postgres"),
    Case("pg_reason_phrase_oauth2", ("run", *JOB), 4, mode="reason", auth="oauth2",
         state="postgres"),
    Case("pg_deadletter_replay", ("deadletter", "replay", *JOB), 6, mode="poison",
         auth="basic", setup=(("run", *JOB),), state="postgres"),
    Case("pg_lock_held", ("run", *JOB), 5, auth="basic", hold_lock=True, state="postgres"),
    Case("pg_history", ("history", *JOB), 0, mode="r307", auth="bearer",
         setup=(("run", *JOB),), state="postgres"),
    Case("pg_state_unreachable", ("run", *JOB), 7, auth="basic", state="postgres",
         state_down=True),
]  # fmt: skip
BY_NAME = {case.name: case for case in CASES}
CLI_OUTPUTS = ("text logs: stdout", "text logs: stderr", "json logs: stdout",
               "json logs: stderr", "setup commands")  # fmt: skip
RUN_OUTPUTS = ("state store tables", "alerts and slack", "alert mail", "heartbeats")


def _pairs() -> Iterator[tuple[str, str]]:
    for case in CASES:
        for output in CLI_OUTPUTS:
            if output != "setup commands" or case.setup:
                yield case.name, output
        if case.runs_a_job:
            for output in RUN_OUTPUTS:
                if output != "state store tables" or not case.state_down:
                    yield case.name, output


@pytest.fixture(scope="module")
def played(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Played | BaseException]]:
    """Every case, played once, four at a time (the slow ones first)."""
    server = CanaryServer(CANARIES["oauth2 access token"]).start()
    mailbox = Mailbox(closed_port()).start()
    lab = Lab(server, mailbox, database_url, tmp_path_factory.mktemp("canaries"))
    schemas = [lab.state_url(case)[1] for case in CASES if case.state == "postgres"]
    with psycopg.connect(database_url, autocommit=True) as conn:
        for schema in schemas:
            conn.execute(f"CREATE SCHEMA {schema}")

    def attempt(case: Case) -> Played | BaseException:
        try:
            return play(case, lab)
        except Exception as exc:
            return exc

    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            yield dict(zip(BY_NAME, pool.map(attempt, CASES), strict=True))
    finally:
        server.stop()
        mailbox.stop()
        with psycopg.connect(database_url, autocommit=True) as conn:
            for schema in schemas:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def _get(played: dict[str, Played | BaseException], name: str) -> Played:
    result = played[name]
    if isinstance(result, BaseException):
        raise result
    return result


@pytest.mark.parametrize(("case", "output"), list(_pairs()))
def test_no_canary_leaks(played: dict[str, Played | BaseException], case: str, output: str) -> None:
    """No canary, plain, URL-encoded or base64, appears in this output of this failure kind."""
    text = _get(played, case).outputs[output]
    found = leaks(text, f"{case} / {output}")
    assert not found, "\n".join(str(leak) for leak in found)


@pytest.mark.parametrize("case", list(BY_NAME))
def test_each_failure_kind_fails_as_meant(
    played: dict[str, Played | BaseException], case: str
) -> None:
    """The kind really happened (its exit code, in both log formats), so a clean output
    is not clean because the job never got that far."""
    result = _get(played, case)
    expected = BY_NAME[case].exit_code
    assert result.exit_codes == [expected, expected], result.outputs


def test_the_canaries_were_sent_where_they_belong(
    played: dict[str, Played | BaseException],
) -> None:
    """The target got every header, query and envelope canary (the basic header and the
    OAuth2 token included), and the receivers got alerts, Slack messages and heartbeats:
    the planted secrets were in use, not lying idle."""
    sent = {
        name
        for result in played.values()
        if isinstance(result, Played)
        for request in result.target_requests
        for name in planted(request.text())
    }
    assert sent >= {"bearer token", "basic auth password", "oauth2 access token",
                    "X-Api-Key header", "envelope field", "target.url ?api_key=",
                    "secret-named env var",
                    "target URL path (Slack webhook as target)"}  # fmt: skip
    received = _get(played, "http_401_echo")
    assert received.outputs["alerts and slack"].count("<own path>") == 2
    assert received.outputs["heartbeats"].count("<own path>") >= 2
    assert "is failing" in received.outputs["alert mail"]
    assert "loader_" in _get(played, "pg_http_400_echo_basic").outputs["state store tables"]


LIBRARY_OUTPUTS = ("str(exception)", "traceback", "loader log records",
                   "third-party log records (httpx)")  # fmt: skip


class _Keep(logging.Handler):
    """Keeps every record it is given."""

    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def library_run(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A failing job run from Python (a 500 echoing the request, the basic-auth header
    among it, retried then raised): its exception, traceback and every log record."""
    root = tmp_path_factory.mktemp("library")
    server = CanaryServer(CANARIES["oauth2 access token"]).start()
    handler = _Keep(logging.DEBUG)
    records = handler.records
    logger = logging.getLogger()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        case = Case("library", ("run", *JOB), 4, mode="echo500", auth="basic")
        (root / "job.yml").write_text(yaml.safe_dump(job_spec(case, server, database_url)))
        job = load_job(root / "job.yml", env={"PARTNER_SECRET": CANARIES["secret-named env var"]})
        state = open_state(f"sqlite:///{root / 'state.db'}")
        with pytest.raises(LoaderError) as caught:
            run_job(job, state=state)
        assert flush_notifications(timeout=10)
        state.close()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        server.stop()
    ours = [r for r in records if r.name.startswith("loader")]
    theirs = [r for r in records if r.name.startswith("httpx")]
    return {
        "str(exception)": f"{caught.value}\n{caught.value!r}",
        "traceback": "".join(traceback.format_exception(caught.value)),
        "loader log records": "\n".join(r.getMessage() for r in ours),
        "third-party log records (httpx)": "\n".join(r.getMessage() for r in theirs),
    }


@pytest.mark.parametrize("output", LIBRARY_OUTPUTS)
def test_the_library_raises_and_logs_no_canary(library_run: dict[str, str], output: str) -> None:
    """Run from Python, a failing job's exception, traceback and log records carry no
    canary."""
    found = leaks(library_run[output], f"library / {output}")
    assert not found, "\n".join(str(leak) for leak in found)
