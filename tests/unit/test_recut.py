"""Re-cutting the batches a crashed run left in flight, before cutting new ones."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from loader.batching import Batch, Chunk, batches
from loader.encoding import framing
from loader.recut import recut
from loader.state import Cut, encode_position

FRAME = framing("json")


def _chunks(positions: list[int], size: int) -> list[Chunk]:
    """Rows ``b'<n>'`` at positions ``(n,)``, fetched ``size`` at a time."""
    out = []
    for at in range(0, len(positions), size):
        part = positions[at : at + size]
        out.append(Chunk([str(p).encode() for p in part], lambda i, part=part: (part[i],)))
    return out


def _cut(after: int | None, last: int, rows: int) -> Cut:
    start = encode_position((after,)) if after is not None else "start"
    return Cut(0, "job", "run", f"scope:{start}", start, encode_position((last,)), rows, "k", 0.0)


def _cutter(max_rows: int) -> Callable[[Iterable[Chunk]], Iterator[Batch]]:
    def cut(chunks: Iterable[Chunk]) -> Iterator[Batch]:
        return batches(chunks, FRAME, max_rows=max_rows, max_bytes=1 << 20)

    return cut


def _rows(batch: Batch) -> list[int]:
    return [int(row) for row in batch.rows]


def test_recorded_cuts_come_first_at_their_boundaries_then_the_rest() -> None:
    """Rows 1..10 cut 4 + 2 (a partial batch) before the crash, 5 rows added since: the
    re-cut gives 1-4 and 5-6 again with their cuts, then 7..15 cut as usual."""
    pending = [_cut(None, 4, 4), _cut(4, 6, 2)]
    made = list(recut(_chunks(list(range(1, 16)), 3), pending, _cutter(4)))

    assert [_rows(b) for b, _ in made] == [
        [1, 2, 3, 4], [5, 6], [7, 8, 9, 10], [11, 12, 13, 14], [15]
    ]  # fmt: skip
    assert [cut for _, cut in made] == [pending[0], pending[1], None, None, None]
    assert [b.seq for b, _ in made] == [1, 2, 3, 4, 5]
    assert [b.first_row for b, _ in made] == [1, 5, 7, 11, 15]
    assert made[1][0].position == (6,)


def test_a_row_gone_from_a_cut_leaves_the_others_whole() -> None:
    """Row 3 was updated (its cursor moved past everything): the first cut is re-cut
    without it and ends at its recorded last position; the second is unchanged."""
    pending = [_cut(None, 4, 4), _cut(4, 8, 4)]
    made = list(recut(_chunks([1, 2, 4, 5, 6, 7, 8, 9, 30], 4), pending, _cutter(4)))

    assert [_rows(b) for b, _ in made] == [[1, 2, 4], [5, 6, 7, 8], [9, 30]]
    assert [cut for _, cut in made] == [pending[0], pending[1], None]
    assert made[0][0].position == (4,)


def test_a_cut_whose_rows_are_all_gone_sends_nothing() -> None:
    """A cut with no rows left gives no batch; the next one is still re-cut."""
    pending = [_cut(None, 2, 2), _cut(2, 4, 2)]
    made = list(recut(_chunks([3, 4, 5], 2), pending, _cutter(2)))

    assert [_rows(b) for b, _ in made] == [[3, 4], [5]]
    assert [cut for _, cut in made] == [pending[1], None]


def test_a_cut_that_grew_past_a_batch_is_cut_anew() -> None:
    """Rows inserted inside a cut's range make it more than one batch: those batches
    come without the cut (new keys)."""
    pending = [_cut(None, 10, 2)]
    made = list(recut(_chunks([1, 2, 3, 10, 11], 5), pending, _cutter(2)))

    assert [_rows(b) for b, _ in made] == [[1, 2], [3, 10], [11]]
    assert [cut for _, cut in made] == [None, None, None]


def test_positions_that_no_longer_compare_are_cut_as_usual() -> None:
    """A recorded position of another type than the rows' (the cursor column's type
    changed) stops the re-cut: every row is still cut, in order."""
    pending = [Cut(0, "job", "run", "s", "start", encode_position(("x",)), 2, "k", 0.0)]
    made = list(recut(_chunks([1, 2, 3], 2), pending, _cutter(2)))

    assert [_rows(b) for b, _ in made] == [[1, 2], [3]]
    assert [cut for _, cut in made] == [None, None]


def test_without_pending_cuts_the_batches_are_the_cutters() -> None:
    """No cut recorded: the cutter's batches, unchanged."""
    made = list(recut(_chunks([1, 2, 3], 2), [], _cutter(2)))

    assert [(_rows(b), b.seq, cut) for b, cut in made] == [([1, 2], 1, None), ([3], 2, None)]


def test_re_cut_rows_keep_their_omitted_columns() -> None:
    """A chunk split between a re-cut batch and the next keeps each row's omitted
    columns with the row (a rejected row is kept whole)."""
    chunk = Chunk([b"1", b"2", b"3"], lambda i: (i + 1,), omitted=lambda i: b"o%d" % (i + 1))
    made = list(recut([chunk], [_cut(None, 1, 1)], _cutter(5)))

    assert [_rows(b) for b, _ in made] == [[1], [2, 3]]
    omitted = [[b.omitted(i) for i in range(len(b.rows))] for b, _ in made if b.omitted]
    assert omitted == [[b"o1"], [b"o2", b"o3"]]


def test_a_stream_that_ends_inside_a_cut_checkpoints_at_its_last_row() -> None:
    """A --limit (or the table's end) stops the rows inside a recorded cut: the batch
    ends at its own last row, not at the cut's, so the rows after it are sent later."""
    pending = [_cut(10, 20, 10)]
    made = list(recut(_chunks([11, 12, 13], 3), pending, _cutter(10)))

    assert [_rows(b) for b, _ in made] == [[11, 12, 13]]
    assert made[0][0].position == (13,)


def test_text_positions_checkpoint_at_the_batch_own_last_row() -> None:
    """Under a collation where 'c' sorts between 'B' and 'D', Python's order differs:
    a re-cut of ('', 'D'] must not claim 'c' and 'D', which it did not hold."""
    rows = ["A", "B", "c", "D", "E"]
    chunks = [Chunk([r.encode() for r in rows], lambda i: (rows[i],))]
    pending = [Cut(0, "job", "run", "scope:start", "start", encode_position(("D",)), 4,
                   "k", 0.0)]  # fmt: skip
    made = list(recut(chunks, pending, _cutter(10)))

    held = [row for batch, _ in made for row in batch.rows]
    assert held == [r.encode() for r in rows]
    first = made[0][0]
    assert first.position == (first.rows[-1].decode(),)
