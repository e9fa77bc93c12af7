"""The target models: the HTTP endpoint that receives the rows, and how requests to it
are shaped (envelope, per-row URLs), authenticated (basic, OAuth2) and read back (item
errors). Part of a :class:`~loader.job.Job`, which re-exports them."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from loader import defaults
from loader.fields import Duration, FrozenModel, url_placeholders
from loader.redact import MASK, Redactor, is_secret_name, mask_url
from loader.units import parse_rate


class Envelope(FrozenModel):
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


class ItemErrors(FrozenModel):
    """Where an API that answers 2xx for a batch lists the rows it refused."""

    path: str = Field(min_length=1, description="Dotted path to the list of errors, e.g. errors.")
    index: str = Field(
        default="index", description="Field of each error with the row's 0-based position."
    )


class ItemResults(FrozenModel):
    """Where an API that answers 2xx for a batch gives one result per row, in order."""

    path: str = Field(
        min_length=1,
        description="Dotted path to the list with one entry per row of the request, in "
        "order (items, responses).",
    )
    status: str = Field(
        min_length=1,
        description="Dotted path to the status inside each entry; a * segment matches any "
        "one key (*.status for Elasticsearch's {index: {status: 201}}).",
    )


class BasicAuth(FrozenModel):
    """HTTP basic authentication (a write key as the username, for instance)."""

    username: str
    password: str = ""

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, MASK if name == "password" and value else value


class OAuth2(FrozenModel):
    """OAuth2 client credentials: a token fetched once, cached until it expires,
    fetched again once when the endpoint answers 401."""

    token_url: str = Field(description="The token endpoint (http:// or https://).")
    client_id: str
    client_secret: str
    scope: str | None = None

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, MASK if name == "client_secret" else value


class Auth(FrozenModel):
    """How requests authenticate, besides headers (a bearer token is a header)."""

    basic: BasicAuth | None = None
    oauth2: OAuth2 | None = None

    @model_validator(mode="after")
    def _one_scheme(self) -> Auth:
        if self.basic is not None and self.oauth2 is not None:
            raise ValueError("choose basic or oauth2, not both")
        return self


class Target(FrozenModel):
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
    body: str | None = Field(
        default=None,
        min_length=1,
        description="Send each row as this column's JSON value (built in SQL) instead of "
        "an object of all columns.",
    )
    lines: tuple[str, ...] = Field(
        default=(),
        description="With format: ndjson, send each row as these columns' JSON values, one "
        "line each, in order (Elasticsearch's action and document); still one row.",
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
    item_results: ItemResults | None = Field(
        default=None,
        description="Read one result per row from 2xx answers: 2xx delivered, 429 and 5xx "
        "retried (those rows only), other 4xx follow on_reject.",
    )
    gzip: bool = Field(
        default=False,
        description="Compress request bodies (Content-Encoding: gzip); batch.max_bytes "
        "still counts the uncompressed body.",
    )
    auth: Auth = Field(default_factory=Auth)
    row_id: str | None = Field(
        default=None,
        pattern=r"^[^.]+(\.[^.]+)?$",
        description="A field added to each row: an id derived from the job, the row's cursor "
        "value and key, the same every time that version of the row is sent (Amplitude "
        "insert_id, Segment messageId). COLUMN.FIELD puts it inside the JSON object of the "
        "body's last column (Mixpanel properties.$insert_id). Needs source.cursor.",
    )

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
    def _shaped_rows(self) -> Target:
        if self.lines and self.format != "ndjson":
            raise ValueError("lines sends a row as several NDJSON lines: set format: ndjson")
        if self.lines and self.body is not None:
            raise ValueError("body and lines both say what a row is sent as: keep one")
        if (self.lines or self.body is not None) and (self.per_row or self.omit or self.row_id):
            raise ValueError("body and lines send only the columns they name, as built in "
                             "SQL: remove per_row, omit and row_id")  # fmt: skip
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
        if self.item_results is not None and (self.per_row or self.item_errors is not None):
            raise ValueError("item_results reads one result per row of a batch: remove "
                             "per_row and item_errors, or item_results")  # fmt: skip
        return self

    @field_validator("omit")
    @classmethod
    def _omit_once(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise ValueError(f"names {', '.join(map(repr, repeated))} more than once")
        return value

    @property
    def shape(self) -> tuple[str, ...]:
        """The columns a row is sent as (``body`` or ``lines``); empty: all of them."""
        return (self.body,) if self.body is not None else self.lines

    @property
    def placeholders(self) -> tuple[str, ...]:
        """The column names of the URL's ``{column}`` placeholders, in order."""
        return url_placeholders(self.url)
