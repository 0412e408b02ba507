"""The layout's rules, checked: compute never imports HTTP, routes stay thin, the playground's
modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HTTP_MODULES = ("service.api", "service.main", "fastapi", "starlette", "uvicorn", "pydantic")


def imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


@pytest.mark.parametrize("path", sorted((ROOT / "service" / "compute").rglob("*.py")), ids=str)
def test_compute_imports_nothing_of_http(path: Path) -> None:
    http = {name for name in imported_modules(path) if name.startswith(HTTP_MODULES)}
    assert not http, f"{path.relative_to(ROOT)} imports {sorted(http)}"


@pytest.mark.parametrize("path", sorted((ROOT / "service" / "api" / "routes").glob("*.py")), ids=str)
def test_route_modules_are_at_most_200_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= 200


@pytest.mark.parametrize("path", sorted((ROOT / "service" / "web").glob("*.js")), ids=str)
def test_playground_modules_are_at_most_600_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= 600


def test_the_checks_see_the_files() -> None:
    assert len(list((ROOT / "service" / "compute").rglob("*.py"))) > 20
    assert len(list((ROOT / "service" / "api" / "routes").glob("*.py"))) >= 7
    assert (ROOT / "service" / "web" / "main.js").exists()
    assert any(name.startswith("service.api") for name in imported_modules(ROOT / "service" / "main.py"))
