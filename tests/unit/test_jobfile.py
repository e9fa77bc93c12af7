"""Job files: YAML, interpolation, validation, and errors that name file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from loader import Job, JobConfigError, build_job, load_job, parse_job
from loader.jobfile import environment
from loader.partitions import range_job

MINIMAL = """\
source:
  url: postgresql://app@db/app
  query: SELECT 1
target:
  url: https://api.example.com/import
"""


def parse(text: str, env: dict[str, str] | None = None) -> Job:
    return parse_job(text, filename="jobs/x.yml", env=env or {})


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(JobConfigError) as caught:
        parse_job(text, filename="jobs/x.yml", env=env or {})
    return caught.value.problems


def test_minimal_job_gets_documented_defaults() -> None:
    """Only source.url, source.query and target.url are required."""
    job = parse_job(MINIMAL, filename="jobs/signups.yml", env={})

    assert job.name == "signups"
    assert job.target.method == "POST" and job.target.format == "json"
    assert job.batch.size == 500 and job.batch.max_bytes == 1_000_000
    assert (job.retry.attempts, job.retry.backoff, job.retry.max_backoff) == (5, 1.0, 60.0)
    assert job.target.timeout == 30.0 and job.source.statement_timeout == 300.0


def test_the_issue_example_parses() -> None:
    """The full example of the job file contract loads with every key understood."""
    text = """\
name: signups_to_crm
source:
  url: ${DATABASE_URL}
  query: |
    SELECT id, email, plan, created_at FROM users WHERE plan = :plan ORDER BY id
  params: {plan: pro}
target:
  url: https://api.example.com/v1/import
  method: POST
  headers:
    Authorization: Bearer ${CRM_TOKEN}
  format: json
  envelope: users
  timeout: 30s
batch:
  size: 500
  max_bytes: 1MB
retry:
  attempts: 5
  backoff: 1s
  max_backoff: 60s
"""
    job = parse(text, env={"DATABASE_URL": "postgres://u:p@h/d", "CRM_TOKEN": "t0k3n"})

    assert job.source.url == "postgres://u:p@h/d"
    assert job.source.params == {"plan": "pro"}
    assert job.target.headers == {"Authorization": "Bearer t0k3n"}
    assert job.target.envelope is not None and job.target.envelope.key == "users"
    assert job.batch.max_bytes == 1_000_000 and job.retry.max_backoff == 60.0


def test_interpolation_defaults_escapes_and_non_strings() -> None:
    """${VAR}, ${VAR:-default} and $${ work in string values; other values are untouched."""
    text = (
        MINIMAL
        + """\
  headers:
    X-A: ${A}
    X-B: ${B:-fallback}
    X-C: ${C:-}
    X-Literal: $${NOT_A_VAR} costs $5
batch:
  size: ${SIZE:-250}
"""
    )
    job = parse(text, env={"A": "from-env"})

    assert job.target.headers == {
        "X-A": "from-env",
        "X-B": "fallback",
        "X-C": "",
        "X-Literal": "${NOT_A_VAR} costs $5",
    }
    assert job.batch.size == 250


def test_every_problem_is_reported_at_once_with_line_and_key() -> None:
    """All problems come together, sorted by line, as file:line: key.path: message."""
    text = """\
source:
  url: postgresql://app@db/app
  query: SELECT 1
  parms: {a: 1}
target:
  url: ftp://example.com
  method: GET
  headers:
    Authorization: Bearer ${CRM_TOKEN}
batch:
  size: 0
  max_bytes: 100
retry:
  attempts: five
  backoff: 3
"""
    assert problems(text) == [
        "jobs/x.yml:4: source.parms: unknown key; did you mean 'params'? "
        "(allowed: url, query, params, statement_timeout, fetch_size, cursor, partition, "
        "diff)",
        "jobs/x.yml:6: target.url: expected an http:// or https:// URL with a host, "
        "such as https://api.example.com/v1/import",
        "jobs/x.yml:7: target.method: expected one of 'POST', 'PUT', 'PATCH' or 'DELETE', "
        "got 'GET'",
        "jobs/x.yml:9: target.headers.Authorization: environment variable CRM_TOKEN is not "
        "set; set it (or put it in .env), or give a default: ${CRM_TOKEN:-value}",
        "jobs/x.yml:11: batch.size: expected a value >= 1, got 0",
        "jobs/x.yml:12: batch.max_bytes: expected a size with a unit such as 500KB or 1MB, got 100",
        "jobs/x.yml:14: retry.attempts: expected an integer, got 'five'",
        "jobs/x.yml:15: retry.backoff: expected a duration with a unit such as 30s or 250ms, got 3",
    ]


def test_missing_required_keys_point_at_their_section() -> None:
    """A missing key is reported at its parent's line."""
    text = "source:\n  url: sqlite:///a.db\ntarget:\n  method: PUT\n"

    assert problems(text) == [
        "jobs/x.yml:1: source.query: required key is missing",
        "jobs/x.yml:3: target.url: required key is missing",
    ]


def test_unknown_top_level_key_suggests_the_right_one() -> None:
    """A typo at the top level gets a did-you-mean too."""
    (problem,) = problems(MINIMAL + "retyr:\n  attempts: 3\n")

    assert problem.startswith("jobs/x.yml:6: retyr: unknown key; did you mean 'retry'?")


def test_malformed_yaml_names_the_line() -> None:
    """Broken YAML is reported with its line, and nothing else is attempted."""
    (problem,) = problems(MINIMAL + "batch:\n  size: 5\n   max_bytes: 1MB\n")

    assert problem.startswith("jobs/x.yml:8: invalid YAML:")


def test_duplicate_keys_are_refused() -> None:
    """YAML silently keeps the last duplicate; loader refuses it."""
    (problem,) = problems(MINIMAL + "batch:\n  size: 5\n  size: 6\n")

    assert problem == "jobs/x.yml:8: batch.size: duplicate key (first at line 7)"


def test_a_file_that_is_not_a_mapping() -> None:
    """A list or a scalar at the top is refused with the expected shape."""
    assert problems("- a\n- b\n") == [
        "jobs/x.yml:1: expected a mapping of keys (name, source, ...)"
    ]


def test_malformed_variable_reference() -> None:
    """An unterminated or invalid ${...} is an error, not a silent literal."""
    (problem,) = problems(MINIMAL.replace("SELECT 1", "SELECT '${oops'"))

    assert problem.startswith("jobs/x.yml:3: source.query: malformed variable reference")


def test_query_parameters_must_match_params() -> None:
    """A :name without a param, or a param the query does not use, is an error."""
    text = MINIMAL.replace(
        "  query: SELECT 1", "  query: SELECT * FROM t WHERE plan = :plan\n  params: {plam: pro}"
    )
    assert problems(text) == [
        "jobs/x.yml:1: source: the query uses :plan but params has no 'plan' (write \\:plan "
        "for a literal colon, e.g. in JSON text); params.plam is not used by the query "
        "(no :plam in it)"
    ]


def test_envelope_forms_and_conflicts() -> None:
    """envelope takes a key or {key, fields}; it conflicts with ndjson and its own fields."""
    job = parse(
        MINIMAL + "  envelope: {key: events, fields: {api_key: '${KEY}'}}\n", env={"KEY": "abc"}
    )
    assert job.target.envelope is not None
    assert job.target.envelope.fields == {"api_key": "abc"}
    assert "abc" in job.secrets()

    assert problems(MINIMAL + "  format: ndjson\n  envelope: rows\n") == [
        "jobs/x.yml:4: target: envelope works with format: json only; remove one of them"
    ]
    assert problems(MINIMAL + "  envelope: {key: rows, fields: {rows: 1}}\n") == [
        "jobs/x.yml:6: target.envelope: fields must not contain the rows' key 'rows'"
    ]


def test_job_name_must_be_safe() -> None:
    """Names are letters, digits, '_', '.', '-' (they key state and idempotency keys)."""
    (problem,) = problems("name: 'bad name!'\n" + MINIMAL)

    assert problem.startswith("jobs/x.yml:1: name: expected letters, digits")


def test_secrets_interpolated_from_secret_named_variables_are_masked() -> None:
    """Values of variables named like secrets join the job's secrets."""
    text = MINIMAL.replace("SELECT 1", "SELECT '${API_SECRET}' AS s")
    job = parse(text, env={"API_SECRET": "hunter22"})

    assert "hunter22" in job.secrets()
    assert job.redactor().text("x hunter22 y") == "x *** y"


def test_errors_never_show_a_secret_value() -> None:
    """Wrongly typed header and field values are not echoed back in problems."""
    text = MINIMAL + (
        "  headers:\n    X-Api-Key: 12345678901234\n"
        "  envelope: {key: e, fields: {api_key: {nested: 98765432109}}}\n"
    )
    found = problems(text)

    assert len(found) == 1
    assert "12345678901234" not in found[0] and "(value hidden)" in found[0]


def test_header_values_must_be_sendable() -> None:
    """A trailing newline (or non-ASCII) in a header is refused, naming only the header."""
    found = problems(MINIMAL + "  headers:\n    Authorization: ${TOKEN}\n", {"TOKEN": "tok\n"})

    assert found == [
        "jobs/x.yml:6: target.headers: header 'Authorization' contains a line break "
        "(a trailing newline from a secret file?); remove it"
    ]


def test_envelope_fields_are_masked_in_repr() -> None:
    """repr() of a job never shows secret envelope fields."""
    job = parse(MINIMAL + "  envelope: {key: e, fields: {api_key: sekrit-value}}\n")

    assert "sekrit-value" not in repr(job)


def test_bind_parameters_follow_sqlalchemy_rules() -> None:
    """A ':word' inside quotes is a parameter to SQLAlchemy too; the hint says how to
    write a literal colon."""
    text = MINIMAL.replace("SELECT 1", "SELECT 1 WHERE doc @> '{\"a\":true}'")
    (problem,) = problems(text)
    assert "the query uses :true" in problem and "\\:true" in problem

    parse(MINIMAL.replace("SELECT 1", "SELECT 1 WHERE doc @> '{\"a\"\\:true}'"))


def test_load_job_reads_a_file_and_names_it(tmp_path: Path) -> None:
    """load_job uses the file's stem as the default name; a missing file is a clear error."""
    path = tmp_path / "orders.yml"
    path.write_text(MINIMAL)
    assert load_job(path, env={}).name == "orders"

    with pytest.raises(JobConfigError, match=r"nope\.yml: cannot read the job file: No such"):
        load_job(tmp_path / "nope.yml", env={})


def test_environment_reads_dotenv_without_overriding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """.env fills in variables; the real environment wins."""
    dotenv = tmp_path / ".env"
    dotenv.write_text("FROM_FILE=file\nBOTH=file\n")
    monkeypatch.setenv("BOTH", "process")

    env = environment(dotenv)

    assert env["FROM_FILE"] == "file" and env["BOTH"] == "process"


def test_build_job_from_python_reports_problems_like_files() -> None:
    """build_job validates a mapping and raises JobConfigError, never a pydantic error."""
    with pytest.raises(JobConfigError) as caught:
        build_job({"name": "x", "source": {"url": "sqlite://"}, "target": {}}, env={})

    assert caught.value.problems == [
        "<job>: source.query: required key is missing",
        "<job>: target.url: required key is missing",
    ]
    assert isinstance(caught.value, ValueError)


def test_an_empty_variable_takes_the_default_as_in_the_shell() -> None:
    """${VAR:-default} uses the default when VAR is set but empty; ${VAR} stays empty."""
    text = MINIMAL + "  headers:\n    X-A: ${A:-fallback}\n    X-B: '[${A}]'\n"
    job = parse(text, env={"A": ""})

    assert job.target.headers == {"X-A": "fallback", "X-B": "[]"}


def test_per_row_url_placeholders_and_methods() -> None:
    """Placeholders need per_row, stand in the path or query only, and are column names;
    DELETE and item_errors go with per_row only one way each."""
    per_row = MINIMAL.replace("/import", "/contacts/{email}?list={list_id}")
    job = parse(per_row + "  per_row: true\n  method: delete\n  omit: [id]\n")
    assert job.target.placeholders == ("email", "list_id")
    assert (job.target.method, job.target.omit) == ("DELETE", ("id",))

    assert problems(per_row) == [
        "jobs/x.yml:4: target: url has placeholders ({email}, {list_id}), which are filled "
        "from one row: set per_row: true, or remove them"
    ]
    assert problems(MINIMAL + "  method: DELETE\n") == [
        "jobs/x.yml:4: target: method DELETE needs per_row: true (one request per row)"
    ]
    host = MINIMAL.replace("api.example.com", "{tenant}.example.com")
    assert "not in its host" in problems(host + "  per_row: true\n")[0]
    braces = MINIMAL.replace("/import", "/import/{1x}")
    assert "is not a {column} placeholder" in problems(braces + "  per_row: true\n")[0]
    item_errors = "  per_row: true\n  item_errors: {path: errors}\n"
    assert "per_row requests are refused" in problems(MINIMAL + item_errors)[0]


def test_partition_jobs_cover_every_key_once() -> None:
    """Partition i reads [bounds[i-1], bounds[i]); the first also takes NULLs, the last
    every larger key; each is named NAME#pI and gets its share of concurrency."""
    text = MINIMAL.replace(
        "  query: SELECT 1\n", "  query: SELECT id FROM t WHERE k = :k;\n  params: {k: 1}\n"
        "  partition: {column: id, count: 3}\n",
    ) + "concurrency: 6\n"  # fmt: skip
    job = parse(text)
    parts = [range_job(job, i, (10, 20)) for i in range(3)]

    assert [p.name for p in parts] == ["x#p0", "x#p1", "x#p2"]
    assert job.parallel_partitions == 3 and {p.concurrency for p in parts} == {2}
    assert [p.source.query.rsplit("WHERE ", 1)[1] for p in parts] == [
        "(loader_part.id < :loader_part_high OR loader_part.id IS NULL)",
        "loader_part.id >= :loader_part_low AND loader_part.id < :loader_part_high",
        "loader_part.id >= :loader_part_low",
    ]
    assert [dict(p.source.params) for p in parts] == [
        {"k": 1, "loader_part_high": 10},
        {"k": 1, "loader_part_low": 10, "loader_part_high": 20},
        {"k": 1, "loader_part_low": 20},
    ]
    assert "WHERE k = :k\n) AS loader_part" in parts[1].source.query  # the ; is gone
    assert len({p.fingerprint() for p in parts}) == 3
    assert parts[0].source.partition is None


def test_partition_settings_are_checked() -> None:
    bad = MINIMAL.replace("  query: SELECT 1\n", "  query: SELECT 1\n"
                          "  partition: {column: 'id; drop', count: 1}\n")  # fmt: skip
    assert problems(bad) == [
        "jobs/x.yml:4: source.partition.column: expected a plain column name (letters, "
        'digits, _); give the column an alias in the query, e.g. SELECT o."Order Id" AS '
        "order_id",
        "jobs/x.yml:4: source.partition.count: expected a value >= 2, got 1",
    ]


def test_partition_parallel_within_concurrency_and_omit_once() -> None:
    partition = "  partition: {column: id, count: 8, parallel: 8}\n"
    bad = MINIMAL.replace("  query: SELECT 1\n", "  query: SELECT 1\n" + partition)
    assert problems(bad + "concurrency: 4\n") == [
        "jobs/x.yml:1: (top level): source.partition.parallel (8) is more than concurrency "
        "(4): each range needs a request in flight of its own; raise concurrency or lower "
        "parallel"
    ]
    assert parse(bad + "concurrency: 8\n").parallel_partitions == 8
    assert problems(MINIMAL + "  omit: [id, x, id]\n") == [
        "jobs/x.yml:6: target.omit: names 'id' more than once"
    ]
