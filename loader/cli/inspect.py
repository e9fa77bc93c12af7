"""Commands that look without changing anything: validate, show, check, schema,
history and status."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from loader import defaults
from loader.cli.options import (
    ENV_FILE,
    EnvFile,
    JobFile,
    JobPaths,
    Json,
    exit_codes,
    fail,
    job_roots,
    load,
)
from loader.cli.output import console, history_document, position, print_json, table
from loader.errors import JobConfigError
from loader.redact import Redactor, mask_registered
from loader.units import when

if TYPE_CHECKING:
    from loader.status import StatusReport


def validate(
    paths: Annotated[list[Path], typer.Argument(help="Job files or directories of them.")],
    env_file: EnvFile = ENV_FILE,
) -> None:
    """Check job files without connecting anywhere; print every problem found."""
    from loader.jobfile import environment, find_job_files, load_job

    with exit_codes(Redactor()):
        env = environment(env_file)
        files = find_job_files(list(paths))
        if not files:
            where = ", ".join(map(str, paths))
            fail(defaults.EXIT_CONFIG, f"no job files (*.yml, *.yaml) in {where}")
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
            fail(defaults.EXIT_CONFIG, f"{failed} of {len(files)} job files have problems")


def history(
    job_file: JobFile,
    limit: Annotated[int, typer.Option(min=1, help="How many runs to show.")] = (
        defaults.HISTORY_LIMIT
    ),
    as_json: Json = False,
    env_file: EnvFile = ENV_FILE,
) -> None:
    """Show a job's recent runs, newest first."""
    from loader.state import open_state

    with exit_codes(Redactor()):
        job = load(job_file, env_file)
        store = open_state()
        records = store.history(job.name, limit)
        store.close()
        if as_json:
            print_json(history_document(job.name, records, job.redactor()))
            return
        runs = table("run", "started", "status", "read", "posted", "rejected", "requests",
                     "retries", "splits",
                     "seconds", "cursor from", "cursor to", "error")  # fmt: skip
        for r in records:
            seconds = f"{r.ended_at - r.started_at:.1f}" if r.ended_at else ""
            runs.add_row(
                r.run_id, when(r.started_at), r.status, str(r.rows_read),
                str(r.rows_posted), str(r.rows_rejected), str(r.requests), str(r.retries),
                str(r.splits), seconds, position(r.cursor_from), position(r.cursor_to),
                job.redactor().text(r.error or "")[:80],
            )  # fmt: skip
        console().print(runs if records else f"{job.name}: no runs recorded")


def show(job_file: JobFile, env_file: EnvFile = ENV_FILE) -> None:
    """Print the job as loader understood it: defaults filled in, secrets masked."""
    from loader.jobfile import dump_job

    with exit_codes(Redactor()):
        typer.echo(dump_job(load(job_file, env_file)), nl=False)


def check(job_file: JobFile, env_file: EnvFile = ENV_FILE) -> None:
    """Check that the job can reach its database, its endpoint and the state store,
    without sending anything."""
    from loader.check import check_job

    with exit_codes(Redactor()):
        job = load(job_file, env_file)
        results = check_job(job)
        for result in results:
            mark = "ok  " if result.ok else "FAIL"
            typer.echo(f"{mark} {result.name}: {mask_registered(result.detail)}")
        failed = {r.name for r in results if not r.ok}
        if "source" in failed:
            raise typer.Exit(defaults.EXIT_SOURCE)
        if "target" in failed:
            raise typer.Exit(defaults.EXIT_DELIVERY)
        if "state" in failed:
            raise typer.Exit(defaults.EXIT_STATE)


def schema() -> None:
    """Print the JSON Schema of job files (draft-07), for editors and linters."""
    from loader.jobfile import job_schema

    typer.echo(json.dumps(job_schema(), indent=2))


def status(
    paths: JobPaths = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON document, for machines.")
    ] = False,
    env_file: EnvFile = ENV_FILE,
) -> None:
    """A table of jobs: schedule, last run, status, rows, cursor lag, next run, dead letters."""
    from loader.jobfile import environment
    from loader.status import status_report

    with exit_codes(Redactor()):
        report = status_report(job_roots(paths), environment(env_file))
        if as_json:
            typer.echo(mask_registered(json.dumps({"jobs": report.jobs}, indent=2)))
            return
        console().print(_status_table(report))
        for row in report.jobs:
            if "problem" in row:
                typer.echo(mask_registered(row["problem"]), err=True)


def _status_table(report: StatusReport) -> Any:
    columns = ["job", "schedule", "last run", "status", "rows", "cursor lag", "next run",
               "dead letters"] + (["queue"] if report.queue else [])  # fmt: skip
    jobs = table(*columns)
    for row in report.jobs:
        if "problem" in row:
            jobs.add_row(row["job"], "", "", "bad job file", *[""] * (len(columns) - 4))
            continue
        lag = row["cursor_lag_seconds"]
        extra = [f"{row['running']} running, {row['queued']} waiting"] if report.queue else []
        jobs.add_row(
            row["job"], row["schedule"] or "(none)", row["last_run"] or "never",
            row["status"] or "", str(row["rows_posted"] or ""),
            "" if lag is None else f"{lag:.0f}s", row["next_run"] or "",
            str(row["dead_letters"]), *extra,
        )  # fmt: skip
    return jobs
