"""A 2xx answer's word on each row (item_results, item_errors), the settings that shape
rows (body, lines), and the notice of a request split after a size refusal."""

from __future__ import annotations

import json
import logging
from decimal import Decimal
from typing import Any

import pytest

from loader.answers import AnswerError, ItemError, at, item_errors, item_results
from loader.delivery import Counters
from loader.encoding import RowEncoder
from loader.errors import RejectedError
from loader.splits import Splits, reason
from loader.target import ItemErrors, ItemResults
from tests.unit.test_jobfile import MINIMAL, parse, problems

ES = ItemResults(path="items", status="*.status")
KINTO = ItemResults(path="responses", status="status")


def text(entry: Any) -> str:
    return json.dumps(entry)


def test_a_star_segment_matches_any_one_key() -> None:
    """``*`` matches whichever key an entry has (Elasticsearch's index/create/delete)."""
    assert at({"create": {"status": 409}}, ["*", "status"]) == 409
    assert at({"a": {"x": 1}, "b": {"status": 5}}, ["*", "status"]) == 5
    assert at({"items": {"n": 1}}, ["items", "missing"]) is None
    assert at([1], ["*"]) is None


def test_results_sort_rows_into_delivered_retried_and_refused() -> None:
    """2xx is delivered; 429 and 5xx come back to retry; any other status is refused."""
    answer = {"items": [{"index": {"status": s}} for s in (201, 200, 429, 400, 503, 409)]}
    missed = item_results(answer, ES, 6, {}, text)
    assert [(e.index, e.status, e.retry) for e in missed] == [
        (2, 429, True), (3, 400, False), (4, 503, True), (5, 409, False)]  # fmt: skip
    assert json.loads(missed[1].message) == {"index": {"status": 400}}


def test_target_statuses_apply_to_each_result() -> None:
    """target.statuses: 409 success (already there), 422 retry, 400 fail the run."""
    answer = {"responses": [{"status": 409}, {"status": 422}, {"status": 201}]}
    missed = item_results(answer, KINTO, 3, {409: "success", 422: "retry"}, text)
    assert missed == [ItemError(1, 422, '{"status": 422}', retry=True)]
    with pytest.raises(AnswerError, match=r"row 1 of the request answered 422 \(target"):
        item_results(answer, KINTO, 3, {422: "fail"}, text)


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        ({"responses": [{"status": 201}]}, "has 1 entries for the 2 rows sent"),
        ({"responses": {"0": {"status": 201}}}, "no list at responses"),
        ({}, "no list at responses"),
        ({"responses": [{"status": 201}, {"status": "201"}]}, "entry 1 at responses has no"),
        ({"responses": [{"status": 201}, {"status": True}]}, "entry 1 at responses has no"),
    ],
)
def test_results_that_cannot_be_matched_to_the_rows_are_an_error(answer: Any, says: str) -> None:
    """Another length, no list, a status that is not an integer: which rows were
    delivered is unknown, so the answer is an error naming the setting to check."""
    with pytest.raises(AnswerError, match=says) as caught:
        item_results(answer, KINTO, 2, {}, text)
    assert "target.item_results" in caught.value.describe("POST x", 200)


@pytest.mark.parametrize("index", [2, -1, "0", 1.0, True, None])
def test_an_item_error_index_outside_the_rows_is_an_error(index: Any) -> None:
    """item_errors: an index that is not an integer position among the rows sent."""
    with pytest.raises(AnswerError, match="not a position among the 2 rows sent"):
        item_errors({"errors": [{"index": index}]}, ItemErrors(path="errors"), 2, 200, text)


def test_item_errors_without_a_list_refuse_nothing() -> None:
    """An API that leaves the errors out when there are none delivered every row."""
    assert item_errors({"ok": True}, ItemErrors(path="errors"), 2, 200, text) == []


def test_lines_and_body_shape_a_row() -> None:
    """lines: the named values, one line each; body: one value; exact numbers, JSON
    text embedded as it is."""
    lines = RowEncoder(["id", "action", "doc"], shape=["action", "doc"], json_columns=[1])
    row = lines.encode([1, '{"index":\n{"_id":"1"}}', {"n": 2**70, "p": Decimal("1.50")}])
    assert row == b'{"index": {"_id":"1"}}\n{"n":1180591620717411303424,"p":1.50}'
    assert RowEncoder(["id", "doc"], shape=["doc"]).encode([1, [1, None]]) == b"[1,null]"


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("  lines: [a, b]\n", "set format: ndjson"),
        ("  format: ndjson\n  lines: [a]\n  body: b\n", "keep one"),
        ("  body: b\n  omit: [id]\n", "remove per_row, omit and row_id"),
        ("  body: b\n  row_id: rid\n", "remove per_row, omit and row_id"),
        ("  item_results: {path: items, status: status}\n  item_errors: {path: e}\n",
         "remove per_row and item_errors"),
    ],
)  # fmt: skip
def test_shaped_rows_and_results_refuse_what_cannot_go_together(target: str, says: str) -> None:
    """The job file names the conflict and the fix."""
    assert says in problems(MINIMAL + target)[0]


def test_shape_is_the_body_or_the_lines() -> None:
    """Target.shape names the columns a row is sent as."""
    assert parse(MINIMAL + "  body: request\n").target.shape == ("request",)
    assert parse(MINIMAL + "  format: ndjson\n  lines: [a, b]\n").target.shape == ("a", "b")


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ('{"ok": false, "errors": ["Too many rows, maximum allowed is 100"]}',
         "Too many rows, maximum allowed is 100"),
        ('{"error": {"type": "x", "reason": "too big"}, "status": 400}', "too big"),
        ('{"code": 400, "error": "Invalid parameters", "message": "limited to 25"}',
         "limited to 25"),
        ('{"code": 400, "message": "Number of requests is limited to 25"}',
         "Number of requests is limited to 25"),
        ("<html>413</html>", "<html>413</html>"),
        ("", "(empty body)"),
    ],
)  # fmt: skip
def test_the_reason_is_read_from_the_error_body(body: str, said: str) -> None:
    """Datasette's errors, Elasticsearch's error.reason, Kinto's message, or the text."""
    assert reason(body) == said


def refusal(status: int) -> RejectedError:
    return RejectedError("refused", url="https://api.example.com/x", status=status,
                         body_excerpt='{"errors": ["Too many rows"]}')  # fmt: skip


def test_a_split_is_said_once_and_the_smallest_size_kept(caplog: pytest.LogCaptureFixture) -> None:
    """400 and 413 refusals teach a size (the smallest kept), said once; others do not."""
    counters = Counters()
    splits = Splits(counters)
    with caplog.at_level(logging.WARNING, logger="loader"):
        splits.learned(150, 75, refusal(422))
        assert splits.size is None
        splits.learned(150, 75, refusal(400))
        splits.learned(150, 38, refusal(413))
        splits.split_ahead()
    assert (splits.size, counters.splits, counters.split_size) == (38, 3, 38)
    assert [getattr(r, "fields", {}).get("hint") for r in caplog.records] == [
        "api.example.com refused 150-row requests (400: Too many rows); split to 75: set "
        "batch.size to at most 75"
    ]


def test_a_row_listed_twice_in_item_errors_is_refused_once() -> None:
    """Two errors for one row make one rejection (one dead letter, one count)."""
    answer = {"errors": [{"index": 1, "why": "a"}, {"index": 1, "why": "b"}, {"index": 0}]}
    refused = item_errors(answer, ItemErrors(path="errors"), 2, 200, text)
    assert [error.index for error in refused] == [1, 0]
    assert '"a"' in refused[0].message and '"b"' not in refused[0].message
