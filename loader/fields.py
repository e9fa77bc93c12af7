"""The field types of the job models: durations and sizes written with units, scalar
parameters, ``{column}`` URL placeholders, and the frozen base every model derives from.

Values are parsed once, at the edge: a :data:`Duration` field holds seconds and a
:data:`Size` field holds bytes, and both are written back with their unit.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, WithJsonSchema

from loader.units import format_duration, format_size, parse_duration, parse_size

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


class FrozenModel(BaseModel):
    """The base of every job model: immutable, unknown keys refused, and input values
    left out of pydantic's own messages (they may be secrets)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)
