"""The source.diff section: keys, deletes, the max_deletes breaker, and its errors."""

from __future__ import annotations

import pytest

from loader import Job, JobConfigError, parse_job

BASE = """\
source:
  url: postgresql://app@db/app
  query: SELECT user_id, plan FROM customer_stats
{extra}
target:
  url: https://api.example.com/import
"""


def parse(extra: str) -> Job:
    return parse_job(BASE.format(extra=extra), filename="jobs/x.yml", env={})


def problems(extra: str) -> list[str]:
    with pytest.raises(JobConfigError) as caught:
        parse(extra)
    return caught.value.problems


def test_issue_example_parses_with_defaults() -> None:
    """The issue's diff section loads: one key, a DELETE per key, 10% by default."""
    job = parse(
        "  diff:\n    key: user_id\n    deletes:\n"
        "      url: https://api.example.com/v1/users/{user_id}\n      method: delete\n"
    )
    diff = job.source.diff
    assert diff is not None and diff.key == ("user_id",)
    assert diff.deletes is not None and diff.deletes.method == "DELETE"
    assert diff.max_deletes == "10%" and diff.delete_limit(1000) == 100


def test_composite_key_and_count_limit() -> None:
    """A list of key columns and a plain count for max_deletes are accepted."""
    diff = parse("  diff:\n    key: [account_id, user_id]\n    max_deletes: 25\n").source.diff
    assert diff is not None and diff.key == ("account_id", "user_id")
    assert diff.delete_limit(10) == 25


def test_diff_and_cursor_are_exclusive() -> None:
    """source.diff with source.cursor is refused, naming both and the line."""
    found = problems("  diff: {key: user_id}\n  cursor: {column: updated_at, key: user_id}\n")
    assert len(found) == 1
    assert found[0].startswith("jobs/x.yml:1: source:") or "jobs/x.yml:" in found[0]
    assert "source.diff and source.cursor are exclusive" in found[0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("  diff: {}\n", "source.diff.key"),
        ("  diff: {key: []}\n", "non-empty list"),
        ('  diff: {key: "User Id"}\n', "not a plain column name"),
        ("  diff: {key: [a, a]}\n", "named twice"),
        ("  diff: {key: id, max_deletes: lots}\n", "expected a count (100) or a percentage"),
        ("  diff: {key: id, max_deletes: 150%}\n", "at most 100%"),
        ("  diff: {key: id, deletes: {url: 'ftp://x/{id}'}}\n", "http:// or https://"),
        ("  diff: {key: id, deletes: {url: 'https://x/{email}'}}\n", "{email}, which is not a key"),
        ("  diff: {key: id, keys: id}\n", "keys"),
    ],
)
def test_bad_diff_sections_name_the_key(extra: str, message: str) -> None:
    """Each mistake in source.diff is reported with the file, line and key path."""
    found = problems(extra)
    assert any(message in problem and "jobs/x.yml:" in problem for problem in found), found


def test_a_null_key_the_database_returns_stops_the_run() -> None:
    """A NULL key among the rows the database compared (the key check, run before, saw
    none: the data changed since) stops the run, naming the key column."""
    from loader.diff import Differ
    from loader.diffconfig import Diff
    from loader.errors import QueryError

    differ = Differ(Diff(key="user_id"), store=None, job="j")  # type: ignore[arg-type]
    differ._indexes = [1]
    assert differ._compared([(b"{}", 7)])[1](0) == "[7]"
    with pytest.raises(QueryError, match=r"NULL key \(user_id\)"):
        differ._compared([(b"{}", 7), (b"{}", None)])
