"""The CLI's own behaviour that needs no database: validate, usage, exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from loader import __version__, defaults
from loader.cli import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_version() -> None:
    """--version prints the version."""
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_validate_the_example_jobs() -> None:
    """validate accepts a directory and checks every job file in it."""
    result = runner.invoke(app, ["validate", str(ROOT / "jobs")])

    assert result.exit_code == 0, result.output
    assert "example.yml: ok" in result.output


def test_validate_reports_every_problem_and_exits_2(tmp_path: Path) -> None:
    """A bad job file gives file:line problems and the config exit code."""
    (tmp_path / "good.yml").write_text(
        "source: {url: 'sqlite://', query: SELECT 1}\ntarget: {url: 'http://h/'}\n"
    )
    (tmp_path / "bad.yml").write_text(
        "source: {url: 'sqlite://', query: SELECT 1}\ntarget: {url: 'http://h/', methd: PUT}\n"
    )

    result = runner.invoke(app, ["validate", str(tmp_path)])

    assert result.exit_code == defaults.EXIT_CONFIG
    assert "bad.yml:2: target.methd: unknown key; did you mean 'method'?" in result.stderr
    assert "good.yml: ok" in result.stdout
    assert "1 of 2 job files have problems" in result.stderr


def test_validate_an_empty_directory_is_an_error(tmp_path: Path) -> None:
    """Nothing to validate is a usage error, not a silent success."""
    result = runner.invoke(app, ["validate", str(tmp_path)])
    assert result.exit_code == defaults.EXIT_CONFIG and "no job files" in result.stderr


def test_run_a_missing_file_exits_2(tmp_path: Path) -> None:
    """A job file that does not exist is a config error naming the file."""
    result = runner.invoke(app, ["run", str(tmp_path / "nope.yml")])

    assert result.exit_code == defaults.EXIT_CONFIG
    assert "nope.yml: cannot read the job file" in result.stderr


def test_usage_errors_exit_2() -> None:
    """Unknown options and missing arguments use the same code as bad job files."""
    assert runner.invoke(app, ["run"]).exit_code == defaults.EXIT_CONFIG
    assert runner.invoke(app, ["run", "x.yml", "--limit", "0"]).exit_code == defaults.EXIT_CONFIG


def test_reset_and_purge_ask_first_and_a_no_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --yes, `state reset` and `deadletter purge` ask; a "no" exits with the config
    code and leaves the state store alone, a "yes" goes ahead."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(defaults.STATE_URL_ENV, f"sqlite:///{tmp_path / 'state.db'}")
    job = tmp_path / "j.yml"
    job.write_text("source: {url: 'sqlite://', query: SELECT 1}\ntarget: {url: 'http://h/'}\n")

    for command, refusal, done in (
        (["state", "reset"], "not reset", "checkpoint was already empty"),
        (["deadletter", "purge"], "nothing deleted", "0 dead letters deleted"),
    ):
        refused = runner.invoke(app, [*command, str(job)], input="n\n")
        assert refused.exit_code == defaults.EXIT_CONFIG and refusal in refused.output
        assert done not in refused.output
        accepted = runner.invoke(app, [*command, str(job)], input="y\n")
        assert accepted.exit_code == 0 and done in accepted.output, accepted.output
