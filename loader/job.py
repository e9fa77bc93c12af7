"""The job model: what to read, where to send it, and how.

A :class:`Job` is a frozen pydantic model. Unknown keys are errors; durations and sizes
carry units (``30s``, ``1MB``). Build one from a file with :func:`loader.load_job`, or in
Python with :func:`loader.build_job` (which reports problems as
:class:`~loader.errors.JobConfigError`, like files)::

    build_job({"name": "signups",
               "source": {"url": "sqlite:///app.db", "query": "SELECT * FROM users"},
               "target": {"url": "https://api.example.com/import"}})

The target's models live in :mod:`loader.target` and the field types (durations,
sizes) in :mod:`loader.fields`; both are re-exported here. Putting validation problems
into words is :mod:`loader.problems`' job, gathering secrets :mod:`loader.jobsecrets`'.
"""

from __future__ import annotations

import hashlib
import re
from datetime import date, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, field_validator, model_validator
from sqlparse import tokens as sqltokens
from sqlparse.lexer import Lexer

from loader import defaults
from loader.diffconfig import Deletes, Diff
from loader.fields import Duration, FrozenModel, Scalar, Size, url_placeholders
from loader.jobsecrets import job_redactor, job_secrets
from loader.redact import MASK, Redactor, mask_url
from loader.schedule import Schedule, parse_timezone
from loader.target import Auth, BasicAuth, Envelope, ItemErrors, ItemResults, OAuth2, Target

__all__ = [
    "Alerts",
    "Auth",
    "BasicAuth",
    "Batch",
    "Cursor",
    "Deletes",
    "Diff",
    "Duration",
    "Envelope",
    "ItemErrors",
    "ItemResults",
    "Job",
    "OAuth2",
    "Partition",
    "Retry",
    "Scalar",
    "Size",
    "Source",
    "Target",
    "url_placeholders",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# SQLAlchemy's rule for text() bind parameters: ":name", but not "::cast" or "\\:".
_BIND = re.compile(r"(?<![:\w\\]):(\w+)(?!:)")


class Cursor(FrozenModel):
    """An incremental cursor: loader sends rows after the last acknowledged position.

    loader wraps the query so rows come ordered by ``(column, key)`` strictly after the
    checkpoint, so rows sharing a ``column`` value are neither skipped nor re-sent.
    """

    column: str = Field(min_length=1, description="Non-decreasing column: timestamp or integer.")
    key: str | None = Field(
        default=None,
        min_length=1,
        description="Unique tiebreaker column; omit only when column is itself unique.",
    )
    start: int | datetime | None = Field(
        default=None, description="First position: rows with column >= start are sent."
    )
    lag: Duration = Field(
        default=0.0,
        description="Leave out rows newer than the database's now() - lag "
        "(timestamp cursors, PostgreSQL), so late commits are not missed.",
    )
    on_null: Literal["fail", "skip"] = Field(
        default="fail",
        description="fail: a row with a NULL column or key fails the run; skip: never send them.",
    )

    @field_validator("start", mode="before")
    @classmethod
    def _date_is_midnight(cls, value: Any) -> Any:
        if isinstance(value, date) and not isinstance(value, datetime):
            return datetime(value.year, value.month, value.day)
        return value

    @model_validator(mode="after")
    def _distinct_columns(self) -> Cursor:
        if self.key == self.column:
            raise ValueError("key must differ from column; omit key if column is unique")
        return self


class Partition(FrozenModel):
    """Splits a load into key ranges of an integer column, each a run of its own with its
    own checkpoint (on several workers at once with ``LOADER_EXECUTOR=procrastinate``)."""

    column: str = Field(
        min_length=1,
        description="Integer column of the query to split on (a plain column name).",
    )
    count: int = Field(ge=2, le=256, description="How many key ranges.")
    parallel: int | None = Field(
        default=None,
        ge=1,
        description="Ranges running at once, across all workers (default: the smaller of "
        "count and concurrency).",
    )

    @field_validator("column")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError(
                "expected a plain column name (letters, digits, _); give the column an "
                'alias in the query, e.g. SELECT o."Order Id" AS order_id'
            )
        return value


def _second_statement(query: str) -> str | None:
    """The text from the second statement of ``query`` on, ``None`` when it holds one.
    Semicolons in quotes, dollar quotes, quoted names and comments separate nothing;
    neither do trailing ones. (The database is the guarantee: :func:`loader.database.
    execute_query` never lets it run a second statement. This names the problem first.)"""
    if ";" not in query:
        return None
    ended = False  # a ';' outside quotes and comments was seen
    offset = 0
    lexer = Lexer.get_default_instance()  # type: ignore[no-untyped-call]  # sqlparse is untyped
    for kind, text in lexer.get_tokens(query):
        if kind is sqltokens.Punctuation and text == ";":
            ended = True
        elif ended and not (kind in sqltokens.Whitespace or kind in sqltokens.Comment):
            return query[offset:]
        offset += len(text)
    return None


class Source(FrozenModel):
    """The database and the query whose rows are sent."""

    url: str = Field(description="SQLAlchemy URL; postgres:// and postgresql:// use psycopg 3.")
    query: str = Field(min_length=1, description="SQL; bind parameters as :name.")
    params: dict[str, Scalar | list[Scalar]] = Field(
        default_factory=dict, description="Bound parameters, never formatted into the SQL."
    )
    statement_timeout: Duration = Field(
        default=defaults.STATEMENT_TIMEOUT,
        description="Longest a statement (each fetch) may run; 0s disables. PostgreSQL only.",
    )
    fetch_size: int = Field(
        default=defaults.FETCH_SIZE, ge=1, description="Rows fetched per database round trip."
    )
    cursor: Cursor | None = Field(
        default=None, description="Send only rows after the last acknowledged position."
    )
    partition: Partition | None = Field(
        default=None, description="Split the load into key ranges run side by side."
    )
    diff: Diff | None = Field(
        default=None, description="Send only new and changed rows (by key), and deletions."
    )

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, mask_url(value) if name == "url" else value

    @model_validator(mode="after")
    def _diff_or_cursor(self) -> Source:
        if self.diff is not None and self.cursor is not None:
            raise ValueError(
                "source.diff and source.cursor are exclusive: a cursor sends rows after a "
                "position, a diff compares every row with what was sent; keep one"
            )
        return self

    @model_validator(mode="after")
    def _params_match_query(self) -> Source:
        used = set(_BIND.findall(self.query))
        problems = [
            f"the query uses :{name} but params has no {name!r} "
            f"(write \\:{name} for a literal colon, e.g. in JSON text)"
            for name in sorted(used - set(self.params))
        ] + [
            f"params.{name} is not used by the query (no :{name} in it)"
            for name in sorted(set(self.params) - used)
        ]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @field_validator("query")
    @classmethod
    def _one_statement(cls, value: str) -> str:
        second = _second_statement(value)
        if second is not None:
            start = " ".join(second.split())
            start = start if len(start) <= 40 else start[:37] + "..."
            raise ValueError(
                f"holds more than one statement (the second starts {start!r}); loader runs "
                "exactly one SELECT, read-only, and nothing was run: remove the other "
                "statements (a trailing ';' is fine)"
            )
        return value

    @field_validator("url")
    @classmethod
    def _looks_like_url(cls, value: str) -> str:
        if "://" not in value:
            raise ValueError(
                "expected an SQLAlchemy URL such as postgresql://user@host:5432/db "
                "or sqlite:///path/to/file.db"
            )
        return value


class Batch(FrozenModel):
    """How rows are grouped into requests."""

    size: int = Field(default=defaults.BATCH_SIZE, ge=1, description="Rows per request.")
    max_bytes: Size = Field(
        default=defaults.BATCH_MAX_BYTES,
        ge=64,
        description="No request body is larger; a single larger row is an error.",
    )


class Retry(FrozenModel):
    """When and how long to retry a request that may succeed later."""

    attempts: int = Field(default=defaults.RETRY_ATTEMPTS, ge=1, le=100)
    backoff: Duration = Field(
        default=defaults.RETRY_BACKOFF, description="First back-off; doubles, full jitter."
    )
    max_backoff: Duration = defaults.RETRY_MAX_BACKOFF
    max_retry_after: Duration = Field(
        default=defaults.RETRY_MAX_RETRY_AFTER,
        description="Cap on the wait a Retry-After header may impose.",
    )


class Alerts(FrozenModel):
    """Where a job's owner hears that it broke, and recovered. Unset channels fall back to
    ``LOADER_ALERT_URL``, ``LOADER_ALERT_SLACK_URL`` and ``LOADER_ALERT_EMAIL``."""

    webhook: str | None = Field(default=None, description="URL receiving a JSON body per alert.")
    slack: str | None = Field(default=None, description="A Slack incoming webhook URL.")
    email: tuple[str, ...] = Field(
        default=(), description="Addresses mailed through LOADER_SMTP_URL."
    )
    remind_after: Duration = Field(
        default=defaults.ALERT_REMIND_AFTER,
        description="While a job keeps failing, one reminder after this long.",
    )
    max_lag: Duration | None = Field(
        default=None,
        description="Alert when the checkpoint's cursor value is older than this "
        "(the job is falling behind).",
    )

    @field_validator("email", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("webhook", "slack")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("expected an http:// or https:// URL")
        return value

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, MASK if name in ("webhook", "slack") and value else value


class Job(FrozenModel):
    """One loader job: a source query, a target endpoint, batching and retries."""

    name: str = Field(description="Job name; defaults to the file's stem.")
    source: Source
    target: Target
    batch: Batch = Field(default_factory=Batch)
    retry: Retry = Field(default_factory=Retry)
    alerts: Alerts = Field(default_factory=Alerts)
    heartbeat: str | None = Field(
        default=None,
        description="Pinged at start (URL/start), on success (URL) and on failure "
        "(URL/fail), as healthchecks.io expects.",
    )
    on_reject: Literal["deadletter", "fail"] = Field(
        default="deadletter",
        description="deadletter: isolate rejected rows, keep them in the state store, go on; "
        "fail: stop the run at the first rejection.",
    )
    concurrency: int = Field(
        default=defaults.CONCURRENCY,
        ge=1,
        le=64,
        description="Requests in flight at once. A crash can re-send up to this many batches.",
    )
    schedule: str | None = Field(
        default=None,
        description="When the clock runs the job: a cron expression ('*/15 * * * *'), "
        "an alias (@hourly) or an interval ('every 30s'). Without it the clock ignores it.",
    )
    timezone: str = Field(default="UTC", description="IANA time zone of a cron schedule.")
    catch_up: Duration = Field(
        default=defaults.CATCH_UP,
        description="After the clock was down, one run for the latest missed slot if it is "
        "at most this old; 0s disables catch-up.",
    )
    max_rejected: int = Field(
        default=defaults.MAX_REJECTED,
        ge=0,
        description="Circuit breaker: stop the run once this many rows were rejected.",
    )

    _env_secrets: frozenset[str] = PrivateAttr(default=frozenset())

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                "expected letters, digits, '_', '.' or '-', starting with a letter or digit, "
                f"got {value!r}"
            )
        return value

    @field_validator("schedule")
    @classmethod
    def _valid_schedule(cls, value: str | None) -> str | None:
        if value is not None:
            Schedule(value)
        return value

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, value: str) -> str:
        parse_timezone(value)
        return value

    @model_validator(mode="after")
    def _row_id_needs_cursor(self) -> Job:
        if self.target.row_id is not None and self.source.cursor is None:
            raise ValueError(
                "target.row_id is derived from each row's cursor value and key: set "
                "source.cursor, or remove target.row_id"
            )
        return self

    @model_validator(mode="after")
    def _parallel_within_concurrency(self) -> Job:
        partition = self.source.partition
        if partition is not None and partition.parallel and partition.parallel > self.concurrency:
            raise ValueError(
                f"source.partition.parallel ({partition.parallel}) is more than concurrency "
                f"({self.concurrency}): each range needs a request in flight of its own; "
                "raise concurrency or lower parallel"
            )
        return self

    def schedule_spec(self) -> Schedule | None:
        """The parsed :class:`~loader.schedule.Schedule`, or ``None`` without one."""
        return None if self.schedule is None else Schedule(self.schedule, self.timezone)

    def fingerprint(self) -> str:
        """A digest of what makes a checkpoint meaningful: the query, its parameters and
        the cursor's column and key. A stored checkpoint with another fingerprint is
        not resumed from."""
        cursor = self.source.cursor
        material = {
            "query": " ".join(self.source.query.split()),
            "params": sorted((k, repr(v)) for k, v in self.source.params.items()),
            "column": cursor.column if cursor else None,
            "key": cursor.key if cursor else None,
        }
        return hashlib.sha256(repr(material).encode()).hexdigest()[:16]

    @property
    def parallel_partitions(self) -> int:
        """How many of the job's partitions run at once (0 without partitions)."""
        partition = self.source.partition
        if partition is None:
            return 0
        return partition.parallel or min(partition.count, self.concurrency)

    def with_target_url(self, url: str) -> Job:
        """A copy sending to ``url`` instead (``loader run --target-url``), validated."""
        data = self.model_dump()
        data["target"]["url"] = url
        copy = Job.model_validate(data)
        copy._env_secrets = self._env_secrets
        return copy

    def with_secrets(self, values: frozenset[str]) -> Job:
        """Return a copy that also masks ``values`` (secrets interpolated from the env)."""
        copy = self.model_copy()
        copy._env_secrets = self._env_secrets | values
        return copy

    def secrets(self) -> frozenset[str]:
        """Every secret value this job holds: passwords, secret headers and fields, and
        the values interpolated from secret-named environment variables."""
        return job_secrets(self) | {value for value in self._env_secrets if value}

    def redactor(self) -> Redactor:
        """A :class:`~loader.redact.Redactor` that masks this job's secrets."""
        return job_redactor(self)
