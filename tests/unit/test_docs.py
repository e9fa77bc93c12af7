"""The README and jobs/ stay true: every example parses, every key is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from loader import Job, defaults, parse_job
from loader.jobfile import load_job

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
YAML_BLOCKS = re.findall(r"```yaml\n(.*?)```", README, flags=re.DOTALL)
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


def dummy_env(text: str) -> dict[str, str]:
    """A value for every variable the text uses (URLs where a URL is expected)."""
    values = {}
    for name in VARIABLE.findall(text):
        if name.endswith("_URL"):
            database = "DATABASE" in name
            values[name] = "postgresql://app@db/app" if database else "https://api.example.com/in"
        else:
            values[name] = "value"
    return values


def test_readme_has_yaml_examples() -> None:
    """The README shows at least one full job file."""
    assert YAML_BLOCKS


@pytest.mark.parametrize("block", YAML_BLOCKS)
def test_every_readme_yaml_example_is_a_valid_job(block: str) -> None:
    """Each ```yaml block of the README is a job file that loads."""
    parse_job(block, filename="README.md", env=dummy_env(block))


@pytest.mark.parametrize("path", sorted((ROOT / "jobs").glob("*.yml")), ids=lambda p: p.name)
def test_every_job_file_is_valid(path: Path) -> None:
    """Each file in jobs/ loads, with its variables unset (defaults) or set."""
    load_job(path, env=dummy_env(path.read_text()))


def model_keys(model: type, prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():  # type: ignore[attr-defined]
        annotation = field.annotation
        inner = [
            a for a in getattr(annotation, "__args__", (annotation,)) if hasattr(a, "model_fields")
        ]
        if inner and name != "envelope":
            keys += model_keys(inner[0], f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def test_every_job_key_is_in_the_reference() -> None:
    """The README's reference table has a row for every key of the job model."""
    for key in model_keys(Job):
        assert f"| `{key}` |" in README, f"{key} is not documented"


def test_exit_codes_are_documented() -> None:
    """Every exit code constant appears in the README's table."""
    codes = [v for k, v in vars(defaults).items() if k.startswith("EXIT_")]
    for code in codes:
        assert re.search(rf"^\| {code} \|", README, flags=re.MULTILINE), code
