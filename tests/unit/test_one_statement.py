"""source.query holds one statement: ';' in text, names and comments, and trailing ones,
separate nothing; anything after a ';' outside them is refused before connecting."""

from __future__ import annotations

import pytest

from loader import JobConfigError, build_job


def job(query: str) -> None:
    build_job({"name": "one", "source": {"url": "sqlite:///app.db", "query": query},
               "target": {"url": "http://127.0.0.1:9/"}})  # fmt: skip


@pytest.mark.parametrize(
    "query",
    [
        "SELECT 1",
        "SELECT 1;",
        "SELECT 1 ;;  \n",
        "SELECT 1; -- done",
        "SELECT 1; /* done */ ;",
        "SELECT ';' AS a",
        "SELECT 'it''s; fine'",
        'SELECT 1 AS "a;b"',
        "SELECT `a;b` FROM t",
        "SELECT $$a;b$$",
        "SELECT $tag$ a; $$ b; $tag$",
        "SELECT 1 -- ; DELETE FROM t\n",
        "SELECT /* ; DELETE FROM t */ 1",
        "SELECT x::text FROM t",
    ],
)
def test_one_statement_is_accepted(query: str) -> None:
    """Semicolons in strings, quoted names, dollar quotes and comments, and trailing
    semicolons and comments, leave one statement."""
    job(query)


@pytest.mark.parametrize(
    ("query", "second"),
    [
        ("SELECT 1; SELECT 2", "SELECT 2"),
        ("SELECT 1\n;\nDROP TABLE victim", "DROP TABLE victim"),
        ("SELECT 1 AS a) s; COMMIT; DELETE FROM victim WHERE x = 1; SELECT * FROM (SELECT 1",
         "COMMIT; DELETE FROM victim WHERE x = ..."),
        ("SELECT ';'; /* c */ DELETE FROM t", "DELETE FROM t"),
        ("SELECT $$;$$; DELETE FROM t -- ;", "DELETE FROM t -- ;"),
    ],
)  # fmt: skip
def test_more_than_one_statement_is_refused(query: str, second: str) -> None:
    """A second statement is refused with a message naming source.query, the start of
    the second statement, and the fix."""
    with pytest.raises(JobConfigError) as caught:
        job(query)
    (problem,) = caught.value.problems
    assert problem == (
        f"<job>: source.query: holds more than one statement (the second starts {second!r}); "
        "loader runs exactly one SELECT, read-only, and nothing was run: remove the other "
        "statements (a trailing ';' is fine)"
    )
