"""``--help`` reads as plain usage: the CLI library's version range keeps metavar
artefacts (``<bool>``, ``<path>``, ``{JOB}``) out of it."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from loader.cli import app

runner = CliRunner()

#: What typer 0.27 and later print in place of plain metavars.
ARTEFACTS = re.compile(r"<bool>|<path>|<int|<str>|<list\[|\{[A-Z_]+\}")


@pytest.mark.parametrize(
    ("args", "usage"),
    [
        ([], "Usage: loader [OPTIONS] COMMAND [ARGS]..."),
        (["run"], "Usage: loader run [OPTIONS] JOB"),
        (["clock"], "Usage: loader clock [OPTIONS] [PATHS]..."),
        (["history"], "Usage: loader history [OPTIONS] JOB"),
    ],
)
def test_help_has_plain_usage_and_no_metavar_artefacts(args: list[str], usage: str) -> None:
    """`loader [CMD] --help` shows plain usage and options without `<bool>`-like artefacts."""
    result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "100"})

    assert result.exit_code == 0, result.output
    assert usage in result.output
    assert ARTEFACTS.findall(result.output) == []
