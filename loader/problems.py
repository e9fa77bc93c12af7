"""Validation problems in words: what was expected, what was given, and for an unknown
key the allowed ones (and the likely one meant).

:func:`validate_job` returns each problem with its key path; :mod:`loader.jobfile` adds
the file and line. Values under secret-looking keys never appear in a message.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from loader.job import Job
from loader.redact import is_secret_name

_MAX_VALUE_CHARS = 60


def validate_job(
    data: Mapping[str, Any],
) -> tuple[Job | None, list[tuple[tuple[str | int, ...], str]]]:
    """Validate ``data``: the job, or ``None`` and each problem as (key path, message)."""
    try:
        return Job.model_validate(data), []
    except ValidationError as exc:
        return None, [(tuple(e["loc"]), _describe(e, tuple(e["loc"]))) for e in exc.errors()]


def _describe(error: Mapping[str, Any], loc: tuple[str | int, ...]) -> str:
    """A short message for one pydantic error: what was expected and what was given."""
    kind = error["type"]
    hidden = any(
        part in ("headers", "fields", "params") or is_secret_name(str(part)) for part in loc
    )
    got = "(value hidden)" if hidden else _short(error.get("input"))
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
        return f"unknown key{suggestion} (allowed: {', '.join(allowed)})"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind == "literal_error":
        return f"expected one of {ctx.get('expected', '')}, got {got}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        sign = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<="}
        bound = next(iter(ctx.values()), "")
        return f"expected a value {sign.get(kind, '<')} {bound}, got {got}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"expected an integer, got {got}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"expected a mapping of keys, got {got}"
    if kind == "string_too_short":
        return "must not be empty"
    message = str(error["msg"])
    return f"{message[:1].lower()}{message[1:]}, got {got}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 3] + "..."


def _allowed_keys(loc: tuple[str | int, ...]) -> list[str]:
    """Field names of the model found at ``loc`` below :class:`Job`."""
    model: type[BaseModel] = Job
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        inner = _model_in(field.annotation)
        if inner is None:
            return []
        model = inner
    return list(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        for arg in typing.get_args(annotation):
            model = _model_in(arg)
            if model is not None:
                return model
    return None
