"""The ``loader`` command: parse arguments, call one library function, map errors to
exit codes (see :mod:`loader.defaults`). Nothing here that a library user would need."""

from __future__ import annotations

import json
import logging
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from loader import defaults
from loader._version import __version__
from loader.errors import EncodingError, JobConfigError, LoaderError, SinkError, SourceError
from loader.example import create_example_database
from loader.jobfile import environment, find_job_files, load_job
from loader.receiver import Received, Receiver
from loader.redact import Redactor
from loader.runner import RunResult, run_job

app = typer.Typer(
    name="loader",
    help="Run a SQL query and post the rows to an HTTP endpoint.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EnvFile = Annotated[
    Path,
    typer.Option("--env-file", help="Read variables from this file; the environment wins."),
]
_EXIT_CODES_HELP = (
    f"Exit codes: {defaults.EXIT_OK} delivered, {defaults.EXIT_CONFIG} bad job file or usage, "
    f"{defaults.EXIT_SOURCE} database failed, {defaults.EXIT_DELIVERY} delivery failed, "
    f"{defaults.EXIT_INTERRUPTED} interrupted, {defaults.EXIT_INTERNAL} internal error."
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"loader {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log run progress.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@app.command(epilog=_EXIT_CODES_HELP)
def run(
    job_file: Annotated[Path, typer.Argument(help="The job file (YAML).")],
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Read and encode the rows, print requests, send nothing."),
    ] = False,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Stop after this many rows.")
    ] = None,
    env_file: EnvFile = Path(".env"),
) -> None:
    """Run a job once: stream its rows to its endpoint and print a summary."""
    redactor = Redactor()
    with _exit_codes(redactor):
        job = load_job(job_file, env=environment(env_file))
        redactor = job.redactor()
        with _exit_codes(redactor):
            result = run_job(job, limit=limit, dry_run=dry_run, preview=defaults.DRY_RUN_REQUESTS)
            _print_summary(result, redactor)
            if result.status == "interrupted":
                raise typer.Exit(defaults.EXIT_INTERRUPTED)


@app.command()
def validate(
    paths: Annotated[list[Path], typer.Argument(help="Job files or directories of them.")],
    env_file: EnvFile = Path(".env"),
) -> None:
    """Check job files without connecting anywhere; print every problem found."""
    with _exit_codes(Redactor()):
        env = environment(env_file)
        files = find_job_files(list(paths))
        if not files:
            _fail(
                defaults.EXIT_CONFIG,
                f"no job files (*.yml, *.yaml) in {', '.join(map(str, paths))}",
            )
        failed = 0
        for path in files:
            try:
                load_job(path, env=env)
            except JobConfigError as exc:
                failed += 1
                for problem in exc.problems:
                    typer.echo(problem, err=True)
            else:
                typer.echo(f"{path}: ok")
        if failed:
            _fail(defaults.EXIT_CONFIG, f"{failed} of {len(files)} job files have problems")


@app.command()
def receive(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    body: Annotated[bool, typer.Option("--body", help="Print each request's body too.")] = False,
) -> None:
    """Serve a local endpoint that accepts every request and prints what arrives."""
    receiver = Receiver(host, port, on_request=lambda r: _print_received(r, show_body=body))
    typer.echo(f"listening on {receiver.url} (Ctrl-C to stop)")
    try:
        receiver.serve_forever()
    except KeyboardInterrupt:
        typer.echo("stopped")


@app.command()
def demo(
    job_file: Annotated[Path, typer.Option("--job", help="The example job.")] = Path(
        "jobs/example.yml"
    ),
    rows: Annotated[int, typer.Option(min=1, help="Sign-ups in the example database.")] = 1000,
    database: Annotated[Path, typer.Option(help="Where to create the SQLite database.")] = Path(
        ".loader/example.db"
    ),
) -> None:
    """Create the example SQLite database, start a local receiver and run the example job."""
    redactor = Redactor()
    with _exit_codes(redactor):
        created = create_example_database(database, rows)
        typer.echo(f"created {created} with {rows} sign-ups")
        with Receiver(on_request=lambda r: _print_received(r, show_body=False)) as receiver:
            env = {
                **environment(),
                "DATABASE_URL": f"sqlite:///{created}",
                "TARGET_URL": f"{receiver.url}/v1/import",
            }
            job = load_job(job_file, env=env)
            typer.echo(f"running {job_file} against the receiver at {receiver.url}")
            result = run_job(job)
        _print_summary(result, job.redactor())


def main() -> None:
    """Entry point of the ``loader`` console script."""
    app()


@contextmanager
def _exit_codes(redactor: Redactor) -> Iterator[None]:
    """Turn loader's errors into a message on stderr and the documented exit code."""
    stop = threading.Event()
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
            _print_summary(exc.result, redactor, to_stderr=True)
        code = (
            defaults.EXIT_SOURCE
            if isinstance(exc, SourceError)
            else defaults.EXIT_DELIVERY
            if isinstance(exc, SinkError | EncodingError)
            else defaults.EXIT_INTERNAL
        )
        _fail(code, redactor.text(str(exc)))
    except KeyboardInterrupt:
        stop.set()
        _fail(defaults.EXIT_INTERRUPTED, "interrupted")
    except Exception:  # the last line of defence: never print a secret
        typer.echo(redactor.text(traceback.format_exc()), err=True)
        _fail(defaults.EXIT_INTERNAL, "internal error (the traceback above); please report it")


def _fail(code: int, message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _print_summary(result: RunResult, redactor: Redactor, *, to_stderr: bool = False) -> None:
    for number, request in enumerate(result.preview, start=1):
        typer.echo(f"--- request {number} of {len(result.preview)} shown (dry run: not sent) ---")
        typer.echo(f"{request.method} {request.url}")
        for name, value in request.headers.items():
            typer.echo(f"{name}: {value}")
        typer.echo("")
        typer.echo(_show_body(request.body, redactor))
    lines = [
        f"{result.job}: {result.status} in {result.duration:.2f}s (run {result.run_id})",
        f"  rows read    {result.rows_read:>12,}",
        f"  rows posted  {result.rows_posted:>12,}",
        f"  requests     {result.requests:>12,}",
        f"  retries      {result.retries:>12,}",
    ]
    typer.echo("\n".join(lines), err=to_stderr)


def _show_body(body: bytes, redactor: Redactor, limit: int = 4000) -> str:
    text = body.decode("utf-8", "replace")
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(body):,} bytes in all)"
    return redactor.text(text)


def _print_received(received: Received, *, show_body: bool) -> None:
    rows = f"{received.rows} rows" if received.rows is not None else "not row JSON"
    key = received.headers.get("Idempotency-Key", "-")
    typer.echo(
        f"{received.method} {received.path}: {rows}, {len(received.body):,} bytes, "
        f"Idempotency-Key {key}"
    )
    if show_body:
        try:
            typer.echo(json.dumps(json.loads(received.body), indent=2)[:4000])
        except ValueError:
            typer.echo(received.body.decode("utf-8", "replace")[:4000])
