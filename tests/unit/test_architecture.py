"""The shape of the package: one front door, imports pointing down, one home per library."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import loader
import loader.scheduler

PACKAGE = Path(loader.__file__).parent

# A module may import loader modules of a strictly lower rank only.
RANKS = {
    "errors": 0, "defaults": 0, "units": 0, "_version": 0, "logs": 0,
    "redact": 1, "schedule": 1, "ratelimit": 1, "result": 1,
    "job": 2,
    "jobfile": 3, "encoding": 3, "database": 3,
    "source": 4, "batching": 4, "sink": 4, "retry": 4,
    "state": 5,
    "monitor": 6,
    "runner": 7,
    "receiver": 8, "example": 8, "replay": 8, "check": 8, "workers": 8,
    "cli": 9, "__init__": 9, "__main__": 10,
}  # fmt: skip

# Each third-party library is imported (at run time) by one module only.
HOMES = {
    "yaml": {"jobfile"},
    "dotenv": {"jobfile"},
    "pydantic": {"job"},
    "orjson": {"encoding"},
    "sqlalchemy": {"source", "state", "database"},
    "psycopg": {"source"},
    "httpx": {"sink"},
    "certifi": {"sink"},
    "croniter": {"schedule"},
    "tenacity": {"retry"},
    "typer": {"cli"},
    "rich": {"cli"},
    "prometheus_client": set(),  # the clock's, in loader.scheduler (scheduler/)
    "procrastinate": {"workers"},
}


def runtime_imports(path: Path) -> set[str]:
    """Top-level names of modules imported outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for child in ast.walk(node))
    names = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if node.module == "loader":
                names.update(f"loader.{alias.name}" for alias in node.names)
    return names


def test_every_module_has_a_rank() -> None:
    """New modules must be placed in the layering above."""
    assert {p.stem for p in PACKAGE.glob("*.py")} == set(RANKS)


def test_imports_point_downward() -> None:
    """A module imports only loader modules below it."""
    for path in PACKAGE.glob("*.py"):
        for name in runtime_imports(path):
            parts = name.split(".")
            if parts[0] == "loader" and len(parts) > 1 and parts[1] in RANKS:
                assert RANKS[parts[1]] < RANKS[path.stem], f"{path.stem} imports {name}"


def test_each_library_lives_in_one_module() -> None:
    """Swapping a library touches one file."""
    for path in PACKAGE.glob("*.py"):
        for name in runtime_imports(path):
            home = HOMES.get(name.split(".")[0])
            assert home is None or path.stem in home, f"{path.stem} imports {name}"


def _outside_the_scheduler(module: str) -> bool:
    """A loader submodule that is not the scheduler itself or one of its modules."""
    inside = module == "loader.scheduler" or module.startswith("loader.scheduler.")
    return module.startswith("loader.") and not inside


def test_scheduler_uses_the_public_api_only() -> None:
    """loader.scheduler imports `loader` itself and its own modules, no other submodule."""
    paths = sorted(Path(loader.scheduler.__file__).parent.glob("*.py"))
    assert paths
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                assert not _outside_the_scheduler(node.module), f"{path}: {node.module}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert not _outside_the_scheduler(alias.name), f"{path}: {alias.name}"


def test_all_is_sorted_and_complete() -> None:
    """__all__ is sorted, and every name in it exists."""
    assert loader.__all__ == sorted(loader.__all__)
    for name in loader.__all__:
        assert hasattr(loader, name), name


def test_one_root_exception() -> None:
    """Every public exception derives from LoaderError."""
    errors = [getattr(loader, n) for n in loader.__all__ if n.endswith("Error")]
    assert errors and all(issubclass(e, loader.LoaderError) for e in errors)


def test_a_run_does_not_import_what_only_other_commands_need() -> None:
    """Start-up is part of every run: croniter (whose import starts a subprocess), mail,
    the receiver's HTTP server, the queue and the authoring tools load on first use."""
    lazy = ["croniter", "smtplib", "http.server", "procrastinate", "loader.check",
            "loader.replay", "loader.example", "loader.receiver", "loader.workers"]  # fmt: skip
    code = f"import sys, loader.cli; print([m for m in {lazy!r} if m in sys.modules])"
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == "[]"


def test_the_clock_loads_on_first_use() -> None:
    """`import loader` leaves the clock unloaded; `loader.Clock` is loader.scheduler's."""
    code = (
        "import sys, loader\n"
        "print('loader.scheduler' in sys.modules, 'prometheus_client' in sys.modules)\n"
        "from loader import Clock\n"
        "import loader.scheduler\n"
        "print(Clock is loader.scheduler.Clock)\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert output.split() == ["False", "False", "True"]
