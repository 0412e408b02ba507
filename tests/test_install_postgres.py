"""scripts/install-postgres fails in CI where it cannot install PostgreSQL (and only says so
elsewhere), and the PostgreSQL tests fail rather than skip in CI without it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import BASH, run_install_script

ROOT = Path(__file__).resolve().parent.parent
INSTALL_POSTGRES = ROOT / "scripts" / "install-postgres"


def install_postgres(
    tmp_path: Path, ci: str | None, tools: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """scripts/install-postgres for server binaries that do not exist (see ``run_install_script``)."""
    env = {"GRADIENT_PG_BIN": str(tmp_path / "no-postgres")}
    return run_install_script(INSTALL_POSTGRES, tmp_path, ci, env, tools)


@pytest.mark.parametrize(("ci", "code"), [("true", 1), ("1", 1), (None, 0), ("false", 0)])
def test_without_apt_get(tmp_path: Path, ci: str | None, code: int) -> None:
    done = install_postgres(tmp_path, ci)
    assert done.returncode == code
    assert "no apt-get here" in done.stderr
    assert ("FAILED" in done.stderr) == (code == 1)
    assert ("the PostgreSQL tests will SKIP" in done.stderr) == (code == 0)


@pytest.mark.parametrize(
    ("apt_get", "reason"),
    [
        ("exit 100", "apt-get could not install postgresql"),
        ("exit 0", "apt-get installed postgresql, but not its server binaries"),
    ],
)
def test_checks_what_apt_get_did(tmp_path: Path, apt_get: str, reason: str) -> None:
    tools = {"id": "echo 0", "apt-get": apt_get}  # as root, with an apt-get that installs nothing here
    ci = install_postgres(tmp_path, "true", tools)
    assert ci.returncode == 1 and f"FAILED: {reason}" in ci.stderr
    local = install_postgres(tmp_path, None, tools)
    assert local.returncode == 0 and reason in local.stderr


def test_an_installed_server_is_left_alone(tmp_path: Path) -> None:
    server = tmp_path / "pg"
    server.mkdir()
    for name in ("initdb", "pg_ctl"):
        (server / name).write_text(f"#!{BASH}\n")
        (server / name).chmod(0o755)
    env = {"PATH": "/nonexistent", "GRADIENT_PG_BIN": str(server)}
    done = subprocess.run([BASH, str(INSTALL_POSTGRES)], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "already there" in done.stdout


@pytest.mark.parametrize(("ci", "outcome"), [("true", "1 error"), ("", "1 skipped")])
def test_postgres_tests_fail_in_ci_without_postgres(tmp_path: Path, ci: str, outcome: str) -> None:
    env = {**os.environ, "CI": ci, "GRADIENT_PG_BIN": str(tmp_path / "no-postgres")}
    test = "tests/e2e/test_formulas_databases.py::test_postgres_keeps_input_order_and_times"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", test],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert outcome in done.stdout, done.stdout + done.stderr
    assert "PostgreSQL is not installed" in done.stdout
    assert (done.returncode != 0) == bool(ci)
