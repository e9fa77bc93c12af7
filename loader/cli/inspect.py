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
from loader.cli.output import (
    HISTORY_COLUMNS,
    STATUS_COLUMNS,
    Column,
    console,
    fitted_table,
    history_document,
    history_row,
    print_json,
    run_details,
    short_iso,
    shown_status,
    width,
    wrapped,
)
from loader.errors import JobConfigError
from loader.redact import Redactor, mask_registered

if TYPE_CHECKING:
    from loader.state import RunRecord
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


RunId = Annotated[str | None, typer.Option("--run", help="Show this one run, its error in full.")]
Errors = Annotated[
    bool, typer.Option("--errors", help="Print each run's error in full below the table.")
]


def history(
    job_file: JobFile,
    limit: Annotated[int, typer.Option(min=1, help="How many runs to show.")] = (
        defaults.HISTORY_LIMIT
    ),
    run_id: RunId = None,
    errors: Errors = False,
    as_json: Json = False,
    env_file: EnvFile = ENV_FILE,
) -> None:
    """Show a job's recent runs, newest first (errors cut to fit: see --errors, --run)."""
    from loader.state import open_state

    with exit_codes(Redactor()):
        job = load(job_file, env_file)
        store = open_state()
        found = store.run_record(run_id) if run_id else None
        records = [found] if found else [] if run_id else store.history(job.name, limit)
        store.close()
        if run_id and (found is None or found.job != job.name):
            fail(defaults.EXIT_CONFIG, f"{job.name}: no run {run_id!r} in its history "
                 f"(`loader history {job_file}` lists them)")  # fmt: skip
        if as_json:
            print_json(history_document(job.name, records, job.redactor()))
        elif run_id:
            typer.echo(run_details(records[0], job.redactor(), width()))
        elif not records:
            typer.echo(f"{job.name}: no runs recorded")
        else:
            _history_table(records, job.redactor(), errors)


def _history_table(records: list[RunRecord], redactor: Redactor, errors: bool) -> None:
    runs, cut = fitted_table(HISTORY_COLUMNS, [history_row(r, redactor) for r in records], width())
    console().print(runs)
    failed = [r for r in records if r.error]
    if errors:
        for r in failed:
            typer.echo(f"\nrun {r.run_id} ({r.status}):")
            typer.echo(wrapped(redactor.text(r.error or ""), width()))
    elif cut and failed:
        typer.echo("errors cut to fit: --errors or --run RUN shows them whole")


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
    columns = STATUS_COLUMNS + ([Column("queue", drop=2)] if report.queue else [])
    rows = []
    for row in report.jobs:
        if "problem" in row:
            rows.append([row["job"], "", "", "bad job file"] + [""] * (len(columns) - 4))
            continue
        lag = row["cursor_lag_seconds"]
        extra = [f"{row['running']} running, {row['queued']} waiting"] if report.queue else []
        rows.append([
            row["job"], row["schedule"] or "(none)", short_iso(row["last_run"]) or "never",
            shown_status(row["status"], row["lock_lapsed_at"]), str(row["rows_posted"] or ""),
            "" if lag is None else f"{lag:.0f}s", short_iso(row["next_run"]),
            str(row["dead_letters"]), *extra,
        ])  # fmt: skip
    return fitted_table(columns, rows, width())[0]
