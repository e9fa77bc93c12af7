"""The job model: what to read, where to send it, and how.

A :class:`Job` is a frozen pydantic model. Unknown keys are errors; durations and sizes
carry units (``30s``, ``1MB``). Build one from a file with :func:`loader.load_job`, or in
Python with :func:`loader.build_job` (which reports problems as
:class:`~loader.errors.JobConfigError`, like files)::

    build_job({"name": "signups",
               "source": {"url": "sqlite:///app.db", "query": "SELECT * FROM users"},
               "target": {"url": "https://api.example.com/import"}})
"""

from __future__ import annotations

import hashlib
import re
from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from loader import defaults
from loader.jobsecrets import job_redactor, job_secrets
from loader.redact import MASK, Redactor, is_secret_name, mask_url
from loader.schedule import Schedule, parse_timezone
from loader.units import format_duration, format_size, parse_duration, parse_rate, parse_size

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def url_placeholders(url: str) -> tuple[str, ...]:
    """The names of ``{column}`` placeholders in ``url``; raises ``ValueError`` for a
    brace that is not part of one (braces are not valid in URLs otherwise)."""
    rest = _PLACEHOLDER.sub("", url)
    if "{" in rest or "}" in rest:
        raise ValueError(
            "a { or } that is not a {column} placeholder; placeholders are column names "
            "in braces, such as https://api.example.com/contacts/{email}"
        )
    return tuple(dict.fromkeys(_PLACEHOLDER.findall(url)))


def _to_seconds(value: Any) -> Any:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, bool | int | float):
        raise ValueError(f"expected a duration with a unit such as 30s or 250ms, got {value!r}")
    return value


def _to_bytes(value: Any) -> Any:
    if isinstance(value, str):
        return parse_size(value)
    if isinstance(value, bool | int | float):
        raise ValueError(f"expected a size with a unit such as 500KB or 1MB, got {value!r}")
    return value


Duration = Annotated[
    float,
    BeforeValidator(_to_seconds),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^\d+(\.\d+)?(ms|s|m|h|d)$"}),
    Field(ge=0),
]
"""Seconds, written in files with a unit: ``250ms``, ``30s``, ``5m``, ``1h``, ``1d``."""

Size = Annotated[
    int,
    BeforeValidator(_to_bytes),
    PlainSerializer(format_size, return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^\d+(\.\d+)?([KMG]i?)?B$"}),
]
"""Bytes, written in files with a unit: ``500KB``, ``1MB`` (powers of 1000) or ``1MiB``."""

Scalar = str | int | float | bool | None
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# SQLAlchemy's rule for text() bind parameters: ":name", but not "::cast" or "\\:".
_BIND = re.compile(r"(?<![:\w\\]):(\w+)(?!:)")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class Cursor(_Model):
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


class Partition(_Model):
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


class Source(_Model):
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

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, mask_url(value) if name == "url" else value

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

    @field_validator("url")
    @classmethod
    def _looks_like_url(cls, value: str) -> str:
        if "://" not in value:
            raise ValueError(
                "expected an SQLAlchemy URL such as postgresql://user@host:5432/db "
                "or sqlite:///path/to/file.db"
            )
        return value


class Envelope(_Model):
    """Wraps the rows of a request: ``{key: [...rows], **fields}``."""

    key: str = Field(min_length=1, description="Key that holds the array of rows.")
    fields: dict[str, Any] = Field(
        default_factory=dict, description="Static fields sent beside the rows."
    )

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            if name == "fields":
                value = {k: MASK if is_secret_name(k) else v for k, v in self.fields.items()}
            yield name, value

    @model_validator(mode="after")
    def _key_not_in_fields(self) -> Envelope:
        if self.key in self.fields:
            raise ValueError(f"fields must not contain the rows' key {self.key!r}")
        return self


class ItemErrors(_Model):
    """Where an API that answers 2xx for a batch lists the rows it refused."""

    path: str = Field(min_length=1, description="Dotted path to the list of errors, e.g. errors.")
    index: str = Field(
        default="index", description="Field of each error with the row's 0-based position."
    )


class BasicAuth(_Model):
    """HTTP basic authentication (a write key as the username, for instance)."""

    username: str
    password: str = ""

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, MASK if name == "password" and value else value


class OAuth2(_Model):
    """OAuth2 client credentials: a token fetched once, cached until it expires,
    fetched again once when the endpoint answers 401."""

    token_url: str = Field(description="The token endpoint (http:// or https://).")
    client_id: str
    client_secret: str
    scope: str | None = None

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, MASK if name == "client_secret" else value


class Auth(_Model):
    """How requests authenticate, besides headers (a bearer token is a header)."""

    basic: BasicAuth | None = None
    oauth2: OAuth2 | None = None

    @model_validator(mode="after")
    def _one_scheme(self) -> Auth:
        if self.basic is not None and self.oauth2 is not None:
            raise ValueError("choose basic or oauth2, not both")
        return self


class Target(_Model):
    """The HTTP endpoint that receives the rows."""

    url: str = Field(
        description="http:// or https:// URL the requests go to. With per_row, {column} "
        "placeholders in its path or query are filled from each row (URL-encoded)."
    )
    method: Literal["POST", "PUT", "PATCH", "DELETE"] = Field(
        default="POST", description="DELETE only with per_row (sent without a body)."
    )
    per_row: bool = Field(
        default=False,
        description="One request per row, its body the row's JSON object; rows for the "
        "same URL are sent in order, others concurrently.",
    )
    omit: tuple[str, ...] = Field(
        default=(),
        description="Columns left out of the body: cursor columns, or values only used in the URL.",
    )
    headers: dict[str, str] = Field(default_factory=dict)
    secret_headers: tuple[str, ...] = Field(
        default=(),
        description="Extra header names whose values are masked in all output "
        "(Authorization, cookies and names with key/token/secret/auth are masked anyway).",
    )
    format: Literal["json", "ndjson"] = Field(
        default="json",
        description="json: one JSON array of rows per request; ndjson: one object per line.",
    )
    envelope: Envelope | None = Field(
        default=None, description="A key (shorthand) or {key, fields} wrapping the rows."
    )
    timeout: Duration = defaults.TARGET_TIMEOUT
    decimals: Literal["number", "string"] = Field(
        default="number",
        description="number: numeric columns as exact JSON numbers; string: as JSON strings.",
    )
    rate_limit: str | None = Field(
        default=None,
        description="Pace toward the target's host: 10/s (requests), 600/m, 500 rows/s. "
        "Shared by the jobs of a process that target the same host; halved on 429.",
    )
    statuses: dict[int, Literal["success", "reject", "retry", "fail"]] = Field(
        default_factory=dict,
        description="Per-status overrides: 409: success for 'already exists', 422: reject "
        "(dead-letter the rows), 503: fail (do not retry)...",
    )
    ca_bundle: str | None = Field(
        default=None, description="PEM file of the CAs to trust instead of the usual ones."
    )
    client_cert: str | None = Field(
        default=None, description="PEM file with the client certificate (mutual TLS)."
    )
    client_key: str | None = Field(
        default=None, description="PEM file with its key, when not in client_cert."
    )
    proxy: str | None = Field(
        default=None,
        description="Proxy URL. Without it no proxy is used: HTTP_PROXY and .netrc are ignored.",
    )
    item_errors: ItemErrors | None = Field(
        default=None,
        description="Read per-row errors from 2xx answers; those rows follow on_reject.",
    )
    gzip: bool = Field(
        default=False,
        description="Compress request bodies (Content-Encoding: gzip); batch.max_bytes "
        "still counts the uncompressed body.",
    )
    auth: Auth = Field(default_factory=Auth)

    def __repr_args__(self) -> Any:
        redactor = Redactor(secret_headers=frozenset(n.lower() for n in self.secret_headers))
        for name, value in super().__repr_args__():
            if name == "headers":
                yield name, redactor.headers(self.headers)
            else:
                yield name, mask_url(value) if name == "url" else value

    @field_validator("headers")
    @classmethod
    def _header_values_are_sendable(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            # The message names the header, never its value (it may be a secret).
            if any(ch in text for ch in "\r\n\0"):
                raise ValueError(
                    f"header {name!r} contains a line break (a trailing newline from a "
                    "secret file?); remove it"
                )
            if not text.isascii() or not text.isprintable():
                raise ValueError(
                    f"header {name!r} contains non-ASCII or control characters; percent-encode them"
                )
            if not name.isascii() or not name.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"header name {name!r} is not a valid HTTP header name")
        return value

    @field_validator("rate_limit")
    @classmethod
    def _valid_rate(cls, value: str | None) -> str | None:
        if value is not None:
            parse_rate(value)
        return value

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("envelope", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"key": value} if isinstance(value, str) else value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        names = url_placeholders(value)  # refuses malformed braces
        parts = urlsplit(value)
        if names and "{" in (parts.netloc or ""):
            raise ValueError(
                "placeholders may stand in the URL's path and query only, not in its host"
            )
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "expected an http:// or https:// URL with a host, "
                "such as https://api.example.com/v1/import"
            )
        return value

    @model_validator(mode="after")
    def _envelope_needs_json(self) -> Target:
        if self.envelope is not None and self.format == "ndjson":
            raise ValueError("envelope works with format: json only; remove one of them")
        return self

    @model_validator(mode="after")
    def _placeholders_need_per_row(self) -> Target:
        names = self.placeholders
        if names and not self.per_row:
            raise ValueError(
                f"url has placeholders ({', '.join('{' + n + '}' for n in names)}), which "
                "are filled from one row: set per_row: true, or remove them"
            )
        if self.method == "DELETE" and not self.per_row:
            raise ValueError("method DELETE needs per_row: true (one request per row)")
        if self.item_errors is not None and self.per_row:
            raise ValueError("item_errors reads errors per row of a batch; per_row "
                             "requests are refused with their status instead")  # fmt: skip
        return self

    @field_validator("omit")
    @classmethod
    def _omit_once(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise ValueError(f"names {', '.join(map(repr, repeated))} more than once")
        return value

    @property
    def placeholders(self) -> tuple[str, ...]:
        """The column names of the URL's ``{column}`` placeholders, in order."""
        return url_placeholders(self.url)


class Batch(_Model):
    """How rows are grouped into requests."""

    size: int = Field(default=defaults.BATCH_SIZE, ge=1, description="Rows per request.")
    max_bytes: Size = Field(
        default=defaults.BATCH_MAX_BYTES,
        ge=64,
        description="No request body is larger; a single larger row is an error.",
    )


class Retry(_Model):
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


class Alerts(_Model):
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


class Job(_Model):
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

    def partition_job(self, index: int, bounds: tuple[int, ...]) -> Job:
        """The job of partition ``index`` (of ``len(bounds) + 1``): the rows whose
        partition column is in ``[bounds[index - 1], bounds[index])``; the first range
        is open below (and takes NULLs), the last open above (and takes new rows).

        Its name, ``NAME#pINDEX``, keys its own checkpoint and lock; its share of
        ``concurrency`` keeps the requests in flight of all partitions within it."""
        partition = self.source.partition
        assert partition is not None and 0 <= index <= len(bounds)
        column = f"loader_part.{partition.column}"
        clauses, params = [], dict(self.source.params)
        if index > 0:
            clauses.append(f"{column} >= :loader_part_low")
            params["loader_part_low"] = bounds[index - 1]
        if index < len(bounds):
            clauses.append(f"{column} < :loader_part_high")
            params["loader_part_high"] = bounds[index]
        where = " AND ".join(clauses)
        if index == 0 and where:
            where = f"({where} OR {column} IS NULL)"
        inner = self.source.query.strip().rstrip(";").strip()
        query = f"SELECT * FROM (\n{inner}\n) AS loader_part"
        if where:
            query += f" WHERE {where}"
        source = self.source.model_copy(
            update={"query": query, "params": params, "partition": None}
        )
        share = max(1, self.concurrency // self.parallel_partitions)
        # No bounds yet (no keys to split): one range of everything, under a name of its
        # own so its checkpoint is never taken for the first range's.
        name = f"{self.name}#p{index}" if bounds else f"{self.name}#all"
        copy = self.model_copy(update={"name": name, "source": source, "concurrency": share})
        copy._env_secrets = self._env_secrets
        return copy

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
