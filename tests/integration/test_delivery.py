"""Batching, retries and failures, asserted on what a real HTTP server received."""

from __future__ import annotations

import json
import threading
import time
from email.utils import formatdate
from pathlib import Path

import pytest

from loader import (
    RejectedError,
    RetriesExhaustedError,
    RetryableSinkError,
    SinkError,
    SourceError,
    build_job,
    run_job,
)
from loader.errors import EncodingError, QueryError
from tests.integration.conftest import Schema, make_job
from tests.support.server import RESET, Delay, Endpoint, Trickle


def numbers(schema: Schema, count: int, payload: str = "'x'") -> str:
    schema.execute(
        f"CREATE TABLE numbers AS SELECT g AS id, {payload} AS payload "
        f"FROM generate_series(1, {count}) AS g"
    )
    return f"SELECT id, payload FROM {schema.table('numbers')} ORDER BY id"


def test_batch_size_is_respected(schema: Schema, endpoint: Endpoint) -> None:
    """Every request holds at most batch.size rows, in order, and all rows arrive once."""
    job = build_job(make_job(schema, endpoint.url, numbers(schema, 1050), batch={"size": 100}))

    result = run_job(job)

    assert [len(r.rows()) for r in endpoint.requests] == [100] * 10 + [50]
    assert [row["id"] for row in endpoint.rows()] == list(range(1, 1051))
    assert result.requests == 11


def test_max_bytes_is_respected(schema: Schema, endpoint: Endpoint) -> None:
    """No body is larger than batch.max_bytes, and bodies are filled close to it."""
    query = numbers(schema, 2000, payload="repeat('y', 100)")
    job = build_job(
        make_job(schema, endpoint.url, query, batch={"size": 1000, "max_bytes": "10KB"})
    )

    run_job(job)

    sizes = [len(r.body) for r in endpoint.requests]
    assert max(sizes) <= 10_000
    assert min(sizes[:-1]) > 10_000 - 130  # one more row would not have fitted
    assert [row["id"] for row in endpoint.rows()] == list(range(1, 2001))


def test_a_row_larger_than_max_bytes_is_an_error_naming_it(
    schema: Schema, endpoint: Endpoint
) -> None:
    """A single row that cannot fit in max_bytes fails the run and names the row."""
    schema.execute(
        "CREATE TABLE t AS SELECT g AS id, CASE WHEN g = 3 THEN repeat('z', 5000) ELSE 'a' END "
        "AS payload FROM generate_series(1, 5) g"
    )
    job = build_job(
        make_job(schema, endpoint.url, f"SELECT * FROM {schema.table('t')} ORDER BY id",
                 batch={"size": 2, "max_bytes": "1KB"})
    )  # fmt: skip

    with pytest.raises(EncodingError, match=r'row 3 \(\{"id":3\.\.\.\) is 5,\d+ bytes'):
        run_job(job)


def test_ndjson_and_envelope_formats(schema: Schema, endpoint: Endpoint) -> None:
    """format: ndjson sends one object per line; an envelope wraps the rows with fields."""
    query = numbers(schema, 3)
    run_job(build_job(make_job(schema, endpoint.url + "/nd", query, target={"format": "ndjson"})))
    run_job(
        build_job(
            make_job(schema, endpoint.url + "/env", query,
                     target={"envelope": {"key": "events", "fields": {"api_key": "k-123"}}})
        )
    )  # fmt: skip

    nd, env = endpoint.requests
    assert nd.headers["Content-Type"] == "application/x-ndjson"
    assert nd.body == b'{"id":1,"payload":"x"}\n{"id":2,"payload":"x"}\n{"id":3,"payload":"x"}\n'
    assert env.headers["Content-Type"] == "application/json"
    assert json.loads(env.body) == {
        "api_key": "k-123",
        "events": [{"id": i, "payload": "x"} for i in (1, 2, 3)],
    }


def test_requests_carry_headers_and_a_stable_idempotency_key(
    schema: Schema, endpoint: Endpoint
) -> None:
    """User-Agent, Content-Type, configured headers; retries reuse the Idempotency-Key."""
    endpoint.script("/in", 503, 503, 200, 200)
    job = build_job(
        make_job(schema, endpoint.url + "/in", numbers(schema, 4), batch={"size": 2},
                 target={"method": "PUT", "headers": {"X-Tenant": "acme"}})
    )  # fmt: skip

    result = run_job(job)

    assert [r.method for r in endpoint.requests] == ["PUT"] * 4
    keys = [r.headers["Idempotency-Key"] for r in endpoint.requests]
    assert keys[0] == keys[1] == keys[2] != keys[3]
    for request in endpoint.requests:
        assert request.headers["User-Agent"].startswith("loader/")
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["Accept"] == "*/*"
        assert request.headers["X-Tenant"] == "acme"
    assert (result.requests, result.retries, result.rows_posted) == (4, 2, 4)


def test_identical_bodies_are_never_taken_for_duplicates(
    schema: Schema, endpoint: Endpoint
) -> None:
    """Two identical batches in a run, or the same batch in two runs, get distinct keys."""
    schema.execute("CREATE TABLE same AS SELECT 'x' AS v FROM generate_series(1, 4)")
    job = build_job(
        make_job(schema, endpoint.url, f"SELECT v FROM {schema.table('same')}", batch={"size": 2})
    )
    run_job(job)
    run_job(job)

    keys = [r.headers["Idempotency-Key"] for r in endpoint.requests]
    assert len(endpoint.requests) == 4 and len(set(keys)) == 4


def test_a_resent_batch_keeps_its_key_across_runs(schema: Schema, endpoint: Endpoint) -> None:
    """With a cursor, the batch a failed run could not deliver is re-sent by the next run
    under the same Idempotency-Key (so the endpoint can drop it if it did arrive)."""
    endpoint.script("/", 200, (400, {}, b"not now"))
    query = numbers(schema, 6)
    job = build_job(
        make_job(schema, endpoint.url + "/", query, batch={"size": 2}, on_reject="fail",
                 source={"cursor": {"column": "id"}})
    )  # fmt: skip
    with pytest.raises(RejectedError):
        run_job(job)
    run_job(job)

    keys = [r.headers["Idempotency-Key"] for r in endpoint.requests]
    assert [r.rows()[0]["id"] for r in endpoint.requests] == [1, 3, 3, 5]
    assert keys[1] == keys[2] and len(set(keys)) == 3


def test_503_503_200_is_retried_with_backoff(schema: Schema, endpoint: Endpoint) -> None:
    """Two 503s then a 200: the batch is delivered once acknowledged, after two back-offs."""
    endpoint.script("/", 503, (503, {}, b"busy"), 200)
    waits: list[float] = []
    job = build_job(make_job(schema, endpoint.url + "/", numbers(schema, 5),
                             retry={"backoff": "1s", "max_backoff": "2s"}))  # fmt: skip

    result = run_job(job, sleep=waits.append)

    assert len(endpoint.requests) == 3
    assert len(waits) == 2 and 0 <= waits[0] <= 1 and 0 <= waits[1] <= 2
    assert result.status == "succeeded" and result.retries == 2


def test_connection_resets_and_timeouts_are_retried(schema: Schema, endpoint: Endpoint) -> None:
    """A reset connection and a response slower than target.timeout are retried."""
    endpoint.script("/", RESET, Delay(1.0), 200)
    job = build_job(make_job(schema, endpoint.url + "/", numbers(schema, 2),
                             target={"timeout": "300ms"}))  # fmt: skip

    result = run_job(job, sleep=lambda s: None)

    assert result.status == "succeeded"
    assert result.retries == 2 and len(endpoint.requests) == 3


@pytest.mark.parametrize("headers", [False, True], ids=["slow-body", "slow-headers"])
def test_target_timeout_bounds_the_whole_exchange(
    schema: Schema, endpoint: Endpoint, headers: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """An answer trickled a byte every 0.2 s (no read ever waits 400ms) ends at
    ``target.timeout: 400ms`` for the whole exchange, and is retried as a timeout."""
    endpoint.script("/", Trickle(0.2, headers=headers), 200)
    job = build_job(make_job(schema, endpoint.url + "/", numbers(schema, 2),
                             target={"timeout": "400ms"}))  # fmt: skip

    started = time.monotonic()
    result = run_job(job, sleep=lambda s: None)

    assert result.status == "succeeded" and result.retries == 1
    first, second = endpoint.requests
    assert second.at - first.at < 0.9 and time.monotonic() - started < 3
    assert "no complete response within target.timeout (400ms)" in caplog.text


def test_429_retry_after_seconds_is_honoured(schema: Schema, endpoint: Endpoint) -> None:
    """429 with Retry-After: 1 waits one second (not the back-off) before retrying."""
    endpoint.script("/", (429, {"Retry-After": "1"}), 200)
    job = build_job(make_job(schema, endpoint.url + "/", numbers(schema, 2)))

    result = run_job(job)

    first, second = endpoint.requests
    assert second.at - first.at >= 0.95
    assert result.rows_posted == 2 and result.retries == 1


def test_429_retry_after_http_date_is_honoured_and_capped(
    schema: Schema, endpoint: Endpoint
) -> None:
    """Retry-After as an HTTP-date is converted to seconds, capped at max_retry_after."""
    endpoint.script(
        "/",
        (429, {"Retry-After": formatdate(time.time() + 3600, usegmt=True)}),
        (503, {"Retry-After": "0"}),
        200,
    )
    waits: list[float] = []
    job = build_job(make_job(schema, endpoint.url + "/", numbers(schema, 2),
                             retry={"max_retry_after": "90s"}))  # fmt: skip

    run_job(job, sleep=waits.append)

    assert waits == [90.0, 0.0]
    assert len(endpoint.requests) == 3


def test_a_400_fails_the_run_with_the_body_excerpt(schema: Schema, endpoint: Endpoint) -> None:
    """With on_reject: fail, a 400 is not retried and fails the run with the body excerpt."""
    endpoint.script("/", 200, (400, {}, b'{"error": "email is invalid"}'))
    job = build_job(
        make_job(
            schema, endpoint.url + "/", numbers(schema, 6), batch={"size": 2}, on_reject="fail"
        )
    )

    with pytest.raises(RejectedError) as caught:
        run_job(job)

    assert caught.value.status == 400
    assert "email is invalid" in caught.value.body_excerpt
    assert "400 Bad Request" in str(caught.value)
    assert len(endpoint.requests) == 2  # the third batch is never sent
    assert caught.value.result is not None
    assert caught.value.result.rows_posted == 2
    assert caught.value.result.status == "failed"


def test_retries_run_out(schema: Schema, endpoint: Endpoint) -> None:
    """After retry.attempts failures the run fails, chained to the last failure."""
    endpoint.script("/", 500, 502, 504)
    job = build_job(make_job(schema, endpoint.url + "/", numbers(schema, 2)))

    with pytest.raises(RetriesExhaustedError) as caught:
        run_job(job, sleep=lambda s: None)

    assert caught.value.attempts == 3 and caught.value.status == 504
    assert "504" in str(caught.value.__cause__)
    assert len(endpoint.requests) == 3


def test_a_redirect_is_not_followed(schema: Schema, endpoint: Endpoint) -> None:
    """A 3xx fails the run naming the new location; the request is not re-sent there."""
    endpoint.script("/", (301, {"Location": endpoint.url + "/elsewhere"}))
    job = build_job(make_job(schema, endpoint.url + "/", numbers(schema, 1)))

    with pytest.raises(SinkError, match="redirects are not followed") as caught:
        run_job(job)
    assert f"redirecting to {endpoint.url}/elsewhere" in str(caught.value)
    assert caught.value.status == 301
    assert [r.path for r in endpoint.requests] == ["/"]


def test_cookies_the_endpoint_sets_are_not_sent_back(schema: Schema, endpoint: Endpoint) -> None:
    """Every request is built from the job alone: a Set-Cookie answer changes nothing."""
    endpoint.script("/", (200, {"Set-Cookie": "session=abc; Path=/"}))
    job = build_job(
        make_job(schema, endpoint.url + "/", numbers(schema, 6), batch={"size": 2}, concurrency=1)
    )

    run_job(job)

    assert len(endpoint.requests) == 3
    assert all("Cookie" not in r.headers for r in endpoint.requests)


def test_bad_sql_sends_nothing(schema: Schema, endpoint: Endpoint) -> None:
    """A query error is a SourceError with the database's message; nothing is sent."""
    job = build_job(make_job(schema, endpoint.url, "SELECT nope FROM nowhere"))

    with pytest.raises(SourceError, match='relation "nowhere" does not exist'):
        run_job(job)
    assert endpoint.requests == []


def test_duplicate_column_names_send_nothing(schema: Schema, endpoint: Endpoint) -> None:
    """Two result columns with one name are refused before anything is sent."""
    job = build_job(make_job(schema, endpoint.url, "SELECT 1 AS id, 2 AS id"))

    with pytest.raises(QueryError, match="two columns named 'id'"):
        run_job(job)
    assert endpoint.requests == []


def test_the_query_runs_read_only_with_bound_parameters(schema: Schema, endpoint: Endpoint) -> None:
    """Parameters are bound (an injection attempt is just a value) and writes are refused."""
    schema.execute("CREATE TABLE t (id int, plan text)")
    schema.execute("INSERT INTO t VALUES (1, 'pro'), (2, 'free'), (3, 'pro')")
    job = build_job(
        make_job(schema, endpoint.url, f"SELECT id FROM {schema.table('t')} WHERE plan = :plan",
                 source={"params": {"plan": "pro' OR '1'='1"}})
    )  # fmt: skip
    assert run_job(job).rows_read == 0

    job = build_job(
        make_job(schema, endpoint.url, f"SELECT id FROM {schema.table('t')} WHERE plan = :plan "
                 "ORDER BY id", source={"params": {"plan": "pro"}})
    )  # fmt: skip
    run_job(job)
    assert endpoint.rows() == [{"id": 1}, {"id": 3}]

    schema.execute("CREATE SEQUENCE s")
    writer = build_job(make_job(schema, endpoint.url, f"SELECT nextval('{schema.table('s')}')"))
    with pytest.raises(SourceError, match="read-only transaction"):
        run_job(writer)


def test_statement_timeout_stops_a_slow_query(schema: Schema, endpoint: Endpoint) -> None:
    """source.statement_timeout cancels a query that runs too long."""
    job = build_job(make_job(schema, endpoint.url, "SELECT pg_sleep(5)",
                             source={"statement_timeout": "200ms"}))  # fmt: skip

    with pytest.raises(SourceError, match="statement timeout"):
        run_job(job)
    assert endpoint.requests == []


def test_limit_and_dry_run(schema: Schema, endpoint: Endpoint) -> None:
    """--limit stops after N rows; --dry-run sends nothing and previews the requests."""
    query = numbers(schema, 50)
    headers = {"Authorization": "Bearer s3cr3t-token"}
    job = build_job(
        make_job(schema, endpoint.url, query, batch={"size": 10}, target={"headers": headers})
    )

    limited = run_job(job, limit=25)
    assert limited.rows_read == 25
    assert [row["id"] for row in endpoint.rows()] == list(range(1, 26))

    dry = run_job(job, dry_run=True, preview=2)
    assert dry.status == "dry-run" and dry.rows_read == 50 and dry.rows_posted == 0
    assert len(endpoint.requests) == 3  # only the limited run's
    assert len(dry.preview) == 2
    assert dry.preview[0].headers["Authorization"] == "***"
    assert json.loads(dry.preview[0].body)[0] == {"id": 1, "payload": "x"}


def test_an_empty_result_sends_nothing(schema: Schema, endpoint: Endpoint) -> None:
    """A query with no rows makes no request and succeeds."""
    result = run_job(build_job(make_job(schema, endpoint.url, "SELECT 1 AS id WHERE false")))

    assert result.status == "succeeded" and result.requests == 0
    assert endpoint.requests == []


def test_stop_event_ends_the_run_between_batches(schema: Schema, endpoint: Endpoint) -> None:
    """Setting the stop event during a retry back-off ends the run as interrupted at once."""
    endpoint.script("/", 200, 503)
    stop = threading.Event()
    job = build_job(make_job(schema, endpoint.url + "/", numbers(schema, 10), batch={"size": 2}))

    result = run_job(job, stop=stop, sleep=lambda seconds: stop.set())

    assert result.status == "interrupted"
    assert result.rows_posted == 2 and len(endpoint.requests) == 2


def test_a_header_the_client_refuses_is_not_echoed(endpoint: Endpoint) -> None:
    """A header value HTTP cannot carry fails once, without quoting the value."""
    from loader.sink import Sink

    job = build_job(
        {"name": "j", "source": {"url": "sqlite://", "query": "SELECT 1"},
         "target": {"url": endpoint.url}}
    )  # fmt: skip
    sink = Sink(job.target, job.redactor(), user_agent="t", content_type="application/json")
    sink._headers["X-Bad"] = "tok-SECRET\n"
    with pytest.raises(SinkError) as caught:
        sink.send(b"[]", "k")
    sink.close()
    assert "tok-SECRET" not in str(caught.value)
    assert not isinstance(caught.value, RetryableSinkError)
    assert endpoint.requests == []


def test_undecodable_response_bodies(schema: Schema, endpoint: Endpoint) -> None:
    """A broken gzip body on a 2xx still acknowledges; on a 4xx the excerpt says so."""
    endpoint.script(
        "/",
        (200, {"Content-Encoding": "gzip"}, b"junk"),
        (400, {"Content-Encoding": "gzip"}, b"junk"),
    )
    job = build_job(
        make_job(schema, endpoint.url + "/", numbers(schema, 4), batch={"size": 2},
                 on_reject="fail")
    )  # fmt: skip

    with pytest.raises(RejectedError) as caught:
        run_job(job)
    assert caught.value.body_excerpt == "(the response body could not be read)"
    assert caught.value.result is not None and caught.value.result.rows_posted == 2


def test_stop_between_batches_finishes_the_batch_in_flight(
    schema: Schema, endpoint: Endpoint
) -> None:
    """A stop set while a request is in flight lets it finish, then sends nothing more."""
    endpoint.script("/", Delay(0.5, 200))
    stop = threading.Event()
    job = build_job(make_job(schema, endpoint.url + "/", numbers(schema, 10), batch={"size": 2}))
    results = []
    worker = threading.Thread(target=lambda: results.append(run_job(job, stop=stop)))
    worker.start()
    while not endpoint.requests:
        time.sleep(0.01)
    stop.set()
    worker.join()

    (result,) = results
    assert result.status == "interrupted"
    assert result.rows_posted == 2 and len(endpoint.requests) == 1


def test_gzip_bodies_and_basic_auth(schema: Schema, endpoint: Endpoint) -> None:
    """gzip: true compresses each body (max_bytes counts it uncompressed); basic auth
    sends the credentials, masked in a dry run."""
    import base64
    import gzip

    auth = {"basic": {"username": "wk-secret", "password": ""}}
    job = build_job(
        make_job(schema, endpoint.url, numbers(schema, 300, payload="repeat('z', 50)"),
                 batch={"max_bytes": "10KB", "size": 1000},
                 target={"gzip": True, "auth": auth})
    )  # fmt: skip
    run_job(job)

    for request in endpoint.requests:
        assert request.headers["Content-Encoding"] == "gzip"
        assert len(request.body) < len(request.content) <= 10_000
        assert (
            request.headers["Authorization"] == "Basic " + base64.b64encode(b"wk-secret:").decode()
        )
        assert gzip.decompress(request.body) == request.content
    assert sorted(row["id"] for row in endpoint.rows()) == list(range(1, 301))
    preview = run_job(job, dry_run=True).preview[0]
    assert preview.headers["Authorization"] == "***"


def test_target_url_override(tmp_path: Path, schema: Schema, endpoint: Endpoint) -> None:
    """`loader run --target-url` sends to another endpoint; a bad URL is a usage error."""
    import subprocess
    import sys

    import yaml

    spec = make_job(schema, "https://api.example.com/never", numbers(schema, 3))
    path = tmp_path / "job.yml"
    path.write_text(yaml.safe_dump(spec))

    def loader(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "loader", "run", str(path), *args],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)  # fmt: skip

    assert loader("--target-url", endpoint.url + "/local").returncode == 0
    assert [r.path for r in endpoint.requests] == ["/local"]
    bad = loader("--target-url", "ftp://nope")
    assert bad.returncode == 2 and "--target-url" in bad.stderr


def test_status_overrides(schema: Schema, endpoint: Endpoint) -> None:
    """target.statuses: 409 counts as delivered, 404 as a row's rejection (dead-lettered,
    not a failed run), 503 as a failure that is not retried."""
    query = numbers(schema, 4)
    statuses = {409: "success", 404: "reject", 503: "fail"}
    spec = make_job(schema, endpoint.url + "/", query, batch={"size": 1},
                    target={"statuses": statuses})  # fmt: skip
    endpoint.script("/", (409, {}, b"exists"), 200, 404, 200)
    result = run_job(build_job(spec))
    assert (result.status, result.rows_posted, result.rows_rejected) == ("partial", 3, 1)

    endpoint.script("/", 503)
    with pytest.raises(SinkError, match="target.statuses: fail") as caught:
        run_job(build_job({**spec, "name": "other"}))
    assert not isinstance(caught.value, RetryableSinkError)
    assert [r.path for r in endpoint.requests].count("/") == 5


def test_oauth2_client_credentials(schema: Schema, endpoint: Endpoint) -> None:
    """The token is fetched once and reused; a 401 fetches a new one and the request is
    sent again once; an expired token is replaced; the secret never shows."""
    import urllib.parse

    def token(value: str, expires: int = 3600) -> tuple[int, dict[str, str], bytes]:
        body = json.dumps({"access_token": value, "token_type": "bearer", "expires_in": expires})
        return 200, {"Content-Type": "application/json"}, body.encode()

    endpoint.script("/token", token("tok-1"), token("tok-2"))
    endpoint.script("/api", 200, 401, 200, 200)
    oauth2 = {"token_url": endpoint.url + "/token", "client_id": "cid",
              "client_secret": "csecret-123", "scope": "import"}  # fmt: skip
    spec = make_job(schema, endpoint.url + "/api", numbers(schema, 3), batch={"size": 1},
                    target={"auth": {"oauth2": oauth2}})  # fmt: skip
    result = run_job(build_job(spec))

    assert result.rows_posted == 3
    api = [r.headers["Authorization"] for r in endpoint.requests if r.path == "/api"]
    assert api == ["Bearer tok-1", "Bearer tok-1", "Bearer tok-2", "Bearer tok-2"]
    grants = [urllib.parse.parse_qs(r.body.decode()) for r in endpoint.requests
              if r.path == "/token"]  # fmt: skip
    assert len(grants) == 2
    assert grants[0] == {"grant_type": ["client_credentials"], "client_id": ["cid"],
                         "client_secret": ["csecret-123"], "scope": ["import"]}  # fmt: skip
    assert "csecret-123" not in repr(build_job(spec))

    # A token that expires at once (within the 30 s margin) is fetched for each request.
    endpoint.script("/token", *(token(f"short-{i}", expires=30) for i in range(3)))
    run_job(build_job({**spec, "name": "short"}))
    assert sum(r.path == "/token" for r in endpoint.requests) == 5


def test_rate_limit_is_kept(schema: Schema, endpoint: Endpoint) -> None:
    """rate_limit: 20/s sends 30 requests at 20 per second: never more than 10% faster
    (and not much slower, allowing for a loaded machine)."""
    spec = make_job(schema, endpoint.url + "/paced", numbers(schema, 30), batch={"size": 1},
                    target={"rate_limit": "20/s"}, concurrency=4)  # fmt: skip
    run_job(build_job(spec))

    arrivals = sorted(r.at for r in endpoint.requests)
    rate = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    assert len(arrivals) == 30
    assert 15 <= rate <= 22, rate


def test_rows_refused_inside_a_2xx_answer_are_dead_lettered(
    schema: Schema, endpoint: Endpoint, tmp_path: Path
) -> None:
    """An API that answers 200 with per-row errors (target.item_errors): those rows are
    dead-lettered, the others count as delivered; nothing is dropped silently."""
    from loader import open_state

    answer = {"accepted": 2, "result": {"errors": [{"index": 1, "message": "bad email"}]}}
    endpoint.script("/", (200, {"Content-Type": "application/json"}, json.dumps(answer).encode()))
    spec = make_job(schema, endpoint.url + "/", numbers(schema, 3),
                    target={"item_errors": {"path": "result.errors"}})  # fmt: skip
    state = open_state(f"sqlite:///{tmp_path / 's.db'}")
    result = run_job(build_job(spec), state=state)

    assert (result.status, result.rows_posted, result.rows_rejected) == ("partial", 2, 1)
    (letter,) = state.dead_letters("test_job")
    assert json.loads(letter.row)["id"] == 2 and "bad email" in letter.excerpt
    state.close()
    assert len(endpoint.requests) == 1  # no bisection needed: the API said which row
