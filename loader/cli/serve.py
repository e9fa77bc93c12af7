"""The long-running commands: the clock, the workers, the local receiver, and the demo
that runs the example job against a receiver."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from loader import defaults
from loader.cli.options import (
    ENV_FILE,
    EnvFile,
    JobPaths,
    duration,
    exit_codes,
    fail,
    job_roots,
    log_progress_to_stdout,
)
from loader.cli.output import (
    filter_effect,
    print_received,
    print_summary,
    received_summary,
    trimmed_body,
)
from loader.errors import JobConfigError
from loader.executors import choose_executor, open_enqueue
from loader.redact import Redactor
from loader.signals import clock_signals
from loader.units import format_duration

MaxParallel = Annotated[int, typer.Option(min=1, help="Runs at once.")]
StopGrace = Annotated[
    str, typer.Option(help="On SIGTERM, time for running jobs to checkpoint and end.")
]
Strict = Annotated[bool, typer.Option("--strict", help="Refuse to start if any job file is bad.")]
Port = Annotated[
    int | None,
    typer.Option(envvar="PORT", help="Serve /metrics and /healthz on this port ($PORT)."),
]
Executor = Annotated[
    str | None,
    typer.Option(
        help="inline: run jobs in this process; procrastinate: queue them for "
        f"`loader worker` (default: ${defaults.EXECUTOR_ENV}, from the environment or "
        f"{defaults.ENV_FILE}, else inline).",
    ),
]
StalledAfter = Annotated[
    str,
    typer.Option(
        help="Put a worker's runs back in the queue after this long without a heartbeat from it."
    ),
]
Migrate = Annotated[
    bool, typer.Option("--migrate", help="Create the queue's tables first if missing.")
]


def _grace(text: str) -> float:
    """``--grace`` in seconds; refused above the cap rather than silently shortened."""
    seconds = duration("--grace", text)
    if seconds > defaults.MAX_CLOCK_GRACE:
        fail(
            defaults.EXIT_CONFIG,
            f"--grace {text}: at most {defaults.MAX_CLOCK_GRACE:.0f}s, because Heroku "
            "kills a dyno 30 s after SIGTERM; the rest is left for the exit itself",
        )
    return seconds


#: The defaults of ``--grace`` and ``--stalled-after``, as written on the command line.
CLOCK_GRACE = format_duration(defaults.CLOCK_GRACE)
WORKER_GRACE = format_duration(defaults.WORKER_GRACE)
STALLED_AFTER = format_duration(defaults.WORKER_STALLED_AFTER)


def clock(
    paths: JobPaths = None,
    max_parallel: MaxParallel = defaults.CLOCK_MAX_PARALLEL,
    grace: StopGrace = CLOCK_GRACE,
    strict: Strict = False,
    port: Port = None,
    executor: Executor = None,
    env_file: EnvFile = ENV_FILE,
) -> None:
    """Run the job files on their schedules until SIGTERM (a Heroku clock dyno)."""
    from loader.jobfile import environment
    from loader.scheduler import Clock  # loaded only here: the other commands do without it

    log_progress_to_stdout()
    with exit_codes(Redactor()):
        grace_seconds = _grace(grace)
        env = environment(env_file)
        roots = job_roots(paths)
        _refuse_missing_job_files(roots)
        if strict:
            _refuse_bad_job_files(roots, env)
        try:
            executor = choose_executor(executor, env)
        except ValueError as exc:
            fail(defaults.EXIT_CONFIG, f"--executor (or {defaults.EXECUTOR_ENV}): {exc}")
        enqueue = open_enqueue(executor, env)
        stop, reload = threading.Event(), threading.Event()
        clock_signals(stop, reload, grace_seconds)
        Clock(
            roots, max_parallel=max_parallel, grace=grace_seconds, env=env, metrics_port=port,
            enqueue=enqueue,
        ).run(stop, reload)  # fmt: skip
        # Runs still going after the grace period are abandoned (their state is consistent
        # at any moment); do not wait for their threads at interpreter exit.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(defaults.EXIT_OK)


def _refuse_missing_job_files(roots: list[Path]) -> None:
    """A clock with nothing to run is a typo in its command line: refuse to start."""
    from loader.jobfile import find_job_files

    missing = [root for root in roots if not root.exists()]
    if missing:
        fail(defaults.EXIT_CONFIG, f"no such job file or directory: {', '.join(map(str, missing))}")
    if not find_job_files(roots):
        named = ", ".join(map(str, roots))
        fail(defaults.EXIT_CONFIG, f"no job files (*.yml, *.yaml) in {named}: nothing to schedule")


def _refuse_bad_job_files(roots: list[Path], env: dict[str, str]) -> None:
    from loader.jobfile import find_job_files

    bad = [problem for path in find_job_files(roots) for problem in _problems(path, env)]
    if bad:
        for problem in bad:
            typer.echo(problem, err=True)
        fail(defaults.EXIT_CONFIG, "bad job files (--strict): not starting")


def _problems(path: Path, env: dict[str, str]) -> list[str]:
    from loader.jobfile import load_job

    try:
        load_job(path, env=env)
    except JobConfigError as exc:
        return exc.problems
    return []


def worker(
    paths: JobPaths = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Runs at once.")] = (
        defaults.WORKER_CONCURRENCY
    ),
    stalled_after: StalledAfter = STALLED_AFTER,
    migrate: Migrate = False,
    grace: StopGrace = WORKER_GRACE,
    env_file: EnvFile = ENV_FILE,
) -> None:
    """Run queued runs (from `loader clock` with LOADER_EXECUTOR=procrastinate, or
    `loader run --enqueue`) until SIGTERM: a Heroku worker dyno; start as many as needed."""
    from loader.jobfile import environment
    from loader.state import open_state
    from loader.workers import JobQueue, queue_url

    log_progress_to_stdout()
    with exit_codes(Redactor()):
        env = environment(env_file)
        stalled = duration("--stalled-after", stalled_after)
        grace_seconds = _grace(grace)
        stop, reload = threading.Event(), threading.Event()
        clock_signals(stop, reload, grace_seconds)
        store = open_state()
        with JobQueue(queue_url(env)) as queue:
            if migrate and queue.migrate():
                typer.echo("created the queue's tables")
            typer.echo(f"worker started: {concurrency} run(s) at once, queue {queue.queue!r}")
            queue.work(
                job_roots(paths), store, stop=stop, concurrency=concurrency,
                stalled_after=stalled, env=env,
            )  # fmt: skip
        store.close()
        typer.echo("worker stopped")


def receive(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = defaults.RECEIVER_HOST,
    port: Annotated[int, typer.Option(help="Port to listen on.")] = defaults.RECEIVER_PORT,
    body: Annotated[bool, typer.Option("--body", help="Print each request's body too.")] = False,
) -> None:
    """Serve a local endpoint that accepts every request and prints what arrives."""
    from loader.receiver import Receiver

    try:
        receiver = Receiver(host, port, on_request=lambda r: print_received(r, show_body=body))
    except OSError as exc:
        fail(
            defaults.EXIT_CONFIG,
            f"cannot listen on {host}:{port} ({exc.strerror}); "
            "is another receiver running? choose another with --port",
        )
    typer.echo(f"listening on {receiver.url} (Ctrl-C to stop)")
    try:
        receiver.serve_forever()
    except KeyboardInterrupt:
        typer.echo("stopped")


#: The demo's own state store, beside its database: its runs never enter a job's history.
DEMO_STATE = "demo-state.db"
#: Requests whose bodies the demo prints.
DEMO_BODIES = 2


def demo(
    job_file: Annotated[Path, typer.Option("--job", help="The example job.")] = Path(
        defaults.JOBS_DIR, "example.yml"
    ),
    rows: Annotated[int, typer.Option(min=1, help="Sign-ups in the example database.")] = (
        defaults.DEMO_ROWS
    ),
    database: Annotated[Path, typer.Option(help="Where to create the SQLite database.")] = Path(
        ".loader/example.db"
    ),
) -> None:
    """Create the example SQLite database, start a local receiver and run the example job;
    print what its query keeps, the first requests as they arrived and a summary. The run
    is recorded in its own state store beside the database (demo-state.db), never in the
    job's."""
    from loader.example import create_example_database
    from loader.jobfile import environment, load_job
    from loader.outcome import run_job
    from loader.receiver import Receiver
    from loader.state import open_state

    with exit_codes(Redactor()):
        created = create_example_database(database, rows)
        typer.echo(f"created {created}: {rows:,} sign-ups")
        with Receiver() as receiver:
            env = {
                **environment(),
                "DATABASE_URL": f"sqlite:///{created}",
                "TARGET_URL": f"{receiver.url}/v1/import",
            }
            # Whatever the job's own target, the demo sends to its receiver only.
            job = load_job(job_file, env=env).with_target_url(env["TARGET_URL"])
            typer.echo(f"running {job_file} against the receiver at {receiver.url}")
            store = open_state(f"sqlite:///{created.parent / DEMO_STATE}")
            try:
                # No heartbeats or alerts: a demo run is nobody's outage.
                result = run_job(job, state=store, full_refresh=True, monitor=False)
            finally:
                store.close()
        typer.echo(filter_effect(job.source.query, job.source.params, result.rows_read, rows))
        for number, request in enumerate(receiver.received[:DEMO_BODIES], start=1):
            typer.echo(f"--- request {number} of {len(receiver.received)} as received: "
                       f"{request.method} {request.path}, {request.rows} rows ---")  # fmt: skip
            typer.echo(trimmed_body(request.body))
        typer.echo(received_summary(receiver.received))
        print_summary(result, job.redactor())
