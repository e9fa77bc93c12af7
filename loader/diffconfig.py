"""The ``source.diff`` section: send only the rows whose body changed, and the deletions.

A diff sync suits queries without a column that grows with every change (aggregates,
views, dbt models). Each row's key and a fingerprint of its body as sent are kept in the
state store once the endpoint acknowledged it; a later run sends only the rows whose key
is new or whose fingerprint differs, then (optionally) one request per vanished key.
See :mod:`loader.diff` for how the comparison runs.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from loader import defaults
from loader.fields import FrozenModel, url_placeholders

__all__ = ["Deletes", "Diff"]

_COLUMN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LIMIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")


class Deletes(FrozenModel):
    """What is sent for each key gone from the result: one request per key, the key's
    columns filling the URL's ``{column}`` placeholders."""

    url: str = Field(description="http:// or https:// URL; {column} placeholders name key columns.")
    method: Literal["DELETE", "POST", "PUT", "PATCH"] = Field(
        default="DELETE",
        description="DELETE is sent without a body; the others send the key as a JSON object.",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        url_placeholders(value)
        return value

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class Diff(FrozenModel):
    """Send a row when its key is new or its body changed since last acknowledged."""

    key: tuple[str, ...] = Field(
        description="The column (or list of columns) that identifies a row; unique, never NULL."
    )
    deletes: Deletes | None = Field(
        default=None, description="Requests for keys gone from the result (none when unset)."
    )
    max_deletes: str = Field(
        default=defaults.DIFF_MAX_DELETES,
        description="More vanished keys than this (a count, or a percentage of the keys "
        "known) stop the run before any delete is sent.",
    )

    @field_validator("key", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("key")
    @classmethod
    def _plain_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("expected a column name or a non-empty list of them")
        for name in value:
            if not _COLUMN.fullmatch(name):
                raise ValueError(
                    f"{name!r} is not a plain column name (letters, digits, _); give the "
                    'column an alias in the query, e.g. SELECT u."User Id" AS user_id'
                )
        if len(set(value)) != len(value):
            raise ValueError(f"a column is named twice in {list(value)}")
        return value

    @field_validator("max_deletes", mode="before")
    @classmethod
    def _count_or_percent(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected a count (100) or a percentage (10%)")
        text = str(value)
        match = _LIMIT.match(text)
        if match is None or (not match[2] and "." in match[1]):
            raise ValueError(f"expected a count (100) or a percentage (10%), got {text!r}")
        if match[2] and float(match[1]) > 100:
            raise ValueError(f"a percentage is at most 100%, got {text!r}")
        return f"{match[1]}{match[2]}"

    @model_validator(mode="after")
    def _placeholders_are_keys(self) -> Diff:
        if self.deletes is not None:
            unknown = [n for n in url_placeholders(self.deletes.url) if n not in self.key]
            if unknown:
                raise ValueError(
                    f"deletes.url uses {{{unknown[0]}}}, which is not a key column "
                    f"({', '.join(self.key)}); a vanished row is known by its key only"
                )
        return self

    def delete_limit(self, known: int) -> int:
        """The most vanished keys a run may delete when ``known`` keys were tracked."""
        if self.max_deletes.endswith("%"):
            return int(known * float(self.max_deletes[:-1]) / 100)
        return int(self.max_deletes)
