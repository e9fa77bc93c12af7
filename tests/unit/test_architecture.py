"""The shape of the package: one front door, imports pointing down, one home per library."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import loader
import loader.scheduler

PACKAGE = Path(loader.__file__).parent
ROOT = PACKAGE.parent
README = ROOT / "README.md"
LIBRARIES = {
    "yaml",
    "dotenv",
    "pydantic",
    "sqlparse",
    "orjson",
    "sqlalchemy",
    "psycopg",
    "httpx",
    "httpcore",
    "certifi",
    "croniter",
    "tenacity",
    "typer",
    "rich",
    "prometheus_client",
    "procrastinate",
}


def documented_map() -> tuple[dict[str, tuple[int, int]], dict[str, set[str]]]:
    """The layer map in the README's Development section: each module's (layer, place in
    its row), and each third-party library's modules."""
    section = README.read_text().split("### The map of `loader/`", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("| ") and line[2].isdigit()]
    places: dict[str, tuple[int, int]] = {}
    homes: dict[str, set[str]] = {}
    for row in rows:
        layer, modules, libraries = (cell.strip() for cell in row.strip("|").split("|")[:3])
        for place, name in enumerate(re.findall(r"`([\w.]+)`", modules)):
            assert name not in places, f"{name} is in the map twice"
            places[name] = (int(layer.split()[0]), place)
        for clause in filter(None, (c.strip() for c in libraries.split(";"))):
            names, _, owners = clause.partition(" in ")
            for library in re.findall(r"`(\w+)`", names):
                homes.setdefault(library, set()).update(re.findall(r"`(\w+)`", owners))
    return places, homes


PLACES, HOMES = documented_map()


def modules() -> dict[str, list[Path]]:
    """Every module of the library by its name in the map: a package (``state/``) is one
    module, and ``scheduler/`` (installed as ``loader.scheduler``) is ``scheduler``."""
    found: dict[str, list[Path]] = {}
    for path in PACKAGE.glob("*.py"):
        found.setdefault(path.stem, []).append(path)
    for package in [p for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()]:
        found.setdefault(package.name, []).extend(package.rglob("*.py"))
    found["scheduler"] = sorted((ROOT / "scheduler").rglob("*.py"))
    return found


def runtime_imports(path: Path) -> set[str]:
    """Top-level names of modules imported outside ``if TYPE_CHECKING:`` blocks and
    outside a package's ``__getattr__`` (the front door's lazy re-exports of the queue
    and the clock: names it hands out, not code it uses)."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        lazy = (
            path.name == "__init__.py"
            and isinstance(node, ast.FunctionDef)
            and node.name == "__getattr__"
        )
        if lazy or (isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)):
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


def loader_module(name: str) -> str | None:
    """The map's name of the loader module an import names, if any."""
    parts = name.split(".")
    if parts[0] != "loader" or len(parts) == 1:
        return None
    return parts[1] if parts[1] in PLACES else None


def test_every_module_is_in_the_documented_map() -> None:
    """New modules must be placed in the README's map, and the map names no module that
    is gone."""
    assert set(modules()) == set(PLACES)


def test_imports_point_downward() -> None:
    """A module imports only modules of a lower layer, or of its own layer listed before
    it (modules of one package import each other freely)."""
    for name, paths in modules().items():
        for path in paths:
            for imported in map(loader_module, runtime_imports(path)):
                if imported is None or imported == name:
                    continue
                assert PLACES[imported] < PLACES[name], f"{path}: {name} imports {imported}"


def test_each_library_lives_in_its_documented_modules() -> None:
    """Swapping a library touches only the modules the map names for it."""
    for name, paths in modules().items():
        for path in paths:
            for imported in runtime_imports(path):
                library = imported.split(".")[0]
                if library in LIBRARIES:
                    assert name in HOMES.get(library, set()), f"{path} imports {imported}"


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


def test_rooms_fit() -> None:
    """No module of the library or the clock runs over 500 lines, no function over 60
    (from its ``def`` to its last line): past that, split by responsibility."""
    oversized = []
    for paths in modules().values():
        for path in paths:
            text = path.read_text()
            if len(text.splitlines()) > 500:
                oversized.append(f"{path.relative_to(ROOT)}: {len(text.splitlines())} lines")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = (node.end_lineno or node.lineno) - node.lineno + 1
                    if length > 60:
                        oversized.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert oversized == []


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
