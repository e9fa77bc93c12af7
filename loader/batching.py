"""Encoded rows to request bodies, bounded by a row count and a byte size. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from loader.encoding import Framing
from loader.errors import EncodingError


@dataclass(frozen=True)
class Batch:
    """One request body. ``first_row`` is the 1-based number of its first row in the run."""

    seq: int
    first_row: int
    rows: int
    body: bytes


def batches(
    rows: Iterable[bytes], framing: Framing, *, max_rows: int, max_bytes: int
) -> Iterator[Batch]:
    """Group encoded rows into bodies of at most ``max_rows`` rows and ``max_bytes`` bytes.

    Rows keep their order. A row that cannot fit in a body on its own raises
    :class:`EncodingError` naming its number; the rows before it were already yielded.
    """
    pending: list[bytes] = []
    size = framing.overhead()
    row_number = 0
    seq = 0
    sep = len(framing.separator)
    for row in rows:
        row_number += 1
        added = len(row) + (sep if pending else 0)
        if pending and (len(pending) >= max_rows or size + added > max_bytes):
            seq += 1
            yield _flush(seq, row_number - len(pending), pending, framing)
            pending = []
            size = framing.overhead()
            added = len(row)
        if size + added > max_bytes:
            raise EncodingError(
                f"row {row_number} ({_first_field(row)}...) is "
                f"{len(row) + framing.overhead():,} bytes as a request, "
                f"more than batch.max_bytes ({max_bytes:,} bytes); raise batch.max_bytes "
                "or select fewer or smaller columns"
            )
        pending.append(row)
        size += added
    if pending:
        seq += 1
        yield _flush(seq, row_number - len(pending) + 1, pending, framing)


def _flush(seq: int, first_row: int, rows: list[bytes], framing: Framing) -> Batch:
    body = framing.prefix + framing.separator.join(rows) + framing.suffix
    return Batch(seq=seq, first_row=first_row, rows=len(rows), body=body)


def _first_field(row: bytes) -> str:
    """The row's first ``"key":value`` pair, to name it in errors without dumping it."""
    head = row[:80].split(b",", 1)[0]
    return head.decode("utf-8", "replace")
