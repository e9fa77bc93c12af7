"""Job files: YAML with ``${VAR}`` interpolation, validated into a :class:`~loader.job.Job`.

Every problem in a file is reported at once, each as ``file:line: key.path: message``,
in one :class:`~loader.errors.JobConfigError`. :func:`job_schema` describes job files
for editors; :func:`dump_job` writes a job back as YAML, secrets masked.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from dotenv import dotenv_values

from loader.errors import JobConfigError
from loader.job import Job
from loader.problems import validate_job
from loader.redact import Redactor, is_secret_name, register_secrets

JOB_FILE_SUFFIXES = (".yml", ".yaml")
_VARIABLE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

KeyPath = tuple[str | int, ...]


def environment(dotenv: str | Path = ".env") -> dict[str, str]:
    """The process environment over the values of ``dotenv`` (which never overrides it)."""
    values = {k: v for k, v in dotenv_values(dotenv).items() if v is not None}
    values.update(os.environ)
    return values


def load_job(path: str | Path, *, env: Mapping[str, str] | None = None) -> Job:
    """Read, interpolate and validate the job file at ``path``.

    ``env`` defaults to :func:`environment` (the process environment over ``./.env``).
    Raises :class:`JobConfigError` listing every problem in the file.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise JobConfigError([f"{path}: cannot read the job file: {reason}"]) from exc
    return parse_job(text, filename=str(path), default_name=path.stem, env=env)


def parse_job(
    text: str,
    *,
    filename: str = "<job>",
    default_name: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Job:
    """Parse a job from YAML ``text``.

    ``filename`` names the text in messages; its stem is the job's name when the text
    has no ``name:`` and ``default_name`` is not given.
    """
    if default_name is None and filename != "<job>":
        default_name = Path(filename).stem
    problems: list[tuple[int, str]] = []
    data, lines = _parse_yaml(text, filename, problems)
    if problems:
        raise JobConfigError([message for _, message in problems])
    if not isinstance(data, dict):
        raise JobConfigError([f"{filename}:1: expected a mapping of keys (name, source, ...)"])
    return _validate(data, filename=filename, lines=lines, default_name=default_name, env=env)


def build_job(data: Mapping[str, Any], *, env: Mapping[str, str] | None = None) -> Job:
    """Build a job from a mapping shaped like a job file, ``${VAR}`` interpolated.

    Raises :class:`JobConfigError` listing every problem, like :func:`load_job`.
    """
    return _validate(dict(data), filename="<job>", lines={}, default_name=None, env=env)


def _validate(
    data: dict[str, Any],
    *,
    filename: str,
    lines: dict[KeyPath, int],
    default_name: str | None,
    env: Mapping[str, str] | None,
) -> Job:
    env = environment() if env is None else env
    problems: list[tuple[int, str]] = []
    secrets: set[str] = set()
    data = _interpolate(data, (), env, secrets, filename, lines, problems)
    if default_name is not None and "name" not in data:
        data["name"] = default_name
    job, errors = validate_job(data)
    redactor = Redactor(secrets)
    for loc, message in errors:
        line = _line_of(loc, lines)
        where = ".".join(str(part) for part in loc) or "(top level)"
        at = f"{filename}:{line}" if lines else filename
        problems.append((line, f"{at}: {where}: {redactor.text(message)}"))
    if problems or job is None:
        problems.sort(key=lambda problem: problem[0])
        raise JobConfigError([message for _, message in problems])
    job = job.with_secrets(frozenset(secrets))
    register_secrets(job.secrets())
    return job


def find_job_files(paths: Sequence[str | Path]) -> list[Path]:
    """Job files named by ``paths``: files as given, directories searched for ``*.yml``."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(
                sorted(p for p in path.iterdir() if p.suffix in JOB_FILE_SUFFIXES and p.is_file())
            )
        else:
            found.append(path)
    return found


def resolve_job_file(ref: str | Path, jobs_dir: str | Path) -> Path:
    """The job file ``ref`` names: a path (an existing file, or anything with a ``/`` or a
    ``.yml``/``.yaml`` suffix) as given; else a job's name, looked up in ``jobs_dir`` by
    file stem first, then by the ``name:`` inside each file there.

    Raises :class:`JobConfigError` when the name matches no job (listing the jobs found)
    or two files (naming both).
    """
    path = Path(ref)
    text = str(ref)
    if path.is_file() or "/" in text or os.sep in text or path.suffix in JOB_FILE_SUFFIXES:
        return path
    directory = Path(jobs_dir)
    files = find_job_files([directory]) if directory.is_dir() else []
    names = {file: _declared_name(file) for file in files}
    for matches in (
        [file for file in files if file.stem == text],
        [file for file in files if names[file] == text],
    ):
        if len(matches) == 1:
            return matches[0]
        if matches:
            both = " and ".join(map(str, matches))
            raise JobConfigError(
                [f"{text}: the job name is ambiguous: {both}; give the file's path instead"]
            )
    found = ", ".join(sorted({names[file] or file.stem for file in files})) or "none"
    raise JobConfigError([
        f"{text}: no job file or job named {text!r} in {directory}/ (jobs found: {found}); "
        "give the file's path, or set LOADER_JOBS_DIR to the directory of job files"
    ])  # fmt: skip


def _declared_name(path: Path) -> str | None:
    """The ``name:`` written in the job file at ``path`` (its stem when it has none);
    ``None`` when the file cannot be read as YAML."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(data, dict):
        return None
    name = data.get("name", path.stem)
    return name if isinstance(name, str) else None


def _parse_yaml(
    text: str, filename: str, problems: list[tuple[int, str]]
) -> tuple[Any, dict[KeyPath, int]]:
    """Load YAML, recording the line of every key and refusing duplicate keys."""
    lines: dict[KeyPath, int] = {}
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        problems.append(_yaml_problem(exc, filename))
        return None, lines
    if node is None:
        return None, lines
    constructor = yaml.SafeLoader("")

    def build(node: yaml.Node, path: KeyPath) -> Any:
        if isinstance(node, yaml.MappingNode):
            constructor.flatten_mapping(node)
            result: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = constructor.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if not isinstance(key, str | int) or isinstance(key, bool):
                    problems.append((line, f"{filename}:{line}: keys must be strings, got {key!r}"))
                    continue
                key = str(key)
                where = ".".join(str(p) for p in (*path, key))
                if key in result:
                    first = lines[(*path, key)]
                    problems.append(
                        (line, f"{filename}:{line}: {where}: duplicate key (first at line {first})")
                    )
                    continue
                lines[(*path, key)] = line
                result[key] = build(value_node, (*path, key))
            return result
        if isinstance(node, yaml.SequenceNode):
            items = []
            for index, item in enumerate(node.value):
                lines[(*path, index)] = item.start_mark.line + 1
                items.append(build(item, (*path, index)))
            return items
        return constructor.construct_object(node, deep=True)

    return build(node, ()), lines


def _yaml_problem(exc: yaml.YAMLError, filename: str) -> tuple[int, str]:
    """The line of a YAML syntax error and its message, naming where the construct it
    breaks started when that is another line."""
    mark = getattr(exc, "problem_mark", None)
    line = mark.line + 1 if mark is not None else 1
    reason = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    context_mark = getattr(exc, "context_mark", None)
    if context and context_mark is not None and context_mark.line + 1 != line:
        context = f"{context} started at line {context_mark.line + 1}"
    detail = f"{context}: {reason}" if context else reason
    return line, f"{filename}:{line}: invalid YAML: {detail}"


def _interpolate(
    value: Any,
    path: KeyPath,
    env: Mapping[str, str],
    secrets: set[str],
    filename: str,
    lines: dict[KeyPath, int],
    problems: list[tuple[int, str]],
) -> Any:
    """Substitute ``${VAR}`` and ``${VAR:-default}`` in every string value."""
    if isinstance(value, dict):
        return {
            k: _interpolate(v, (*path, k), env, secrets, filename, lines, problems)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [
            _interpolate(v, (*path, i), env, secrets, filename, lines, problems)
            for i, v in enumerate(value)
        ]
    if not isinstance(value, str) or "$" not in value:
        return value

    def report(message: str) -> None:
        line = _line_of(path, lines)
        where = ".".join(str(p) for p in path)
        at = f"{filename}:{line}" if lines else filename
        problems.append((line, f"{at}: {where}: {message}"))

    result = _VARIABLE.sub(lambda match: _substitute(match, env, secrets, report), value)
    if "${" in result:
        report(
            "malformed variable reference; write ${NAME} "
            "or ${NAME:-default}, or $${ for a literal ${"
        )
    return result.replace("\0{", "${")


def _substitute(
    match: re.Match[str],
    env: Mapping[str, str],
    secrets: set[str],
    report: Callable[[str], None],
) -> str:
    """The text for one ``${...}`` match: the variable's value, its default, or (unset,
    reported) nothing. ``$${`` becomes a marker that is turned back into ``${`` last."""
    if match.group(0) == "$${":
        return "\0{"
    name, default = match.group(1), match.group(2)
    value = env.get(name)
    # As in the shell: ${VAR:-default} takes the default when VAR is unset or empty.
    if value or (value is not None and default is None):
        if is_secret_name(name) and value:
            secrets.add(value)
        return value
    if default is not None:
        return default
    report(
        f"environment variable {name} is not set; "
        f"set it (or put it in .env), or give a default: ${{{name}:-value}}"
    )
    return ""


def _line_of(loc: KeyPath, lines: dict[KeyPath, int]) -> int:
    """Line of the key at ``loc``, or of its nearest parent present in the file."""
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return 1


def dump_job(job: Job) -> str:
    """The job as loader understood it, defaults filled in, as YAML with secrets masked."""
    data = job.model_dump(mode="json")
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
    return job.redactor().text(text)


def job_schema() -> dict[str, Any]:
    """The JSON Schema of job files, draft-07 (what editors' YAML plugins read)."""
    schema = Job.model_json_schema(mode="validation")
    text = json.dumps(schema).replace('"#/$defs/', '"#/definitions/')
    result: dict[str, Any] = json.loads(text)
    result["definitions"] = result.pop("$defs", {})
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        **result,
        "title": "loader job file",
    }


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings (queries) as literal blocks, as people write them."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)
