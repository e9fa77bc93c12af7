"""Commands on what the state store keeps: a job's checkpoint (``loader state``), its
dead letters (``loader deadletter``) and the tables themselves (``loader db``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from loader import defaults
from loader.cli.options import ENV_FILE, EnvFile, JobFile, Json, Yes, exit_codes, fail, load
from loader.cli.output import position, print_json, short_time, width
from loader.executors import migrate_queue, uses_queue
from loader.redact import Redactor
from loader.signals import stop_on_signals
from loader.units import when

if TYPE_CHECKING:
    from loader.state import StateStore

T = TypeVar("T")


def state_show(job_file: JobFile, as_json: Json = False, env_file: EnvFile = ENV_FILE) -> None:
    """Print the job's checkpoint and whether it still fits the job."""
    from loader.state import open_state

    with exit_codes(Redactor()):
        job = load(job_file, env_file)
        store = open_state()
        checkpoint = store.checkpoint(job.name)
        letters = store.dead_letter_count(job.name)
        keys = store.fingerprint_count(job.name) if job.source.diff else None
        store.close()
        if as_json:
            kept = None if checkpoint is None else {
                "position": list(checkpoint.position), "saved_at": when(checkpoint.updated_at),
                "run_id": checkpoint.run_id,
                "fits_the_job": checkpoint.fingerprint == job.fingerprint(),
            }  # fmt: skip
            print_json({"job": job.name, "state_store": store.url, "checkpoint": kept,
                        "dead_letters": letters, "diff_keys": keys})  # fmt: skip
            return
        typer.echo(f"job:          {job.name}")
        typer.echo(f"state store:  {store.url}")
        if checkpoint is None:
            typer.echo("checkpoint:   none (the next run starts from cursor.start)")
        else:
            fits = "yes" if checkpoint.fingerprint == job.fingerprint() else (
                "NO: the query or cursor changed; run with --full-refresh or reset"
            )  # fmt: skip
            saved = when(checkpoint.updated_at)
            typer.echo(f"checkpoint:   {position(checkpoint.position)}")
            typer.echo(f"saved:        {saved} by run {checkpoint.run_id}")
            typer.echo(f"fits the job: {fits}")
        typer.echo(f"dead letters: {letters}")
        if keys is not None:
            typer.echo(
                f"diff keys:    {keys:,} tracked (reset forgets them: the next run sends all)"
            )


def state_reset(job_file: JobFile, yes: Yes = False, env_file: EnvFile = ENV_FILE) -> None:
    """Forget the job's checkpoint (a diff sync's keys): the next run starts from
    cursor.start (sends every row)."""
    with exit_codes(Redactor()):
        job = load(job_file, env_file)
        removed = _confirmed(yes, f"Reset the checkpoint of {job.name}?", "not reset",
                             lambda store: store.reset(job.name))  # fmt: skip
        typer.echo(f"{job.name}: checkpoint {'reset' if removed else 'was already empty'}")


def deadletter_list(
    job_file: JobFile,
    limit: Annotated[int, typer.Option(min=1, help="How many to show.")] = (
        defaults.DEAD_LETTER_LIST_LIMIT
    ),
    as_json: Json = False,
    env_file: EnvFile = ENV_FILE,
) -> None:
    """Show the job's dead letters: which row (its cursor key), the status, the
    endpoint's answer, the URL and the row as read."""
    from loader.letters import row_key, shown
    from loader.state import open_state

    with exit_codes(Redactor()):
        job = load(job_file, env_file)
        store = open_state()
        letters = store.dead_letters(job.name, limit)
        total = store.dead_letter_count(job.name)
        store.close()
        redactor = job.redactor()
        if as_json:
            print_json({"job": job.name, "total": total, "dead_letters": [
                {"id": letter.id, "key": row_key(job, letter), "status": letter.status,
                 "answer": redactor.text(letter.excerpt), "run_id": letter.run_id,
                 "created_at": when(letter.created_at), "attempts": letter.attempts,
                 "url": redactor.url(letter.url) if letter.url else None,
                 "row": _parsed(shown(letter, redactor))}
                for letter in letters]})  # fmt: skip
            return
        columns, cut = width(), False
        for letter in letters:
            head = f"#{letter.id} {row_key(job, letter)}: status {letter.status}: "
            lines = [
                head + " ".join(redactor.text(letter.excerpt).split()),
                f"  run {letter.run_id} at {short_time(letter.created_at)}, "
                f"{letter.attempts} attempt(s)"
                + (f", sent to {redactor.url(letter.url)}" if letter.url else ""),
                f"  {shown(letter, redactor)}",
            ]
            for line in lines:
                cut = cut or len(line) > columns
                typer.echo(line if len(line) <= columns else line[: columns - 1] + "…")
        if cut:
            typer.echo("lines cut to fit: --json shows them whole")
        typer.echo(
            f"{job.name}: {total} dead letters" + (f", {limit} shown" if total > limit else "")
        )


def deadletter_replay(job_file: JobFile, env_file: EnvFile = ENV_FILE) -> None:
    """Send the job's dead letters again; those accepted leave the table."""
    from loader.monitor import flush as flush_notifications
    from loader.replay import replay_dead_letters

    with exit_codes(Redactor()):
        job = load(job_file, env_file)
    with exit_codes(job.redactor()):
        result = replay_dead_letters(job, stop=stop_on_signals(defaults.GRACE_PERIOD))
        flush_notifications(timeout=defaults.NOTIFY_FLUSH_TIMEOUT)
        typer.echo(
            f"{job.name}: {result.delivered} delivered, {result.rejected} rejected again"
            + (f", {result.unsendable} could not be sent (see above)" if result.unsendable else "")
        )
        if result.rejected or result.unsendable:
            raise typer.Exit(defaults.EXIT_REJECTED_ROWS)


def deadletter_purge(job_file: JobFile, yes: Yes = False, env_file: EnvFile = ENV_FILE) -> None:
    """Delete the job's dead letters for good (exit 5 while a run or replay holds the
    job's lock)."""
    with exit_codes(Redactor()):
        job = load(job_file, env_file)
        removed = _confirmed(yes, f"Delete every dead letter of {job.name}?", "nothing deleted",
                             lambda store: store.purge_dead_letters(job.name))  # fmt: skip
        typer.echo(f"{job.name}: {removed} dead letters deleted")


def db_upgrade(env_file: EnvFile = ENV_FILE) -> None:
    """Create the state store's tables, and the queue's when LOADER_EXECUTOR=procrastinate
    or LOADER_QUEUE_URL is set (safe to run on every release)."""
    from loader.jobfile import environment
    from loader.state import open_state

    with exit_codes(Redactor()):
        env = environment(env_file)
        open_state().close()
        typer.echo("state store ready")
        if uses_queue(env):
            created = migrate_queue(env)
            typer.echo("queue tables created" if created else "queue tables ready")


def _parsed(text: str) -> Any:
    """``text`` as the JSON value it holds, else as text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _confirmed(yes: bool, question: str, refusal: str, change: Callable[[StateStore], T]) -> T:
    """Ask ``question`` (unless ``yes``), then make ``change`` to the state store; a "no"
    exits with the config code and ``refusal``."""
    from loader.state import open_state

    if not yes and not _answer(question):
        fail(defaults.EXIT_CONFIG, refusal)
    store = open_state()
    try:
        return change(store)
    finally:
        store.close()


def _answer(question: str) -> bool:
    """The user's answer to ``question``; without one (stdin at its end, as from a script
    or /dev/null) an error asking for ``--yes``."""
    try:
        return typer.confirm(question)
    except typer.Abort:
        typer.echo("", err=True)
        fail(
            defaults.EXIT_CONFIG, "no answer to confirm with (stdin is not a terminal); pass --yes"
        )
