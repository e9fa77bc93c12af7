"""Reading a 2xx answer's word on each row of a batch.

Some APIs answer 2xx for a whole batch and say inside the answer which rows they did not
take: a list of errors that carry each row's position (``target.item_errors``), or one
result per row, in order (``target.item_results``: Elasticsearch's ``_bulk`` ``items``,
Kinto's ``/v1/batch`` ``responses``). An answer that cannot be matched to the rows sent
raises :class:`AnswerError`: which rows it delivered is unknown, so none count.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from loader.target import ItemErrors, ItemResults

#: One entry of an answer as text for messages and dead letters (secrets masked).
EntryText = Callable[[Any], str]


@dataclass(frozen=True)
class ItemError:
    """A row a 2xx answer did not deliver: its position in the request, the status, the
    error (or result entry), and whether to send it again (a 429 or 5xx entry)."""

    index: int
    status: int
    message: str
    retry: bool = False


class AnswerError(Exception):
    """A 2xx answer whose word on each row cannot be read (``key`` names the setting to
    check), or a row's result that ``target.statuses`` says fails the run (``status``)."""

    def __init__(self, problem: str, key: str | None = None, status: int | None = None) -> None:
        super().__init__(problem)
        self.problem, self.key, self.status = problem, key, status

    def describe(self, what: str, answered: int) -> str:
        """The message, for the request ``what`` that answered ``answered``."""
        if self.key is None:
            return f"{what}: {self.problem}"
        return (
            f"{what} answered {answered} but {self.problem}, so which rows it delivered is "
            f"unknown; the batch does not count as delivered (check {self.key})"
        )


def at(found: Any, parts: list[str]) -> Any:
    """The value at a dotted path's ``parts`` in decoded JSON (``None`` if absent); a
    ``*`` part matches any one key of an object (the first that leads to a value)."""
    for index, part in enumerate(parts):
        if part == "*" and isinstance(found, dict):
            values = (at(value, parts[index + 1 :]) for value in found.values())
            return next((value for value in values if value is not None), None)
        found = found.get(part) if isinstance(found, dict) else None
    return found


def item_errors(
    answer: Any, config: ItemErrors, rows: int, status: int, text: EntryText
) -> list[ItemError]:
    """The rows listed at ``config.path`` (none when there is no such list). An error
    whose index is not a position among the ``rows`` sent raises :class:`AnswerError`;
    a row listed twice is refused once, with its first error."""
    found = at(answer, config.path.split("."))
    if not isinstance(found, list):
        return []
    refused, seen = [], set()
    for item in found:
        index = item.get(config.index) if isinstance(item, dict) else None
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < rows:
            raise AnswerError(
                f"an error at {config.path} has {config.index} {text(index)[:40]}, which is "
                f"not a position among the {rows} rows sent (0 to {rows - 1})",
                "target.item_errors",
            )
        if index not in seen:
            seen.add(index)
            refused.append(ItemError(index, status, text(item)))
    return refused


def item_results(
    answer: Any,
    config: ItemResults,
    rows: int,
    statuses: Mapping[int, str],
    text: EntryText,
) -> list[ItemError]:
    """The rows whose result at ``config.path`` is not a success: 2xx (or ``success`` in
    ``statuses``) is delivered; 429 and 5xx (or ``retry``) come back with ``retry``; any
    other status is a rejection. Raises :class:`AnswerError` when there is no list,
    its length is not ``rows``, an entry has no integer status, or ``statuses`` says
    ``fail``."""
    found = at(answer, config.path.split("."))
    if not isinstance(found, list):
        raise AnswerError(f"it has no list at {config.path}", "target.item_results.path")
    if len(found) != rows:
        raise AnswerError(
            f"its list at {config.path} has {len(found)} entries for the {rows} rows sent",
            "target.item_results.path",
        )
    missed = []
    for index, entry in enumerate(found):
        status = at(entry, config.status.split("."))
        if isinstance(status, bool) or not isinstance(status, int):
            raise AnswerError(
                f"entry {index} at {config.path} has no status at {config.status}: "
                f"{text(entry)[:200]}",
                "target.item_results.status",
            )
        outcome = statuses.get(status)
        if outcome == "success" or (outcome is None and 200 <= status < 300):
            continue
        if outcome == "fail":
            raise AnswerError(
                f"row {index} of the request answered {status} (target.statuses: fail): "
                f"{text(entry)}",
                status=status,
            )
        retry = outcome == "retry" or (outcome is None and (status == 429 or status >= 500))
        missed.append(ItemError(index, status, text(entry), retry))
    return missed
