"""``loader init``: a commented job file to start from, and the project files around
it (the job files' JSON Schema, ``.env.example``, a ``Procfile``) when absent."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated

import typer

from loader import defaults
from loader.cli.options import exit_codes, fail
from loader.redact import Redactor

#: A job's name: what ``init`` accepts (it becomes a file name).
JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


Name = Annotated[str, typer.Argument(help=f"The job's name; writes {defaults.JOBS_DIR}/NAME.yml.")]
Directory = Annotated[Path, typer.Option("--dir", help="Where job files live.")]


def init(name: Name, directory: Directory = Path(defaults.JOBS_DIR)) -> None:
    """Scaffold a commented job file (and .env.example and a Procfile when absent)."""
    from loader.jobfile import job_schema

    with exit_codes(Redactor()):
        if not JOB_NAME.fullmatch(name):
            fail(defaults.EXIT_CONFIG, f"invalid job name {name!r}: letters, digits, _ . -")
        path = directory / f"{name}.yml"
        if path.exists():
            fail(defaults.EXIT_CONFIG, f"{path} exists; not overwriting it")
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
