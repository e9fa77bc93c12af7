"""Dead letters kept whole and rebuilt for replay (:mod:`loader.letters`), and the
omitted columns carried beside the encoded rows (:func:`loader.rows.encoded_chunks`)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest

from loader import build_job
from loader.batching import Batch, Chunk, batches, singles
from loader.delivery import Counters
from loader.encoding import UrlFiller, framing
from loader.errors import RejectedError
from loader.job import Job
from loader.letters import Unreplayable, kept_letters, resend, row_key
from loader.redact import Redactor
from loader.rows import encoded_chunks
from loader.source import RowStream
from loader.state import DeadLetter


def job(**target: Any) -> Job:
    source: dict[str, Any] = {"url": "sqlite:///x.db", "query": "SELECT 1"}
    if target.pop("cursor", False):
        source["cursor"] = {"column": "updated_at", "key": "id"}
    return build_job({"name": "j", "source": source,
                      "target": {"url": "http://api.test/items", **target}})  # fmt: skip


def letter(row: bytes, full_row: bytes | None = None, id: int = 1) -> DeadLetter:
    return DeadLetter(id, "j", "r", row, 400, "no", 1, 0.0, 0.0, full_row, None)


def rejection() -> RejectedError:
    return RejectedError("no", url="u", status=422, body_excerpt="price below 0")


def test_a_rejected_row_is_kept_with_its_omitted_columns_in_column_order() -> None:
    """The row as read is the row sent plus its omitted columns, in the query's column
    order, found by identity even when two rows are sent alike; the URL is masked."""
    rows = [bytes(bytearray(b'{"name":"a"}')) for _ in range(2)]  # equal, not the same
    batch = Batch(1, 1, rows, b"", omitted=[b'{"id":1}', b'{"id":2}'].__getitem__)
    kept = kept_letters([(batch, [(rows[1], rejection())])], ("id", "name"), Redactor(),
                        "http://api.test/items?token=s3cret")  # fmt: skip
    (one,) = kept
    assert (one.row, one.full_row, one.status, one.excerpt) == (
        b'{"name":"a"}', b'{"id":2,"name":"a"}', 422, "price below 0"
    )  # fmt: skip
    assert one.url == "http://api.test/items?token=***"


def test_a_row_id_stays_in_the_row_kept_and_replayed() -> None:
    """A field the row carries beside its columns (target.row_id) is kept after them
    and sent again on replay, under the current omit."""
    row = b'{"name":"a","rid":"0f"}'
    batch = Batch(1, 1, [row], b"", omitted=[b'{"id":1}'].__getitem__)
    (one,) = kept_letters([(batch, [(row, rejection())])], ("id", "name"), Redactor(), "u")
    assert one.full_row == b'{"id":1,"name":"a","rid":"0f"}'
    sent, _ = resend(job(omit=["id"]), letter(row, one.full_row), None)
    assert sent == b'{"name":"a","rid":"0f"}'


def test_without_omit_the_row_sent_is_the_row_kept() -> None:
    """No omit: nothing is carried beside the rows, and the row sent is kept as is."""
    row = b'{"id":1}'
    (one,) = kept_letters([(Batch(1, 1, [row], b"", url="http://a/1"), [(row, rejection())])],
                          ("id",), Redactor(), "http://a/{id}")  # fmt: skip
    assert (one.full_row, one.url) == (row, "http://a/1")


def test_batches_and_singles_carry_the_omitted_columns_of_their_rows() -> None:
    """Each batch (cut within and across chunks) holds its own rows' omitted columns."""
    chunks = [Chunk([b"1", b"2", b"3"], omitted=[b"a", b"b", b"c"].__getitem__),
              Chunk([b"4"], omitted=[b"d"].__getitem__)]  # fmt: skip

    def omitted(batch: Batch) -> list[bytes]:
        assert batch.omitted is not None
        return [batch.omitted(i) for i in range(len(batch.rows))]

    cut = list(batches(chunks, framing("json"), max_rows=2, max_bytes=1000))
    assert [(b.rows, omitted(b)) for b in cut] == [([b"1", b"2"], [b"a", b"b"]),
                                                  ([b"3", b"4"], [b"c", b"d"])]  # fmt: skip
    one = list(singles(chunks, framing("json", single=True), max_bytes=1000))
    assert [omitted(b) for b in one] == [[b"a"], [b"b"], [b"c"], [b"d"]]
    assert [b.omitted for b in batches([Chunk([b"1"])], framing("json"), max_rows=2,
                                       max_bytes=1000)] == [None]  # fmt: skip


def test_the_generic_path_encodes_omitted_columns_with_the_row_types() -> None:
    """Omitted columns are encoded as the row's would be, when asked for: a MySQL UTC
    datetime with Z and JSON text embedded, from the fetched row."""
    j = job(omit=["at", "doc"])
    raw = [(1, datetime(2024, 5, 1, 12), '{"k": [1]}')]
    stream = RowStream(("id", "at", "doc"), iter([raw]), utc_datetimes=False,
                       utc_columns=(1,), json_columns=(2,))  # fmt: skip

    (chunk,) = encoded_chunks(j, stream, Counters(), None)

    assert chunk.rows == [b'{"id":1}']
    assert chunk.omitted is not None
    assert json.loads(chunk.omitted(0)) == {"at": "2024-05-01T12:00:00Z", "doc": {"k": [1]}}


def test_the_fast_path_hands_over_the_omitted_object_the_database_wrote() -> None:
    """On the PostgreSQL fast path the omitted columns' JSON follows the row's JSON, the
    cursor values and the URL's values."""
    j = job(url="http://api.test/items/{name}", per_row=True, omit=["id"])
    raw = [(b'{"name":"p1","price":3}', "p1", b'{"id": 7}')]
    stream = RowStream(("id", "name", "price"), iter([raw]), utc_datetimes=True,
                       json_rows=True, value_indexes=(1,), omitted_index=2)  # fmt: skip

    (chunk,) = encoded_chunks(j, stream, Counters(), None)

    assert chunk.omitted is not None
    assert (chunk.rows, chunk.urls, chunk.omitted(0)) == (
        [b'{"name":"p1","price":3}'], ["http://api.test/items/p1"], b'{"id": 7}'
    )  # fmt: skip


def test_replay_applies_the_current_omit_and_url_template_to_the_whole_row() -> None:
    """A whole row is sent without the columns omit names now, to the URL the current
    template makes of it."""
    j = job(url="http://api.test/v2/{name}", per_row=True, method="PUT", omit=["id", "name"])
    filler = UrlFiller(j.target.url, j.target.placeholders)
    whole = letter(b'{"price":1}', b'{"id":2,"name":"a b","price":1.50}')

    assert resend(j, whole, filler) == (b'{"price":1.50}', "http://api.test/v2/a%20b")


def test_an_old_letter_replays_its_body_unless_its_url_cannot_be_rebuilt() -> None:
    """A letter kept as the body only is sent as it was (less the columns omit names
    now); without a column the URL needs it is refused, saying why and what to do."""
    j = job(url="http://api.test/{name}", per_row=True, method="PUT", omit=["secret"])
    filler = UrlFiller(j.target.url, j.target.placeholders)
    assert resend(j, letter(b'{"name":"a","price":1}'), filler) == (
        b'{"name":"a","price":1}', "http://api.test/a"
    )  # fmt: skip
    assert resend(j, letter(b'{"name":"a","secret":1}'), filler)[0] == b'{"name":"a"}'
    with pytest.raises(Unreplayable, match=r"#3 .* lacks name, .* purge"):
        resend(j, letter(b'{"price":1}', id=3), filler)


def test_a_letter_is_named_by_its_cursor_key_else_its_url_values_else_its_first_column() -> None:
    """``deadletter list`` names each row by what identifies it in the job."""
    whole = letter(b"{}", b'{"id":7,"name":"a","updated_at":"2024-05-01T00:00:00Z"}')
    assert row_key(job(cursor=True), whole) == 'updated_at="2024-05-01T00:00:00Z" id=7'
    per_row = job(url="http://api.test/{name}", per_row=True)
    assert row_key(per_row, whole) == 'name="a"'
    assert row_key(job(), whole) == "id=7"
    assert row_key(job(), letter(b'{"x":1}')) == "x=1"
