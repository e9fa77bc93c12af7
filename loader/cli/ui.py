"""``loader ui``: the status page served from the state store, without a clock."""

from __future__ import annotations

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
from loader.redact import Redactor
from loader.signals import stop_on_signals
from loader.units import format_duration

UiPort = Annotated[
    int | None,
    typer.Option(envvar="PORT", help=f"Port to listen on ($PORT, else {defaults.UI_PORT})."),
]
Host = Annotated[str, typer.Option(help="Address to listen on.")]
Refresh = Annotated[
    str,
    typer.Option(
        envvar=defaults.UI_REFRESH_ENV,
        help=f"How often the page reloads itself (${defaults.UI_REFRESH_ENV}); at least 1s.",
    ),
]
#: The default of ``--refresh``, as written on the command line.
UI_REFRESH = format_duration(defaults.UI_REFRESH)


def ui(
    paths: JobPaths = None,
    port: UiPort = None,
    host: Host = "0.0.0.0",
    refresh: Refresh = UI_REFRESH,
    env_file: EnvFile = ENV_FILE,
) -> None:
    """Serve the status page (jobs, last runs, errors) from the state store until
    SIGTERM, without a clock; asks for $LOADER_UI_PASSWORD when set."""
    from loader.jobfile import environment
    from loader.scheduler import serve_status_page  # the clock's server, loaded only here

    log_progress_to_stdout()
    with exit_codes(Redactor()):
        env = environment(env_file)
        roots = job_roots(paths)
        missing = [root for root in roots if not root.exists()]
        if missing:
            fail(
                defaults.EXIT_CONFIG,
                f"no such job file or directory: {', '.join(map(str, missing))}",
            )
        period = duration("--refresh", refresh)
        if period < 1:
            fail(defaults.EXIT_CONFIG, f"--refresh {refresh}: expected at least 1s")
        port = defaults.UI_PORT if port is None else port
        try:
            server = serve_status_page(roots, env, port, host, refresh=period)
        except OSError as exc:
            fail(
                defaults.EXIT_CONFIG,
                f"cannot serve the status page on port {port} ({exc.strerror}): another "
                "process holds it; choose a free one with --port (or $PORT)",
            )
        typer.echo(f"serving the status page on http://{host}:{server.port}/ (Ctrl-C to stop)")
        stop = stop_on_signals(grace=5)
        stop.wait()
        server.close()
        typer.echo("stopped")
