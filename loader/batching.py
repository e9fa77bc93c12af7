"""Encoded rows to request bodies, bounded by a row count and a byte size. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from loader.encoding import Framing
from loader.errors import EncodingError


@dataclass(frozen=True)
class Batch:
    """One request body and the encoded rows in it.

    ``first_row`` is the 1-based number of its first row in the run; ``position`` is the
    marker that came with its last row (the cursor position, for checkpoints).
    """

    seq: int
    first_row: int
    rows: list[bytes]
    body: bytes
    position: Any = None


def batches(
    rows: Iterable[tuple[bytes, Any]], framing: Framing, *, max_rows: int, max_bytes: int
) -> Iterator[Batch]:
    """Group ``(encoded row, marker)`` pairs into bodies of at most ``max_rows`` rows and
    ``max_bytes`` bytes.

    Rows keep their order. A row that cannot fit in a body on its own raises
    :class:`EncodingError` naming its number; the rows before it were already yielded.
    """
    pending: list[bytes] = []
    marker: Any = None
    size = framing.overhead()
    row_number = 0
    seq = 0
    sep = len(framing.separator)
    for row, next_marker in rows:
        row_number += 1
        added = len(row) + (sep if pending else 0)
        if pending and (len(pending) >= max_rows or size + added > max_bytes):
            seq += 1
            yield Batch(seq, row_number - len(pending), pending, framing.body(pending), marker)
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
        marker = next_marker
        size += added
    if pending:
        seq += 1
        first = row_number - len(pending) + 1
        yield Batch(seq, first, pending, framing.body(pending), marker)


def _first_field(row: bytes) -> str:
    """The row's first ``"key":value`` pair, to name it in errors without dumping it."""
    head = row[:80].split(b",", 1)[0]
    return head.decode("utf-8", "replace")
