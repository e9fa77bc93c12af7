"""Dead letters as kept and as sent again: a rejected row whole, and its request rebuilt.

A run keeps each rejected row as it was read (before ``target.omit``), with the URL it
went to (secrets masked), so ``deadletter list`` can name the row and a replay can send
it as the job now says: the current ``omit``, URL template and envelope. Letters kept
before loader stored whole rows hold only the body as it was sent; they are replayed
as before when that is enough, and refused with the reason otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from loader.batching import Batch
from loader.delivery import Rejected
from loader.encoding import UrlFiller, dumps, loads
from loader.errors import EncodingError
from loader.job import Job
from loader.logs import event
from loader.redact import Redactor, is_secret_name
from loader.state import DeadLetter, NewDeadLetter

log = logging.getLogger("loader")


def kept_letters(
    group: Sequence[tuple[Batch, Rejected]], columns: Sequence[str], redactor: Redactor, url: str,
    placeholders: Sequence[str] = (),
) -> list[NewDeadLetter]:  # fmt: skip
    """The dead letters of ``group``'s rejected rows: each row as sent, its rejection,
    the row as read (its omitted columns put back, in the query's ``columns`` order;
    ``None`` when they cannot be encoded) and the URL it went to (the batch's, else
    ``url``), secrets masked.

    An omitted column with a secret's name (``api_token``, ``password``...) is not kept,
    unless the URL template needs it (``placeholders``) to send the row again."""
    columns = [name for name in columns if name in placeholders or not is_secret_name(name)]
    letters = []
    for batch, rejected in group:
        for row, error in rejected:
            full: bytes | None = row
            if batch.omitted is not None:
                try:
                    full = _whole(row, batch.omitted(_index(batch.rows, row)), columns)
                except EncodingError as exc:
                    # Kept as the body only (as older letters are), never lost for it.
                    event(
                        log,
                        "row.kept_partial",
                        logging.WARNING,
                        reason="kept without its omitted columns",
                        error=exc,
                    )
                    full = None
            letters.append(NewDeadLetter(row, error.status, error.body_excerpt, full,
                                         redactor.url(batch.url or url)))  # fmt: skip
    return letters


def _index(rows: list[bytes], row: bytes) -> int:
    """Where ``row`` (one of ``rows`` itself, as delivery hands it back) sits."""
    for index, candidate in enumerate(rows):
        if candidate is row:
            return index
    return rows.index(row)


def _whole(row: bytes, omitted: bytes, columns: Sequence[str]) -> bytes:
    """``row`` with its ``omitted`` columns put back, in ``columns`` order; fields the
    row has beside its columns (``target.row_id``) follow them."""
    sent, left_out = loads(row), loads(omitted)
    left_out = {name: value for name, value in left_out.items() if name in columns}
    merged = {name: left_out[name] if name in left_out else sent[name]
              for name in columns if name in left_out or name in sent}  # fmt: skip
    merged.update((name, value) for name, value in sent.items() if name not in merged)
    return dumps(merged)


class Unreplayable(Exception):
    """A letter that cannot be sent as the job now stands; the message says why."""


def resend(job: Job, letter: DeadLetter, filler: UrlFiller | None) -> tuple[bytes, str | None]:
    """The row to send for ``letter`` and its URL (``None``: the target's), under the
    job's current ``omit`` and URL template (``filler``, for per-row requests).

    Raises :class:`Unreplayable` for a letter kept before loader stored whole rows that
    lacks a column the URL needs."""
    omit = job.target.omit
    if job.target.shape:
        return letter.row, None  # sent as the columns of target.body or target.lines
    if letter.full_row is not None:
        values = loads(letter.full_row)
        row = dumps({name: value for name, value in values.items() if name not in omit})
        return row, _url(filler, values, letter)
    # Kept the old way: the body as it was sent, without the columns omitted then.
    values = loads(letter.row)
    row = letter.row
    if any(name in values for name in omit):
        row = dumps({name: value for name, value in values.items() if name not in omit})
    if filler is not None:
        missing = [name for name in filler.names if name not in values]
        if missing:
            raise Unreplayable(
                f"dead letter #{letter.id} was kept by an older loader as the request "
                f"body only, which lacks {', '.join(missing)}, so the URL "
                f"{job.target.url} cannot be rebuilt for it; send that row again with a "
                "run (--full-refresh) or remove the letter (`loader deadletter purge`)"
            )
    return row, _url(filler, values, letter)


def _url(filler: UrlFiller | None, values: dict[str, Any], letter: DeadLetter) -> str | None:
    if filler is None:
        return None
    return filler.fill([values.get(name) for name in filler.names], letter.id)


def row_key(job: Job, letter: DeadLetter) -> str:
    """What names ``letter``'s row in ``deadletter list``: the cursor's column and key
    (else the URL's placeholders, else the first column) as ``name=value``."""
    values = loads(letter.full_row if letter.full_row is not None else letter.row)
    if not isinstance(values, dict) or not values:
        return "?"
    values = masked(values)
    cursor = job.source.cursor
    names: list[str] = []
    if cursor is not None:
        names = [cursor.column] + ([cursor.key] if cursor.key else [])
    elif job.target.placeholders:
        names = list(job.target.placeholders)
    names = [name for name in names if name in values] or [next(iter(values))]
    return " ".join(f"{name}={dumps(values[name]).decode()}" for name in names)


def masked(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with the value of every field named like a secret masked."""
    return {name: "***" if is_secret_name(name) else value for name, value in values.items()}


def shown(letter: DeadLetter, redactor: Redactor) -> str:
    """``letter``'s row as ``deadletter list`` prints it: as read when it was kept so,
    fields named like secrets and the job's secrets masked."""
    row = letter.full_row if letter.full_row is not None else letter.row
    values = loads(row)
    text = dumps(masked(values)).decode() if isinstance(values, dict) else row.decode(
        "utf-8", "replace")  # fmt: skip
    return redactor.text(text)
