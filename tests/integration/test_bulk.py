"""Bulk APIs that answer 2xx with one result per row (Kinto's ``/v1/batch``, the
``_bulk`` API of Elasticsearch), answers that cannot be matched to the rows sent, and
whole requests refused for their size, split, and said. Against the real PostgreSQL,
a real Kinto, and stand-ins that enforce the APIs' documented contracts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loader import build_job, open_state, run_job
from loader.delivery import Counters, Delivery, framing_for, open_sink
from loader.errors import RejectedError, RetriesExhaustedError, SinkError
from tests.integration.conftest import Schema, make_job
from tests.support.contracts import DatasetteInsert, ElasticsearchBulk
from tests.support.httpd import Handler, LoopbackServer
from tests.support.kinto import PASSWORD, USER, Kinto
from tests.support.server import Endpoint

ROOT = Path(__file__).resolve().parents[2]
JOBS = ROOT / "jobs"
PRICE_RULES = {
    "type": "object",
    "required": ["name", "price"],
    "properties": {"name": {"type": "string"}, "price": {"type": "integer", "minimum": 0}},
}


def products(schema: Schema, count: int, *, negative_every: int = 0) -> None:
    """``count`` products; with ``negative_every``, every such one has a negative price."""
    negative = f"CASE WHEN g % {negative_every} = 0 THEN -g ELSE g END" if negative_every else "g"
    schema.execute(
        f"CREATE TABLE products AS SELECT g AS id, 'p' || g AS name, {negative} AS price, "
        f"g AS updated_at FROM generate_series(1, {count}) AS g"
    )


def loader_cli(cwd: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loader", *args], cwd=cwd,
        env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def kinto_env(schema: Schema, kinto: Kinto, state: str) -> dict[str, str]:
    return {"DATABASE_URL": schema.scoped_url, "KINTO_URL": kinto.url, "KINTO_USER": USER,
            "KINTO_PASSWORD": PASSWORD, "LOADER_STATE_URL": state}  # fmt: skip


def test_kinto_batch_recipe_accounts_for_every_row(
    tmp_path: Path, schema: Schema, kinto: Kinto, isolated_state: str
) -> None:
    """jobs/kinto_batch.yml against a real Kinto: records its schema refuses (a 400
    inside the batch's 200) are dead letters with their response as the reason, every
    other record is stored, and the run exits 6, not 0 with every row counted."""
    products(schema, 130, negative_every=11)
    collection = kinto.collection("shop", "products", PRICE_RULES)
    env = kinto_env(schema, kinto, isolated_state)

    ran = loader_cli(tmp_path, "run", str(JOBS / "kinto_batch.yml"), env=env)

    refused = [n for n in range(1, 131) if n % 11 == 0]
    assert ran.returncode == 6, ran.stdout + ran.stderr
    stored = {record["id"] for record in kinto.records(collection)}
    assert stored == {f"product-{n}" for n in range(1, 131) if n not in refused}
    state = open_state(isolated_state)
    letters = state.dead_letters("kinto_batch")
    assert sorted(json.loads(letter.row)["path"].rsplit("-", 1)[1] for letter in letters) == sorted(
        map(str, refused))  # fmt: skip
    assert all('"status": 400' in letter.excerpt for letter in letters)
    assert all(letter.status == 400 for letter in letters)
    (run,) = state.history("kinto_batch")
    assert (run.rows_posted, run.rows_rejected, run.splits) == (130 - len(refused), len(refused), 0)
    state.close()

    # Once the schema allows negative prices, a replay stores the refused records.
    kinto.call("PUT", collection, {"data": {"schema": {**PRICE_RULES, "properties": {
        "name": {"type": "string"}, "price": {"type": "integer"}}}}})  # fmt: skip
    replayed = loader_cli(tmp_path, "deadletter", "replay", str(JOBS / "kinto_batch.yml"), env=env)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert len(kinto.records(collection)) == 130


def test_kinto_batch_over_its_limit_is_split_and_said_once(
    tmp_path: Path, schema: Schema, kinto: Kinto, isolated_state: str
) -> None:
    """batch.size 60 against Kinto's 25 requests a batch: the first batch is refused
    whole and split; the run says once which size worked, splits the later batches
    before sending them, stores every record, and counts the splits."""
    import yaml

    products(schema, 300)
    collection = kinto.collection("shop", "products", PRICE_RULES)
    recipe = yaml.safe_load((JOBS / "kinto_batch.yml").read_text())
    recipe["batch"]["size"] = 60
    recipe["concurrency"] = 1  # the later batches are read after the first one split
    path = tmp_path / "kinto.yml"
    path.write_text(yaml.safe_dump(recipe))

    ran = loader_cli(tmp_path, "run", str(path), env=kinto_env(schema, kinto, isolated_state))

    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert len(kinto.records(collection)) == 300
    notice = "refused 60-row requests (400: Number of requests is limited to 25)"
    assert ran.stderr.count(notice) == 1, ran.stderr
    assert "; split to 15: set batch.size to at most 15" in ran.stderr
    assert "split                   5 batches, to 15 rows" in ran.stdout, ran.stdout
    state = open_state(isolated_state)
    (run,) = state.history("kinto_batch")
    # 60 -> 30 + 30 (refused) -> 15 x 4, then four batches of four 15s: no refusal.
    assert (run.splits, run.requests) == (5, 3 + 4 + 4 * 4)
    state.close()


@pytest.fixture
def elastic() -> Iterator[ElasticsearchBulk]:
    server = ElasticsearchBulk(api_key="es-key-0123456789", busy_once={"7", "8", "40"})
    server.start()
    yield server
    server.stop()


def test_elasticsearch_bulk_recipe_accounts_for_every_row(
    tmp_path: Path, schema: Schema, elastic: ElasticsearchBulk, isolated_state: str
) -> None:
    """jobs/elasticsearch_bulk.yml against the _bulk contract: each row goes as its
    action and document lines; items answered 429 are sent again (those rows only),
    documents the mapping refuses (400) are dead letters, every other one is stored,
    and the run exits 6."""
    schema.execute(
        "CREATE TABLE products AS SELECT g AS id, 'p' || g AS name, "
        "CASE WHEN g % 13 = 0 THEN to_jsonb('n/a'::text) ELSE to_jsonb(g) END AS price, "
        "g AS updated_at FROM generate_series(1, 120) AS g"
    )
    env = {"DATABASE_URL": schema.scoped_url, "ELASTICSEARCH_URL": elastic.url,
           "ELASTIC_API_KEY": "es-key-0123456789", "LOADER_STATE_URL": isolated_state}  # fmt: skip

    ran = loader_cli(tmp_path, "run", str(JOBS / "elasticsearch_bulk.yml"), env=env)

    refused = {str(n) for n in range(1, 121) if n % 13 == 0}
    assert ran.returncode == 6, ran.stdout + ran.stderr
    assert set(elastic.indices["products"]) == {str(n) for n in range(1, 121)} - refused
    assert elastic.items[429] == 3 and elastic.rejected == 0
    first, retried = elastic.exchanges[0], elastic.exchanges[1]
    assert (first.items, retried.items) == (120, 3)  # only the rows answered 429
    assert first.headers["idempotency-key"] != retried.headers["idempotency-key"]
    state = open_state(isolated_state)
    letters = state.dead_letters("elasticsearch_bulk")
    assert {json.loads(letter.row.split(b"\n")[0])["index"]["_id"] for letter in letters} == refused
    assert all("mapper_parsing_exception" in letter.excerpt for letter in letters)
    (run,) = state.history("elasticsearch_bulk")
    assert (run.rows_posted, run.rows_rejected) == (120 - len(refused), len(refused))
    state.close()

    # Once the mapping takes text prices, a replay sends each letter's two lines again.
    elastic.numeric = ()
    replayed = loader_cli(tmp_path, "deadletter", "replay", str(JOBS / "elasticsearch_bulk.yml"),
                          env=env)  # fmt: skip
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert set(elastic.indices["products"]) == {str(n) for n in range(1, 121)}
    assert elastic.indices["products"]["13"] == {"name": "p13", "price": "n/a"}


def test_a_row_answered_429_again_keeps_its_key(schema: Schema, endpoint: Endpoint) -> None:
    """Rows whose results say 429 or 5xx are sent again on their own, under a key of
    their own that stays the same while the same rows are retried; the run fails when
    the retries run out, and the batch does not count as delivered."""
    products(schema, 4)
    answer = {"items": [{"index": {"status": s}} for s in (201, 429, 201, 503)]}
    again = {"items": [{"index": {"status": 429}}, {"index": {"status": 503}}]}
    endpoint.script("/", *[(200, {}, json.dumps(a).encode()) for a in (answer, again, again)])
    spec = make_job(schema, endpoint.url + "/", f"SELECT id, name FROM {schema.table('products')}",
                    target={"item_results": {"path": "items", "status": "*.status"}})  # fmt: skip

    with pytest.raises(RetriesExhaustedError):
        run_job(build_job(spec))

    bodies = [[row["id"] for row in request.rows()] for request in endpoint.requests]
    keys = [request.headers["Idempotency-Key"] for request in endpoint.requests]
    assert bodies == [[1, 2, 3, 4], [2, 4], [2, 4]]
    assert keys[1] == keys[2] != keys[0]


@pytest.mark.parametrize(
    ("target", "answer", "says"),
    [
        ({"item_results": {"path": "items", "status": "status"}},
         {"items": [{"status": 201}] * 2}, "has 2 entries for the 3 rows sent"),
        ({"item_results": {"path": "items", "status": "status"}},
         {"took": 1}, "no list at items"),
        ({"item_results": {"path": "items", "status": "status"}},
         {"items": [{"status": 201}, {"ok": True}, {"status": 201}]},
         "entry 1 at items has no status"),
        ({"item_results": {"path": "items", "status": "status"}}, "not json", "is not JSON"),
        ({"item_errors": {"path": "errors"}}, {"errors": [{"index": 3}]}, "not a position"),
        ({"item_errors": {"path": "errors"}}, {"errors": [{"index": "1"}]}, "not a position"),
        ({"item_errors": {"path": "errors"}}, {"errors": [{"message": "?"}]}, "not a position"),
    ],
    ids=["short", "no-list", "no-status", "not-json", "index-out-of-range", "index-string",
         "no-index"],
)  # fmt: skip
def test_an_answer_that_cannot_be_matched_to_the_rows_fails_the_run(
    schema: Schema, endpoint: Endpoint, tmp_path: Path, target: dict[str, Any], answer: Any,
    says: str,
) -> None:  # fmt: skip
    """A 2xx answer whose per-row word cannot be matched to the rows sent fails the run
    (a delivery failure, exit 4) and the checkpoint stays before that batch."""
    products(schema, 6)
    body = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
    endpoint.script("/", (200, {}, json.dumps({"items": [{"status": 201}] * 3}).encode()
                          if "item_results" in target else b"{}"), (200, {}, body))  # fmt: skip
    spec = make_job(schema, endpoint.url + "/", f"SELECT * FROM {schema.table('products')}",
                    target=target, batch={"size": 3},
                    source={"cursor": {"column": "updated_at"}})  # fmt: skip
    state = open_state(f"sqlite:///{tmp_path / 's.db'}")

    with pytest.raises(SinkError, match=says) as caught:
        run_job(build_job(spec), state=state)

    assert caught.value.result is not None and caught.value.result.rows_posted == 3
    checkpoint = state.checkpoint("test_job")
    assert checkpoint is not None and checkpoint.position == (3,)
    state.close()


@pytest.mark.parametrize("limit", ["rows", "bytes"])
def test_datasette_refusing_big_requests_is_split_once_and_said(
    schema: Schema, tmp_path: Path, isolated_state: str, limit: str,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """Datasette refuses more than 100 rows a request (400), a proxy refuses big bodies
    (413): with batch.size 150 the first batch is split, the run says so once with the
    reason and the size that worked, and later batches are split before sending."""
    products(schema, 600)
    server = (DatasetteInsert("dstok_0123") if limit == "rows"
              else DatasetteInsert("dstok_0123", max_rows=1000, max_body=3500))  # fmt: skip
    server.start()
    try:
        spec = make_job(schema, server.url + "/shop/products/-/insert",
                        f"SELECT id, name, price FROM {schema.table('products')} ORDER BY id",
                        target={"envelope": "rows",
                                "headers": {"Authorization": "Bearer dstok_0123"}},
                        batch={"size": 150})  # fmt: skip
        with caplog.at_level("WARNING", logger="loader"):
            result = run_job(build_job(spec), state=open_state(isolated_state))
    finally:
        server.stop()

    assert result.status == "succeeded" and [row["id"] for row in server.rows] == list(
        range(1, 601)
    )
    notices = [getattr(r, "fields", {}).get("hint") for r in caplog.records
               if getattr(r, "event", None) == "batch.split"]  # fmt: skip
    host = server.url.removeprefix("http://")
    reason = ("400: Too many rows, maximum allowed is 100" if limit == "rows"
              else "413: <html><h1>413 Request Entity Too Large</h1></html>")  # fmt: skip
    assert notices == [f"{host} refused 150-row requests ({reason}); split to 75: set "
                       "batch.size to at most 75"]  # fmt: skip
    assert (result.splits, result.split_size, server.requests) == (4, 75, 3 + 3 * 2)
    (run,) = open_state(isolated_state).history("test_job")
    assert run.splits == 4


def test_the_bulk_stand_ins_refuse_what_the_apis_refuse(elastic: ElasticsearchBulk) -> None:
    """The _bulk stand-in refuses a body without its final newline, another Content-Type,
    a malformed action line and a wrong API key; the Datasette one refuses 101 rows."""
    import httpx

    ndjson = {"Content-Type": "application/x-ndjson", "Authorization": "ApiKey es-key-0123456789"}
    pair = b'{"create": {"_index": "i", "_id": "1"}}\n{"price": 1}\n'

    def bulk(body: bytes, **headers: str) -> httpx.Response:
        return httpx.post(elastic.url + "/_bulk", content=body, headers={**ndjson, **headers})

    assert bulk(pair[:-1]).json()["error"]["reason"].startswith("The bulk request must be")
    assert bulk(pair, **{"Content-Type": "application/json"}).status_code == 406
    assert bulk(b'["index"]\n{}\n').status_code == 400
    assert bulk(pair, Authorization="ApiKey nope").status_code == 401
    first, again = bulk(pair).json(), bulk(pair + b'{"index": {"_index": "i"}}\n{"price": "x"}\n')
    assert first == {
        "took": 1,
        "errors": False,
        "items": [
            {
                "create": {
                    "_index": "i",
                    "_id": "1",
                    "status": 201,
                    "result": "created",
                    "_version": 1,
                }
            }
        ],
    }
    assert [next(iter(i.values()))["status"] for i in again.json()["items"]] == [409, 400]

    datasette = DatasetteInsert("tok")
    datasette.start()
    try:
        rows = {"rows": [{"n": n} for n in range(101)]}
        answer = httpx.post(datasette.url + "/db/t/-/insert", json=rows,
                            headers={"Authorization": "Bearer tok"})  # fmt: skip
    finally:
        datasette.stop()
    assert (answer.status_code, answer.json()) == (
        400, {"ok": False, "errors": ["Too many rows, maximum allowed is 100"]})  # fmt: skip


class CutShort(LoopbackServer):
    """Answers the first request 200 with half of its promised body, then closes the
    connection; answers the next ones in full, one result per row."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[str] = []

    def respond(self, handler: Handler, body: bytes) -> None:
        self.keys.append(handler.headers["Idempotency-Key"])
        rows = json.loads(body)
        answer = json.dumps({"items": [{"status": 201}] * len(rows)}).encode()
        if len(self.keys) > 1:
            handler.reply(200, {"Content-Type": "application/json"}, answer)
            return
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(answer)))
        handler.end_headers()
        handler.wfile.write(answer[: len(answer) // 2])
        handler.close_connection = True


def test_per_row_results_cut_short_are_asked_again(schema: Schema) -> None:
    """A 200 whose per-row results end early says nothing of the rows: the request is
    sent again with the same key, as after a lost connection, and then counts."""
    products(schema, 3)
    with CutShort() as server:
        spec = make_job(schema, server.url + "/", f"SELECT id FROM {schema.table('products')}",
                        target={"item_results": {"path": "items", "status": "status"}})  # fmt: skip
        result = run_job(build_job(spec))

    assert (result.status, result.rows_posted, result.retries) == ("succeeded", 3, 1)
    assert len(server.keys) == 2 and server.keys[0] == server.keys[1]


def test_a_refused_result_fails_the_run_under_on_reject_fail(
    schema: Schema, endpoint: Endpoint
) -> None:
    """on_reject: fail: a 4xx result inside a 200 stops the run, naming the row and
    quoting its result, and nothing counts as delivered."""
    products(schema, 2)
    answer = {"responses": [{"status": 201}, {"status": 400, "body": {"message": "bad price"}}]}
    endpoint.script("/", (200, {}, json.dumps(answer).encode()))
    spec = make_job(schema, endpoint.url + "/", f"SELECT id FROM {schema.table('products')}",
                    target={"item_results": {"path": "responses", "status": "status"}},
                    on_reject="fail")  # fmt: skip

    with pytest.raises(RejectedError, match="refused row 1 of the request: .*bad price") as caught:
        run_job(build_job(spec))
    assert caught.value.result is not None and caught.value.result.rows_posted == 0


def _keys_of(schema: Schema, learn_first: bool) -> list[str]:
    """The Idempotency-Keys a Datasette that takes 4 rows a request received for batch
    "B" (8 rows, its second row already stored); after a first batch taught the size,
    or not."""
    server = DatasetteInsert("dstok_0123", max_rows=4, unique="id")
    server.rows.append({"id": 102})
    server.start()
    try:
        job = build_job(make_job(schema, server.url + "/shop/products/-/insert", "SELECT 1",
                                 target={"envelope": "rows", "headers": {
                                     "Authorization": "Bearer dstok_0123"}},
                                 max_rejected=10))  # fmt: skip
        frame, redactor = framing_for(job), job.redactor()
        with open_sink(job, redactor, frame, None) as sink:
            delivery = Delivery(job, sink, frame, Counters(), redactor, None)
            stop = threading.Event()
            if learn_first:
                rows = [json.dumps({"id": n}).encode() for n in range(1, 9)]
                assert delivery.send(rows, frame.body(rows), "A", stop) == []
                assert delivery.splits.size == 4
            before = len(server.exchanges)
            rows = [json.dumps({"id": n}).encode() for n in range(101, 109)]
            rejected = delivery.send(rows, frame.body(rows), "B", stop)
    finally:
        server.stop()
    assert [json.loads(row) for row, _ in rejected] == [{"id": 102}]
    assert sorted(row["id"] for row in server.rows if row["id"] > 100) == [
        101, 102, 103, 104, 105, 106, 107, 108]  # fmt: skip
    return [exchange.headers["idempotency-key"] for exchange in server.exchanges[before:]]


def test_a_batch_split_up_front_keeps_the_keys_bisection_gives(schema: Schema) -> None:
    """A batch split before sending (the run learned the endpoint takes 4 rows) whose
    part holds a refused row is bisected on under the keys a batch bisected from the
    start gets: a later run re-sending it, which has not learned the size, reuses them."""
    ahead = _keys_of(schema, learn_first=True)
    fresh = _keys_of(schema, learn_first=False)

    # The parts 0-3, 0-1, 0, 1, 2-3 and 4-7; bisection from the start sends the whole first.
    assert len(ahead) == len(set(ahead)) == 6
    assert fresh[1:] == ahead and fresh[0] not in ahead
