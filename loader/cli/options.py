"""What the commands share: option types, loading a job file, and turning loader's
errors into a message on stderr and the documented exit code (:mod:`loader.defaults`)."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, TextIO

import typer

from loader import defaults
from loader.cli.output import print_summary
from loader.errors import (
    CursorOrderError,
    EncodingError,
    JobConfigError,
    JobLockedError,
    LoaderError,
    SinkError,
    SourceError,
    StateError,
)
from loader.logs import configure_logging
from loader.redact import Redactor
from loader.units import parse_duration

if TYPE_CHECKING:
    from loader.job import Job


def _existing_env_file(path: Path) -> Path:
    """``--env-file``: the default ``.env`` may be absent; a file named on the command
    line must exist (a typo would otherwise drop every variable in it silently)."""
    if path != Path(defaults.ENV_FILE) and not path.is_file():
        raise typer.BadParameter(f"{path}: no such file")
    return path


EnvFile = Annotated[
    Path,
    typer.Option(
        "--env-file",
        help="Read variables from this file; the environment wins.",
        callback=_existing_env_file,
    ),
]
JobFile = Annotated[
    Path,
    typer.Argument(
        metavar="JOB",
        help=f"The job file (YAML), or a job's name in the jobs directory "
        f"(${defaults.JOBS_DIR_ENV}, default {defaults.JOBS_DIR}/).",
    ),
]
JobPaths = Annotated[
    list[Path] | None,
    typer.Argument(help=f"Job files or directories (default: {defaults.JOBS_DIR}/)."),
]
Json = Annotated[bool, typer.Option("--json", help="One JSON document on stdout, for machines.")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]

#: The default of every ``--env-file``.
ENV_FILE = Path(defaults.ENV_FILE)

_log_format = "auto"
_log_level: int | None = None


def set_log_format(value: str) -> None:
    """Remember ``--log-format`` for the commands that log to stdout."""
    global _log_format
    _log_format = value


def set_log_level(value: int | None) -> None:
    """Remember the level ``--log-level`` or ``-q`` chose (``None``: neither given)."""
    global _log_level
    _log_level = value


def log_to(level: int, stream: TextIO) -> None:
    """Send log records at ``level`` or above to ``stream``, in the chosen format."""
    configure_logging(level, stream, _log_format)


def log_progress_to_stdout() -> None:
    """The long-running commands (clock, worker) log their progress to stdout, at
    info unless ``--log-level`` or ``-q`` chose another level."""
    log_to(logging.INFO if _log_level is None else _log_level, sys.stdout)


def job_roots(paths: list[Path] | None) -> list[Path]:
    """The given job files and directories, else the jobs directory (``LOADER_JOBS_DIR``,
    else ``jobs/``)."""
    return list(paths or [Path(os.environ.get(defaults.JOBS_DIR_ENV) or defaults.JOBS_DIR)])


def resolve(job_file: Path, env_file: Path) -> Path:
    """The file ``job_file`` names: a path, or a job's name in the jobs directory."""
    # The job model (pydantic, YAML) loads with the first job file: not for `--help`.
    from loader.jobfile import environment, resolve_job_file

    env = environment(env_file)
    return resolve_job_file(job_file, env.get(defaults.JOBS_DIR_ENV, defaults.JOBS_DIR))


def load(job_file: Path, env_file: Path) -> Job:
    """The job in ``job_file`` (a path or a job's name), its variables from the
    environment over ``env_file``."""
    from loader.jobfile import environment, load_job

    return load_job(resolve(job_file, env_file), env=environment(env_file))


def duration(option: str, text: str) -> float:
    """``text`` (``20s``) in seconds; a :class:`JobConfigError` naming ``option`` if bad."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise JobConfigError([f"{option}: {exc}"]) from exc


@contextmanager
def exit_codes(redactor: Redactor) -> Iterator[None]:
    """Turn loader's errors into a message on stderr and the documented exit code."""
    try:
        yield
    except typer.Exit:
        raise
    except JobConfigError as exc:
        for problem in exc.problems:
            typer.echo(redactor.text(problem), err=True)
        raise typer.Exit(defaults.EXIT_CONFIG) from None
    except LoaderError as exc:
        if exc.result is not None:
            print_summary(exc.result, redactor, to_stderr=True)
        fail(exit_code(exc), redactor.text(str(exc)))
    except KeyboardInterrupt:
        fail(defaults.EXIT_INTERRUPTED, "interrupted")
    except BrokenPipeError:
        quiet_stdout()
        raise typer.Exit(defaults.EXIT_CLOSED_PIPE) from None
    except Exception:  # the last line of defence: never print a secret
        typer.echo(redactor.text(traceback.format_exc()), err=True)
        fail(defaults.EXIT_INTERNAL, "internal error (the traceback above); please report it")


def quiet_stdout() -> None:
    """Before ending quietly when the reader of stdout went away (``loader ... | head``): stdout now
    writes to /dev/null, so the flush at interpreter exit raises nothing more."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (a test's capture)
        pass
    finally:
        os.close(devnull)


def exit_code(exc: LoaderError) -> int:
    """The exit code documented for ``exc``'s kind of failure."""
    if isinstance(exc, JobLockedError):
        return defaults.EXIT_LOCKED
    if isinstance(exc, StateError):
        return defaults.EXIT_STATE
    if isinstance(exc, SourceError | CursorOrderError):
        return defaults.EXIT_SOURCE
    if isinstance(exc, SinkError | EncodingError):
        return defaults.EXIT_DELIVERY
    return defaults.EXIT_INTERNAL


def fail(code: int, message: str) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code``."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)
