"""Job names resolved to job files, and global options moved before the command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pytest
import typer

from loader import resolve_job_file
from loader.cli import app, hoist_global_options
from loader.errors import JobConfigError


@pytest.fixture
def jobs(tmp_path: Path) -> Path:
    """A jobs directory: ``a.yml`` named ``orders``, ``orders.yml`` named ``billing``."""
    (tmp_path / "a.yml").write_text("name: orders\n")
    (tmp_path / "orders.yml").write_text("name: billing\n")
    (tmp_path / "broken.yml").write_text("name: [unclosed\n")
    return tmp_path


def test_a_file_stem_wins_over_a_name_inside_another_file(jobs: Path) -> None:
    """``orders`` is ``orders.yml`` (its stem), not the file whose ``name:`` is orders."""
    assert resolve_job_file("orders", jobs) == jobs / "orders.yml"
    assert resolve_job_file("billing", jobs) == jobs / "orders.yml"


def test_a_path_is_taken_as_given(jobs: Path) -> None:
    """Anything that looks like a path is not looked up (its errors stay the file's)."""
    assert resolve_job_file("elsewhere/orders.yml", jobs) == Path("elsewhere/orders.yml")
    assert resolve_job_file("missing.yaml", jobs) == Path("missing.yaml")


def test_a_name_in_two_files_names_both(jobs: Path) -> None:
    """A name declared by two files is an error naming both."""
    (jobs / "b.yml").write_text("name: twin\n")
    (jobs / "c.yml").write_text("name: twin\n")

    with pytest.raises(JobConfigError) as caught:
        resolve_job_file("twin", jobs)

    assert f"{jobs / 'b.yml'} and {jobs / 'c.yml'}" in caught.value.problems[0]


def test_an_unknown_name_lists_the_jobs_found(jobs: Path) -> None:
    """An unknown name lists the jobs in the directory and says how to fix it."""
    with pytest.raises(JobConfigError) as caught:
        resolve_job_file("nope", jobs)

    assert "jobs found: billing, broken, orders" in caught.value.problems[0]
    assert "LOADER_JOBS_DIR" in caught.value.problems[0]


def test_global_options_after_the_command_move_before_it() -> None:
    """``-v`` and ``--log-format`` (both spellings) after the command move before it;
    other options and arguments keep their order."""
    command = typer.main.get_command(app)
    argv = ["state", "show", "orders", "-v", "--log-format", "json", "--env-file", "x"]

    assert hoist_global_options(argv, command) == [
        "-v", "--log-format", "json", "state", "show", "orders", "--env-file", "x",
    ]  # fmt: skip
    assert hoist_global_options(["run", "--log-format=text", "j"], command) == [
        "--log-format=text", "run", "j",
    ]  # fmt: skip


def test_quiet_and_log_level_after_the_command_move_before_it() -> None:
    """``-q``, ``--quiet`` and ``--log-level LEVEL`` (both spellings) are global options."""
    command = typer.main.get_command(app)
    argv = ["run", "orders", "-q", "--log-level", "debug", "--quiet", "--log-level=info"]

    assert hoist_global_options(argv, command) == [
        "-q", "--log-level", "debug", "--quiet", "--log-level=info", "run", "orders",
    ]  # fmt: skip


def test_nothing_after_a_double_dash_and_no_option_a_command_defines_moves() -> None:
    """Options after ``--`` stay, and a command's own ``-v`` is left to it."""
    own = typer.Typer()

    @own.callback()
    def _root(verbose: Annotated[bool, typer.Option("-v")] = False) -> None: ...

    @own.command()
    def talk(
        words: list[str], verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False
    ) -> None: ...

    @own.command()
    def other() -> None: ...

    command = typer.main.get_command(own)

    assert hoist_global_options(["talk", "-v", "--", "-v"], command) == ["talk", "-v", "--", "-v"]
    assert hoist_global_options(["other", "-v"], command) == ["-v", "other"]
