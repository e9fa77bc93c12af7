"""Reading loader's log lines back in tests: JSON lines and logfmt."""

from __future__ import annotations

import json
import re
from typing import Any

# key=value or key="quoted \"value\"" (logfmt as loader.logs writes it).
_PAIR = re.compile(r'([A-Za-z_][\w.]*)=("(?:[^"\\]|\\.)*"|[^\s"]*)')


def log_events(output: str, name: str | None = None, **fields: Any) -> list[dict[str, Any]]:
    """The JSON log lines in ``output`` (other lines skipped), those of the event
    ``name`` with ``fields`` equal only, when given."""
    found = []
    for line in output.splitlines():
        start = line.find("{")
        if start < 0:
            continue
        try:
            data = json.loads(line[start:])
        except ValueError:
            continue
        if not isinstance(data, dict) or "event" not in data:
            continue
        if name is not None and data["event"] != name:
            continue
        if all(data.get(key) == value for key, value in fields.items()):
            found.append(data)
    return found


def parse_logfmt(line: str) -> dict[str, str]:
    """One logfmt line as its keys and (unquoted, unescaped) values; the whole line
    must be pairs."""
    pairs = _PAIR.findall(line)
    rebuilt = " ".join(f"{key}={value}" for key, value in pairs)
    assert rebuilt == line, f"not logfmt: {line!r}"
    return {key: _unquote(value) for key, value in pairs}


def _unquote(value: str) -> str:
    if not value.startswith('"'):
        return value
    escapes = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}

    def unescape(match: re.Match[str]) -> str:
        if match.group(2):
            return chr(int(match.group(2), 16))
        return escapes.get(match.group(1), match.group(0))

    return re.sub(r"\\(u([0-9a-f]{4})|.)", unescape, value[1:-1])
