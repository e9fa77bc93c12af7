"""Authoring tools: the JSON Schema, `loader init`, `loader show`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loader import defaults, load_job
from loader.cli import app
from loader.jobfile import job_schema

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_the_committed_schema_matches_the_model() -> None:
    """schema/job.schema.json is what `loader schema` prints (regenerate it if not)."""
    committed = json.loads((ROOT / "schema" / "job.schema.json").read_text())
    assert committed == job_schema(), "run: loader schema > schema/job.schema.json"
    assert committed["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert "$defs" not in json.dumps(committed)
    assert set(committed["properties"]) >= {"name", "source", "target", "batch", "schedule"}


def test_schema_command_prints_it() -> None:
    """`loader schema` prints the same document."""
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0 and json.loads(result.stdout) == job_schema()


def test_init_scaffolds_a_job_that_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """init writes a commented job file that loads, the schema it points at, a
    .env.example and a Procfile; it never overwrites a job file."""
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["init", "orders"])

    assert result.exit_code == 0, result.output
    text = (tmp_path / "jobs" / "orders.yml").read_text()
    assert text.startswith("# yaml-language-server: $schema=./job.schema.json\n")
    assert json.loads((tmp_path / "jobs" / "job.schema.json").read_text()) == job_schema()
    assert "DATABASE_URL=" in (tmp_path / ".env.example").read_text()
    assert (tmp_path / "Procfile").read_text().startswith("clock: loader clock jobs/")
    job = load_job(tmp_path / "jobs" / "orders.yml", env={})
    assert job.name == "orders" and job.source.cursor is not None and job.schedule

    again = runner.invoke(app, ["init", "orders"])
    assert again.exit_code == defaults.EXIT_CONFIG and "not overwriting" in again.stderr


def test_show_fills_defaults_and_masks_secrets(tmp_path: Path) -> None:
    """show prints what loader read: every default, no secret."""
    path = tmp_path / "j.yml"
    path.write_text(
        "source: {url: 'postgresql://app:db-secret-pw@db/app', query: SELECT 1}\n"
        "target:\n  url: http://h/in\n  headers: {X-Api-Key: key-secret-123}\n"
        "  auth: {basic: {username: writekey-secret, password: ''}}\n"
    )
    result = runner.invoke(app, ["show", str(path)])

    assert result.exit_code == 0, result.output
    for secret in ("db-secret-pw", "key-secret-123", "writekey-secret"):
        assert secret not in result.stdout
    assert "statement_timeout: 5m" in result.stdout and "size: 500" in result.stdout
    assert "name: j" in result.stdout
