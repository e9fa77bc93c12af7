"""The ``loader`` command: parse arguments, call one library function, render, map
errors to exit codes (see :mod:`loader.defaults`). Nothing here that a library user
would need.

This module builds the typer application from the commands of its submodules: ``run``
(one run, or queue it), ``inspect`` (look without changing anything), ``store`` (the
state store's checkpoints, dead letters and tables), ``serve`` (clock, worker, receiver,
demo) and ``scaffold`` (``init``). Commands that need a heavy library (the queue, the
clock, the receiver) import it when called, so every run does not pay for it.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Any

import typer

from loader import defaults
from loader._version import __version__
from loader.cli import inspect, run, scaffold, serve, store, ui
from loader.cli.options import log_to, quiet_stdout, set_log_format, set_log_level
from loader.logs import LOG_FORMATS, LOG_LEVELS

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

EXIT_CODES_HELP = (
    f"Exit codes: {defaults.EXIT_OK} delivered, {defaults.EXIT_CONFIG} bad job file or usage, "
    f"{defaults.EXIT_SOURCE} database failed, {defaults.EXIT_DELIVERY} delivery failed, "
    f"{defaults.EXIT_LOCKED} locked, {defaults.EXIT_REJECTED_ROWS} done with rejected rows, "
    f"{defaults.EXIT_STATE} state store failed, {defaults.EXIT_INTERRUPTED} interrupted, "
    f"{defaults.EXIT_CLOSED_PIPE} output closed (| head), {defaults.EXIT_INTERNAL} internal error."
)
CLOCK_EXIT_CODES_HELP = (
    f"Exit codes: {defaults.EXIT_OK} stopped by a signal, "
    f"{defaults.EXIT_CONFIG} no job files, a bad option, or bad job files with --strict."
)
WORKER_EXIT_CODES_HELP = (
    f"Exit codes: {defaults.EXIT_OK} stopped by a signal, {defaults.EXIT_CONFIG} bad "
    f"configuration, {defaults.EXIT_STATE} queue failed."
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
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log run progress (--log-level info).")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Log errors only (--log-level error).")
    ] = False,
    log_level: Annotated[
        str | None,
        typer.Option(
            "--log-level",
            envvar=defaults.LOG_LEVEL_ENV,
            help="debug, info, warning or error; wins over -v and -q. Default: warning "
            "(info for clock and worker).",
        ),
    ] = None,
    log_format: Annotated[
        str,
        typer.Option(
            "--log-format",
            envvar=defaults.LOG_FORMAT_ENV,
            help="text, json or logfmt; auto: text on a terminal, JSON lines off one.",
        ),
    ] = "auto",
) -> None:
    if log_format not in LOG_FORMATS:
        raise typer.BadParameter(
            f"expected one of {', '.join(LOG_FORMATS)}, got {log_format!r}",
            param_hint="--log-format",
        )
    if log_level is not None and log_level.lower() not in LOG_LEVELS:
        raise typer.BadParameter(
            f"expected one of {', '.join(LOG_LEVELS)}, got {log_level!r}",
            param_hint="--log-level",
        )
    set_log_format(log_format)
    chosen = LOG_LEVELS[log_level.lower()] if log_level else logging.ERROR if quiet else None
    set_log_level(chosen)
    log_to(chosen or (logging.INFO if verbose else logging.WARNING), sys.stderr)


# Registered in this order, which is the order of `loader --help`.
app.command(epilog=EXIT_CODES_HELP)(run.run)
app.command(epilog=WORKER_EXIT_CODES_HELP)(serve.worker)
db_app.command("upgrade")(store.db_upgrade)
app.command()(inspect.validate)
app.command()(inspect.history)
state_app.command("show")(store.state_show)
state_app.command("reset")(store.state_reset)
deadletter_app.command("list")(store.deadletter_list)
deadletter_app.command("replay")(store.deadletter_replay)
deadletter_app.command("purge")(store.deadletter_purge)
app.command(epilog=CLOCK_EXIT_CODES_HELP)(serve.clock)
app.command()(inspect.show)
app.command()(inspect.check)
app.command()(inspect.schema)
app.command()(scaffold.init)
app.command()(inspect.status)
app.command()(ui.ui)
app.command()(serve.receive)
app.command()(serve.demo)


#: The options of ``loader`` itself that may also follow the command, and whether each
#: takes a value.
GLOBAL_OPTIONS = {
    "-v": False,
    "--verbose": False,
    "-q": False,
    "--quiet": False,
    "--log-level": True,
    "--log-format": True,
}


def hoist_global_options(argv: list[str], command: Any) -> list[str]:
    """``argv`` with the global options written after the command moved before it, so
    ``loader run JOB -v`` means ``loader -v run JOB``. An option the (sub)command defines
    under the same name stays with it, and nothing after ``--`` moves."""
    end = argv.index("--") if "--" in argv else len(argv)
    moved: list[str] = []
    kept: list[str] = []
    current, inside, i = command, False, 0
    while i < end:
        token = argv[i]
        name = token.split("=", 1)[0]
        commands = getattr(current, "commands", None)
        if commands is not None and token in commands:
            current, inside = commands[token], True
        elif inside and name in GLOBAL_OPTIONS and name not in _options_of(current):
            takes_value = GLOBAL_OPTIONS[name] and "=" not in token and i + 1 < end
            moved.extend(argv[i : i + 2] if takes_value else [token])
            i += 2 if takes_value else 1
            continue
        kept.append(token)
        i += 1
    return moved + kept + argv[end:]


def _options_of(command: Any) -> set[str]:
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}


def main() -> None:
    """Entry point of the ``loader`` console script."""
    argv = sys.argv[1:]
    if any(token.split("=", 1)[0] in GLOBAL_OPTIONS for token in argv):
        argv = hoist_global_options(argv, typer.main.get_command(app))
    try:
        app(args=argv)
    except BrokenPipeError:
        quiet_stdout()
        sys.exit(defaults.EXIT_CLOSED_PIPE)
