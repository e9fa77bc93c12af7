"""``loader run``: one run of a job here, or queued for a worker (``--enqueue``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from loader import defaults
from loader.cli.options import (
    ENV_FILE,
    EnvFile,
    JobFile,
    Json,
    duration,
    exit_codes,
    fail,
    load,
    resolve,
)
from loader.cli.output import print_json, print_summary, progress, run_document
from loader.errors import JobConfigError, LoaderError
from loader.executors import enqueue_once
from loader.redact import Redactor
from loader.result import RunResult, Status
from loader.signals import stop_on_signals
from loader.units import format_duration

if TYPE_CHECKING:
    from loader.job import Job

DryRun = Annotated[
    bool, typer.Option("--dry-run", help="Read and encode the rows, print requests, send nothing.")
]
Limit = Annotated[int | None, typer.Option("--limit", min=1, help="Stop after this many rows.")]
FullRefresh = Annotated[
    bool, typer.Option("--full-refresh", help="Ignore the checkpoint for this run.")
]
Grace = Annotated[
    str, typer.Option(help="On SIGTERM/SIGINT, time to finish the request in flight.")
]
TargetUrl = Annotated[
    str | None,
    typer.Option("--target-url", help="Send to this URL instead (e.g. loader receive)."),
]
#: ``--grace``'s default, as written on the command line.
GRACE = format_duration(defaults.GRACE_PERIOD)

Enqueue = Annotated[
    bool, typer.Option("--enqueue", help="Queue the run for `loader worker` instead of running it.")
]


def run(
    job_file: JobFile,
    dry_run: DryRun = False,
    limit: Limit = None,
    full_refresh: FullRefresh = False,
    grace: Grace = GRACE,
    target_url: TargetUrl = None,
    enqueue: Enqueue = False,
    as_json: Json = False,
    env_file: EnvFile = ENV_FILE,
) -> None:
    """Run a job once: stream its rows to its endpoint and print a summary (with
    --json, as one JSON document)."""
    # The run's modules (the database, HTTP, the state store) load here, not with the
    # command line: `loader --help` and `loader validate` do without them.
    from loader.monitor import flush as flush_notifications
    from loader.outcome import run_job

    with exit_codes(Redactor()):
        job = load(job_file, env_file)
        if target_url is not None:
            job = _retarget(job, target_url)
        grace_seconds = duration("--grace", grace)
        if enqueue:
            given = [name for name, value in (
                ("--dry-run", dry_run), ("--limit", limit), ("--full-refresh", full_refresh),
                ("--target-url", target_url)) if value]  # fmt: skip
            if given:
                fail(
                    defaults.EXIT_CONFIG,
                    f"--enqueue runs the job file as it is on a worker; {', '.join(given)} "
                    "cannot go with it: run here without --enqueue, or edit the file",
                )
            _enqueue(job, resolve(job_file, env_file), env_file, as_json=as_json)
            return
    redactor = job.redactor()
    with exit_codes(redactor):
        stop = stop_on_signals(grace_seconds)
        with progress(sys.stderr.isatty() and not dry_run) as update:
            try:
                result = run_job(
                    job, limit=limit, dry_run=dry_run, full_refresh=full_refresh, stop=stop,
                    progress=update,
                )  # fmt: skip
            except LoaderError as exc:
                if as_json and exc.result is not None:  # the summary goes to stderr too
                    print_json(run_document(exc.result, redactor))
                raise
            finally:
                flush_notifications(timeout=defaults.NOTIFY_FLUSH_TIMEOUT)
        if as_json:
            print_json(run_document(result, redactor))
        else:
            print_summary(result, redactor)
        _exit_for(result, job_file)


def _exit_for(result: RunResult, job_file: Path) -> None:
    if result.status == Status.INTERRUPTED:
        raise typer.Exit(defaults.EXIT_INTERRUPTED)
    if result.status == Status.PARTIAL:
        fail(
            defaults.EXIT_REJECTED_ROWS,
            f"{result.rows_rejected} rows were rejected and kept as dead letters: "
            f"loader deadletter list {job_file}",
        )


def _enqueue(job: Job, job_file: Path, env_file: Path, *, as_json: bool) -> None:
    from loader.jobfile import environment

    run_id, queued = enqueue_once(job.name, job_file, environment(env_file))
    if as_json:
        print_json({"job": job.name, "run_id": run_id, "queued": queued})
    elif queued:
        typer.echo(f"queued run {run_id} of {job.name}")
    else:
        typer.echo(f"a run of {job.name} is already waiting in the queue; it will do this one")


def _retarget(job: Job, url: str) -> Job:
    try:
        return job.with_target_url(url)
    except ValueError as exc:
        raise JobConfigError([f"--target-url: {url!r} is not an http:// or https:// URL"]) from exc
