"""Import rules between layers: the compiler stays pure, libraries stay at their edges."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# module prefix -> packages it must never import
FORBIDDEN = {
    "flowlang": ("sqlalchemy", "alembic", "httpx", "starlette", "uvicorn", "runtime", "server"),
    "runtime": ("httpx", "starlette", "uvicorn", "server", "lark"),
}
# (library, files allowed to import it)
CONFINED = {
    "lark": ("flowlang/parser.py", "flowlang/lower.py"),
}
# The CLI is the edge where the compiler meets the runtime commands.
EXEMPT = {"flowlang/cli.py"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _python_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_layers_do_not_import_upwards() -> None:
    problems = []
    for package, forbidden in FORBIDDEN.items():
        for path in _python_files(package):
            rel = path.relative_to(ROOT).as_posix()
            if rel in EXEMPT:
                continue
            bad = _imports(path) & set(forbidden)
            if bad:
                problems.append(f"{rel} imports {sorted(bad)}")
    assert problems == []


def test_libraries_stay_in_their_modules() -> None:
    problems = []
    for library, allowed in CONFINED.items():
        for package in ("flowlang", "runtime", "server"):
            for path in _python_files(package):
                rel = path.relative_to(ROOT).as_posix()
                if library in _imports(path) and rel not in allowed:
                    problems.append(f"{rel} imports {library}")
    assert problems == []
