"""The ``loader`` command: parse arguments, call one library function, map errors to
exit codes (see :mod:`loader.defaults`). Nothing here that a library user would need."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from loader import defaults
from loader._version import __version__
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
from loader.job import Job, job_schema
from loader.jobfile import dump_job, environment, find_job_files, load_job
from loader.logs import RUN_ID
from loader.monitor import cursor_lag
from loader.monitor import flush as flush_notifications
from loader.redact import Redactor, mask_registered
from loader.result import Position, RunResult
from loader.runner import run_job
from loader.state import open_state
from loader.units import parse_duration

if TYPE_CHECKING:
    from loader.receiver import Received

app = typer.Typer(
    name="loader",
    help="Run a SQL query and post the rows to an HTTP endpoint.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
state_app = typer.Typer(help="Show or reset a job's checkpoint.", no_args_is_help=True)
deadletter_app = typer.Typer(help="Rows the endpoint rejected.", no_args_is_help=True)
db_app = typer.Typer(help="The state store's and the queue's tables.", no_args_is_help=True)
app.add_typer(state_app, name="state")
app.add_typer(deadletter_app, name="deadletter")
app.add_typer(db_app, name="db")

EnvFile = Annotated[
    Path,
    typer.Option("--env-file", help="Read variables from this file; the environment wins."),
]
JobFile = Annotated[Path, typer.Argument(help="The job file (YAML).")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
_EXIT_CODES_HELP = (
    f"Exit codes: {defaults.EXIT_OK} delivered, {defaults.EXIT_CONFIG} bad job file or usage, "
    f"{defaults.EXIT_SOURCE} database failed, {defaults.EXIT_DELIVERY} delivery failed, "
    f"{defaults.EXIT_LOCKED} locked, {defaults.EXIT_REJECTED_ROWS} done with rejected rows, "
    f"{defaults.EXIT_STATE} state store failed, {defaults.EXIT_INTERRUPTED} interrupted, "
    f"{defaults.EXIT_INTERNAL} internal error."
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
    log_format: Annotated[
        str,
        typer.Option(
            "--log-format",
            help="auto: JSON lines when the output is not a terminal, text when it is.",
        ),
    ] = "auto",
) -> None:
    global _LOG_FORMAT
    if log_format not in ("auto", "text", "json"):
        raise typer.BadParameter("expected auto, text or json", param_hint="--log-format")
    _LOG_FORMAT = log_format
    _configure_logging(logging.INFO if verbose else logging.WARNING, sys.stderr)


_LOG_FORMAT = "auto"


class _LogFormatter(logging.Formatter):
    """Text or JSON lines, each with the run id when there is one, secrets masked."""

    def __init__(self, as_json: bool) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        run_id = RUN_ID.get()
        if self.as_json:
            data = {
                "ts": datetime.fromtimestamp(record.created).astimezone().isoformat(),
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": record.getMessage(),
            }
            if run_id:
                data["run_id"] = run_id
            if record.exc_info:
                data["error"] = self.formatException(record.exc_info)
            return mask_registered(json.dumps(data))
        text = super().format(record)
        if run_id and "run=" not in text:
            text = text.replace(": ", f" [run {run_id}]: ", 1)
        return mask_registered(text)


def _configure_logging(level: int, stream: Any) -> None:
    as_json = _LOG_FORMAT == "json" or (_LOG_FORMAT == "auto" and not stream.isatty())
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_LogFormatter(as_json))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    _quiet_libraries()


def _quiet_libraries() -> None:
    """httpx logs each request's full URL at INFO, query string (and any key in it)
    included: loader reports requests itself, redacted."""
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


@app.command(epilog=_EXIT_CODES_HELP)
def run(
    job_file: JobFile,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Read and encode the rows, print requests, send nothing."),
    ] = False,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Stop after this many rows.")
    ] = None,
    full_refresh: Annotated[
        bool, typer.Option("--full-refresh", help="Ignore the checkpoint for this run.")
    ] = False,
    grace: Annotated[
        str, typer.Option(help="On SIGTERM/SIGINT, time to finish the request in flight.")
    ] = "20s",
    target_url: Annotated[
        str | None,
        typer.Option("--target-url", help="Send to this URL instead (e.g. loader receive)."),
    ] = None,
    enqueue: Annotated[
        bool,
        typer.Option("--enqueue", help="Queue the run for `loader worker` instead of running it."),
    ] = False,
    env_file: EnvFile = Path(".env"),
) -> None:
    """Run a job once: stream its rows to its endpoint and print a summary."""
    with _exit_codes(Redactor()):
        job = _load(job_file, env_file)
        if target_url is not None:
            job = _retarget(job, target_url)
        grace_seconds = _duration("--grace", grace)
        if enqueue:
            given = [name for name, value in (
                ("--dry-run", dry_run), ("--limit", limit), ("--full-refresh", full_refresh),
                ("--target-url", target_url)) if value]  # fmt: skip
            if given:
                _fail(
                    defaults.EXIT_CONFIG,
                    f"--enqueue runs the job file as it is on a worker; {', '.join(given)} "
                    "cannot go with it: run here without --enqueue, or edit the file",
                )
            _enqueue(job, job_file, env_file)
            return
    redactor = job.redactor()
    with _exit_codes(redactor):
        stop = _stop_on_signals(grace_seconds)
        with _progress(sys.stderr.isatty() and not dry_run) as progress:
            try:
                result = run_job(
                    job, limit=limit, dry_run=dry_run, full_refresh=full_refresh, stop=stop,
                    progress=progress,
                )  # fmt: skip
            finally:
                flush_notifications(timeout=15)
        _print_summary(result, redactor)
        if result.status == "interrupted":
            raise typer.Exit(defaults.EXIT_INTERRUPTED)
        if result.status == "partial":
            _fail(
                defaults.EXIT_REJECTED_ROWS,
                f"{result.rows_rejected} rows were rejected and kept as dead letters: "
                f"loader deadletter list {job_file}",
            )


def _enqueue(job: Job, job_file: Path, env_file: Path) -> None:
    from loader.workers import JobQueue, queue_url

    # Like a slot's run id (UTC), marked as a one-off by the process id.
    run_id = f"{job.name}@{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{os.getpid()}"
    with JobQueue(queue_url(environment(env_file))) as queue:
        if queue.enqueue(job.name, job_file, run_id=run_id):
            typer.echo(f"queued run {run_id} of {job.name}")
        else:
            typer.echo(f"a run of {job.name} is already waiting in the queue; it will do this one")


@app.command(epilog="Exit codes: 0 stopped by a signal, 2 bad configuration, 7 queue failed.")
def worker(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Job files or directories (default: jobs/).")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Runs at once.")] = (
        defaults.WORKER_CONCURRENCY
    ),
    stalled_after: Annotated[
        str,
        typer.Option(
            help="Put a worker's runs back in the queue after this long without "
            "a heartbeat from it."
        ),
    ] = "30s",  # fmt: skip
    migrate: Annotated[
        bool, typer.Option("--migrate", help="Create the queue's tables first if missing.")
    ] = False,
    grace: Annotated[
        str, typer.Option(help="On SIGTERM, time for running jobs to checkpoint and end.")
    ] = "25s",
    env_file: EnvFile = Path(".env"),
) -> None:
    """Run queued runs (from `loader clock` with LOADER_EXECUTOR=procrastinate, or
    `loader run --enqueue`) until SIGTERM: a Heroku worker dyno; start as many as needed."""
    from loader.workers import JobQueue, queue_url

    _configure_logging(logging.INFO, sys.stdout)
    with _exit_codes(Redactor()):
        env = environment(env_file)
        stalled = _duration("--stalled-after", stalled_after)
        grace_seconds = min(_duration("--grace", grace), MAX_CLOCK_GRACE)
        stop, reload = threading.Event(), threading.Event()
        _clock_signals(stop, reload, grace_seconds)
        store = open_state()
        with JobQueue(queue_url(env)) as queue:
            if migrate and queue.migrate():
                typer.echo("created the queue's tables")
            typer.echo(f"worker started: {concurrency} run(s) at once, queue {queue.queue!r}")
            queue.work(
                list(paths or [Path("jobs")]), store, stop=stop, concurrency=concurrency,
                stalled_after=stalled, env=env,
            )  # fmt: skip
        store.close()
        typer.echo("worker stopped")


@db_app.command("upgrade")
def db_upgrade(env_file: EnvFile = Path(".env")) -> None:
    """Create the state store's tables, and the queue's when LOADER_EXECUTOR=procrastinate
    or LOADER_QUEUE_URL is set (safe to run on every release)."""
    from loader.workers import JobQueue, queue_url

    with _exit_codes(Redactor()):
        env = environment(env_file)
        open_state().close()
        typer.echo("state store ready")
        if env.get(defaults.EXECUTOR_ENV) == "procrastinate" or env.get("LOADER_QUEUE_URL"):
            with JobQueue(queue_url(env)) as queue:
                created = queue.migrate()
            typer.echo("queue tables created" if created else "queue tables ready")


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
            where = ", ".join(map(str, paths))
            _fail(defaults.EXIT_CONFIG, f"no job files (*.yml, *.yaml) in {where}")
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
def history(
    job_file: JobFile,
    limit: Annotated[int, typer.Option(min=1, help="How many runs to show.")] = 20,
    env_file: EnvFile = Path(".env"),
) -> None:
    """Show a job's recent runs, newest first."""
    with _exit_codes(Redactor()):
        job = _load(job_file, env_file)
        store = open_state()
        records = store.history(job.name, limit)
        store.close()
        table = _table("run", "started", "status", "read", "posted", "rejected", "requests",
                      "retries", "seconds", "cursor from", "cursor to", "error")  # fmt: skip
        for r in records:
            seconds = f"{r.ended_at - r.started_at:.1f}" if r.ended_at else ""
            table.add_row(
                r.run_id, _when(r.started_at), r.status, str(r.rows_read), str(r.rows_posted),
                str(r.rows_rejected), str(r.requests), str(r.retries), seconds,
                _position(r.cursor_from), _position(r.cursor_to),
                job.redactor().text(r.error or "")[:80],
            )  # fmt: skip
        _console().print(table if records else f"{job.name}: no runs recorded")


@state_app.command("show")
def state_show(job_file: JobFile, env_file: EnvFile = Path(".env")) -> None:
    """Print the job's checkpoint and whether it still fits the job."""
    with _exit_codes(Redactor()):
        job = _load(job_file, env_file)
        store = open_state()
        checkpoint = store.checkpoint(job.name)
        letters = store.dead_letter_count(job.name)
        store.close()
        typer.echo(f"job:          {job.name}")
        typer.echo(f"state store:  {store.url}")
        if checkpoint is None:
            typer.echo("checkpoint:   none (the next run starts from cursor.start)")
        else:
            fits = "yes" if checkpoint.fingerprint == job.fingerprint() else (
                "NO: the query or cursor changed; run with --full-refresh or reset"
            )  # fmt: skip
            typer.echo(f"checkpoint:   {_position(checkpoint.position)}")
            typer.echo(f"saved:        {_when(checkpoint.updated_at)} by run {checkpoint.run_id}")
            typer.echo(f"fits the job: {fits}")
        typer.echo(f"dead letters: {letters}")


@state_app.command("reset")
def state_reset(job_file: JobFile, yes: Yes = False, env_file: EnvFile = Path(".env")) -> None:
    """Forget the job's checkpoint: the next run starts from cursor.start."""
    with _exit_codes(Redactor()):
        job = _load(job_file, env_file)
        if not yes and not typer.confirm(f"Reset the checkpoint of {job.name}?"):
            _fail(defaults.EXIT_CONFIG, "not reset")
        store = open_state()
        removed = store.reset(job.name)
        store.close()
        typer.echo(f"{job.name}: checkpoint {'reset' if removed else 'was already empty'}")


@deadletter_app.command("list")
def deadletter_list(
    job_file: JobFile,
    limit: Annotated[int, typer.Option(min=1, help="How many to show.")] = 50,
    env_file: EnvFile = Path(".env"),
) -> None:
    """Show the job's dead letters: the row, the status and the endpoint's answer."""
    with _exit_codes(Redactor()):
        job = _load(job_file, env_file)
        store = open_state()
        letters = store.dead_letters(job.name, limit)
        total = store.dead_letter_count(job.name)
        store.close()
        for letter in letters:
            typer.echo(
                f"#{letter.id} run {letter.run_id} at {_when(letter.created_at)}, "
                f"{letter.attempts} attempt(s), status {letter.status}: {letter.excerpt}"
            )
            typer.echo(f"  {letter.row.decode('utf-8', 'replace')}")
        typer.echo(
            f"{job.name}: {total} dead letters" + (f", {limit} shown" if total > limit else "")
        )


@deadletter_app.command("replay")
def deadletter_replay(job_file: JobFile, env_file: EnvFile = Path(".env")) -> None:
    """Send the job's dead letters again; those accepted leave the table."""
    from loader.replay import replay_dead_letters

    with _exit_codes(Redactor()):
        job = _load(job_file, env_file)
    with _exit_codes(job.redactor()):
        result = replay_dead_letters(job, stop=_stop_on_signals(defaults.GRACE_PERIOD))
        flush_notifications(timeout=15)
        typer.echo(f"{job.name}: {result.delivered} delivered, {result.rejected} rejected again")
        if result.rejected:
            raise typer.Exit(defaults.EXIT_REJECTED_ROWS)


@deadletter_app.command("purge")
def deadletter_purge(job_file: JobFile, yes: Yes = False, env_file: EnvFile = Path(".env")) -> None:
    """Delete the job's dead letters for good."""
    with _exit_codes(Redactor()):
        job = _load(job_file, env_file)
        if not yes and not typer.confirm(f"Delete every dead letter of {job.name}?"):
            _fail(defaults.EXIT_CONFIG, "nothing deleted")
        store = open_state()
        removed = store.purge_dead_letters(job.name)
        store.close()
        typer.echo(f"{job.name}: {removed} dead letters deleted")


@app.command(epilog="Exit codes: 0 stopped by a signal, 2 bad job files with --strict.")
def clock(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Job files or directories (default: jobs/).")
    ] = None,
    max_parallel: Annotated[int, typer.Option(min=1, help="Runs at once.")] = (
        defaults.CLOCK_MAX_PARALLEL
    ),
    grace: Annotated[
        str, typer.Option(help="On SIGTERM, time for running jobs to checkpoint and end.")
    ] = "25s",
    strict: Annotated[
        bool, typer.Option("--strict", help="Refuse to start if any job file is bad.")
    ] = False,
    port: Annotated[
        int | None,
        typer.Option(envvar="PORT", help="Serve /metrics and /healthz on this port ($PORT)."),
    ] = None,
    executor: Annotated[
        str | None,
        typer.Option(
            help="inline: run jobs in this process; procrastinate: queue them for "
            "`loader worker` (default: $LOADER_EXECUTOR, from the environment or .env, "
            "else inline).",
        ),
    ] = None,
    env_file: EnvFile = Path(".env"),
) -> None:
    """Run the job files on their schedules until SIGTERM (a Heroku clock dyno)."""
    from loader.scheduler import Clock  # the clock is a separate package: loaded only here

    _configure_logging(logging.INFO, sys.stdout)
    with _exit_codes(Redactor()):
        grace_seconds = _duration("--grace", grace)
        env = environment(env_file)
        roots = list(paths or [Path("jobs")])
        if strict:
            bad = [p for path in find_job_files(roots) for p in _problems(path, env)]
            if bad:
                for problem in bad:
                    typer.echo(problem, err=True)
                _fail(defaults.EXIT_CONFIG, "bad job files (--strict): not starting")
        # Heroku sends SIGKILL 30 s after SIGTERM: stay well inside that.
        grace_seconds = min(grace_seconds, MAX_CLOCK_GRACE)
        executor = executor or env.get(defaults.EXECUTOR_ENV) or "inline"
        if executor not in ("inline", "procrastinate"):
            _fail(defaults.EXIT_CONFIG,
                  f"--executor (or {defaults.EXECUTOR_ENV}): expected inline or procrastinate, "
                  f"got {executor!r}")  # fmt: skip
        queue = None
        if executor == "procrastinate":
            from loader.workers import JobQueue, queue_url

            queue = JobQueue(queue_url(env))
            queue.open()
        stop, reload = threading.Event(), threading.Event()
        _clock_signals(stop, reload, grace_seconds)
        Clock(
            roots, max_parallel=max_parallel, grace=grace_seconds, env=env, metrics_port=port,
            enqueue=queue.enqueue if queue is not None else None,
        ).run(stop, reload)  # fmt: skip
        # Runs still going after the grace period are abandoned (their state is consistent
        # at any moment); do not wait for their threads at interpreter exit.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(defaults.EXIT_OK)


MAX_CLOCK_GRACE = 25.0


def _problems(path: Path, env: dict[str, str]) -> list[str]:
    try:
        load_job(path, env=env)
    except JobConfigError as exc:
        return exc.problems
    return []


def _clock_signals(stop: threading.Event, reload: threading.Event, grace: float) -> None:
    """SIGTERM/SIGINT stop the clock (a second one, or the end of the grace period plus a
    margin, exits at once); SIGHUP reloads the job files."""

    def handle_stop(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            os._exit(defaults.EXIT_INTERRUPTED)
        stop.set()
        typer.echo(f"{signal.Signals(signum).name}: stopping the clock", err=True)
        timer = threading.Timer(grace + 2, os._exit, args=(defaults.EXIT_INTERRUPTED,))
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, handle_stop)
    signal.signal(signal.SIGINT, handle_stop)
    signal.signal(signal.SIGHUP, lambda _signum, _frame: reload.set())


@app.command()
def show(job_file: JobFile, env_file: EnvFile = Path(".env")) -> None:
    """Print the job as loader understood it: defaults filled in, secrets masked."""
    with _exit_codes(Redactor()):
        typer.echo(dump_job(_load(job_file, env_file)), nl=False)


@app.command()
def check(job_file: JobFile, env_file: EnvFile = Path(".env")) -> None:
    """Check that the job can reach its database, its endpoint and the state store,
    without sending anything."""
    from loader.check import check_job

    with _exit_codes(Redactor()):
        job = _load(job_file, env_file)
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


@app.command()
def schema() -> None:
    """Print the JSON Schema of job files (draft-07), for editors and linters."""
    typer.echo(json.dumps(job_schema(), indent=2))


@app.command()
def init(
    name: Annotated[str, typer.Argument(help="The job's name; writes jobs/NAME.yml.")],
    directory: Annotated[Path, typer.Option("--dir", help="Where job files live.")] = Path("jobs"),
) -> None:
    """Scaffold a commented job file (and .env.example and a Procfile when absent)."""
    with _exit_codes(Redactor()):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            _fail(defaults.EXIT_CONFIG, f"invalid job name {name!r}: letters, digits, _ . -")
        path = directory / f"{name}.yml"
        if path.exists():
            _fail(defaults.EXIT_CONFIG, f"{path} exists; not overwriting it")
        directory.mkdir(parents=True, exist_ok=True)
        path.write_text(JOB_TEMPLATE.format(name=name))
        typer.echo(f"wrote {path}")
        schema_text = json.dumps(job_schema(), indent=2) + "\n"
        extras = (
            (directory / "job.schema.json", schema_text),
            (Path(".env.example"), ENV_TEMPLATE.format(directory=directory)),
            (Path("Procfile"), PROCFILE.format(directory=directory)),
        )
        for extra, text in extras:
            if not extra.exists():
                extra.write_text(text)
                typer.echo(f"wrote {extra}")
        typer.echo(f"next: edit {path}, then `loader run {path} --dry-run`")


JOB_TEMPLATE = """\
# yaml-language-server: $schema=./job.schema.json
# A loader job: `loader run` sends the query's rows to the target. Every key is
# described in the README (or `loader schema`); `loader show` prints what loader read.
name: {name}
source:
  url: ${{DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/postgres}}
  query: |
    SELECT id, email, updated_at FROM users
  cursor:                 # send only new rows, in (updated_at, id) order
    column: updated_at
    key: id
    lag: 30s              # leave time for transactions that commit late
target:
  url: ${{TARGET_URL:-http://127.0.0.1:8000/in}}   # `loader receive` listens there
  method: POST
  headers:
    Authorization: Bearer ${{API_TOKEN:-change-me}}
  format: json            # or ndjson
batch:
  size: 500
  max_bytes: 1MB
retry:
  attempts: 5
  backoff: 1s
schedule: "*/15 * * * *"  # for `loader clock`; remove to run by hand only
"""
ENV_TEMPLATE = """\
# Copy to .env for local runs; on Heroku use config vars instead.
DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres
TARGET_URL=http://127.0.0.1:8000/in
API_TOKEN=change-me
# LOADER_STATE_URL=postgresql://...   # keep checkpoints in PostgreSQL (needed on Heroku)
# LOADER_ALERT_URL=https://...        # where alerts go
"""
PROCFILE = """\
clock: loader clock {directory}/
release: loader validate {directory}/
"""


@app.command()
def status(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Job files or directories (default: jobs/).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON document, for machines.")
    ] = False,
    env_file: EnvFile = Path(".env"),
) -> None:
    """A table of jobs: schedule, last run, status, rows, cursor lag, next run, dead letters."""
    with _exit_codes(Redactor()):
        env = environment(env_file)
        store = open_state()
        now = time.time()
        rows: list[dict[str, Any]] = []
        queued = _queued_runs(env)
        for path in find_job_files(list(paths or [Path("jobs")])):
            try:
                job = load_job(path, env=env)
            except JobConfigError as exc:
                rows.append({"job": path.stem, "file": str(path), "problem": exc.problems[0]})
                continue
            last = next(iter(store.history(job.name, limit=1)), None)
            schedule = job.schedule_spec()
            lag = cursor_lag(store.lag_position(job.name), now)
            rows.append({
                "job": job.name,
                "file": str(path),
                "schedule": job.schedule,
                "timezone": job.timezone,
                "last_run": _when(last.started_at) if last else None,
                "status": last.status if last else None,
                "rows_posted": last.rows_posted if last else None,
                "error": job.redactor().text(last.error) if last and last.error else None,
                "cursor_lag_seconds": round(lag, 1) if lag is not None else None,
                "next_run": _when(schedule.next_after(now)) if schedule else None,
                "dead_letters": store.dead_letter_count(job.name),
                **({} if queued is None else {
                    "queued": sum(r.job == job.name and r.status == "todo" for r in queued),
                    "running": sum(r.job == job.name and r.status == "doing" for r in queued),
                }),
            })  # fmt: skip
        store.close()
        if as_json:
            typer.echo(mask_registered(json.dumps({"jobs": rows}, indent=2)))
            return
        columns = ["job", "schedule", "last run", "status", "rows", "cursor lag", "next run",
                   "dead letters"] + ([] if queued is None else ["queue"])  # fmt: skip
        table = _table(*columns)
        for row in rows:
            if "problem" in row:
                table.add_row(row["job"], "", "", "bad job file", *[""] * (len(columns) - 4))
                continue
            lag = row["cursor_lag_seconds"]
            extra = [] if queued is None else [f"{row['running']} running, {row['queued']} waiting"]
            table.add_row(
                row["job"], row["schedule"] or "(none)", row["last_run"] or "never",
                row["status"] or "", str(row["rows_posted"] or ""),
                "" if lag is None else f"{lag:.0f}s", row["next_run"] or "",
                str(row["dead_letters"]), *extra,
            )  # fmt: skip
        _console().print(table)
        for row in rows:
            if "problem" in row:
                typer.echo(mask_registered(row["problem"]), err=True)


def _queued_runs(env: dict[str, str]) -> list[Any] | None:
    """The runs waiting or running in the queue, when workers are in use."""
    if env.get(defaults.EXECUTOR_ENV) != "procrastinate" and not env.get("LOADER_QUEUE_URL"):
        return None
    from loader.workers import JobQueue, queue_url

    with JobQueue(queue_url(env)) as queue:
        return queue.runs()


@app.command()
def receive(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    body: Annotated[bool, typer.Option("--body", help="Print each request's body too.")] = False,
) -> None:
    """Serve a local endpoint that accepts every request and prints what arrives."""
    from loader.receiver import Receiver

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
    from loader.example import create_example_database
    from loader.receiver import Receiver

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
            result = run_job(job, full_refresh=True)
        _print_summary(result, job.redactor())


def main() -> None:
    """Entry point of the ``loader`` console script."""
    app()


def _load(job_file: Path, env_file: Path) -> Job:
    return load_job(job_file, env=environment(env_file))


def _retarget(job: Job, url: str) -> Job:
    try:
        return job.with_target_url(url)
    except ValueError as exc:
        raise JobConfigError([f"--target-url: {url!r} is not an http:// or https:// URL"]) from exc


def _duration(option: str, text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise JobConfigError([f"{option}: {exc}"]) from exc


def _stop_on_signals(grace: float) -> threading.Event:
    """An event set by SIGTERM or SIGINT. The run then has ``grace`` seconds to finish
    its request in flight and save its checkpoint; a second signal, or the end of the
    grace period, exits at once (every saved state is consistent at any moment)."""
    stop = threading.Event()

    def handle(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            os._exit(defaults.EXIT_INTERRUPTED)
        stop.set()
        name = signal.Signals(signum).name
        typer.echo(f"{name}: stopping after the request in flight (at most {grace:g}s)", err=True)
        timer = threading.Timer(grace, os._exit, args=(defaults.EXIT_INTERRUPTED,))
        timer.daemon = True
        timer.start()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
    return stop


@contextmanager
def _exit_codes(redactor: Redactor) -> Iterator[None]:
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
            _print_summary(exc.result, redactor, to_stderr=True)
        _fail(_exit_code(exc), redactor.text(str(exc)))
    except KeyboardInterrupt:
        _fail(defaults.EXIT_INTERRUPTED, "interrupted")
    except Exception:  # the last line of defence: never print a secret
        typer.echo(redactor.text(traceback.format_exc()), err=True)
        _fail(defaults.EXIT_INTERNAL, "internal error (the traceback above); please report it")


def _exit_code(exc: LoaderError) -> int:
    if isinstance(exc, JobLockedError):
        return defaults.EXIT_LOCKED
    if isinstance(exc, StateError):
        return defaults.EXIT_STATE
    if isinstance(exc, SourceError | CursorOrderError):
        return defaults.EXIT_SOURCE
    if isinstance(exc, SinkError | EncodingError):
        return defaults.EXIT_DELIVERY
    return defaults.EXIT_INTERNAL


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
    if result.rows_rejected:
        lines.append(f"  rejected     {result.rows_rejected:>12,}")
    if result.checkpoint is not None:
        lines.append(f"  checkpoint   {_position(result.checkpoint)}")
    typer.echo("\n".join(lines), err=to_stderr)


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[RunResult], None] | None]:
    """On a terminal, a progress line (rows/s, requests in flight); nothing otherwise."""
    if not enabled:
        yield None
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
        console=_console(stderr=True), transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("starting", total=None)
        started = time.monotonic()

        def update(result: RunResult) -> None:
            rate = result.rows_posted / max(time.monotonic() - started, 1e-6)
            bar.update(task, description=(
                f"{result.rows_posted:,} rows posted, {rate:,.0f} rows/s, "
                f"{result.in_flight} requests in flight, {result.retries} retries"
            ))  # fmt: skip

        yield update


def _position(position: Position | None) -> str:
    if position is None:
        return ""
    return ", ".join(v.isoformat() if isinstance(v, datetime) else str(v) for v in position)


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


def _table(*columns: str) -> Any:
    from rich.table import Table

    return Table(*columns)


def _console(*, stderr: bool = False) -> Any:
    from rich.console import Console  # drawing only: not paid by `loader run` off a terminal

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 200
    return Console(stderr=stderr, width=width, no_color="NO_COLOR" in os.environ)


def _show_body(body: bytes, redactor: Redactor, limit: int = 4000) -> str:
    text = redactor.text(body.decode("utf-8", "replace"))  # mask first: a cut hides nothing
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(body):,} bytes in all)"
    return text


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
