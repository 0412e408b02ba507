"""The scripts' and benchmarks' own verdicts: scripts/install-browser fails in CI where it cannot
install chromium (and only says so elsewhere), the browser tests fail rather than skip in CI
without chromium, and bench.load fails a load that got no 200."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.load import problems_in
from bench.wrk import WrkResult
from tests.helpers import run_install_script

ROOT = Path(__file__).resolve().parent.parent
INSTALL_BROWSER = ROOT / "scripts" / "install-browser"


def install_browser(
    tmp_path: Path, ci: str | None, tools: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """scripts/install-browser for a chromium path that does not exist (see ``run_install_script``)."""
    env = {"GRADIENT_CHROMIUM": str(tmp_path / "no-chromium")}
    return run_install_script(INSTALL_BROWSER, tmp_path, ci, env, tools)


@pytest.mark.parametrize("ci", ["true", "1", "TRUE"])
def test_install_browser_fails_in_ci_without_apt_get(tmp_path: Path, ci: str) -> None:
    done = install_browser(tmp_path, ci)
    assert done.returncode == 1
    assert "FAILED: no apt-get here" in done.stderr
    assert f"CI={ci}" in done.stderr


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_install_browser_only_says_so_elsewhere(tmp_path: Path, ci: str | None) -> None:
    done = install_browser(tmp_path, ci)
    assert done.returncode == 0
    assert "no apt-get here" in done.stderr
    assert "the browser tests will SKIP" in done.stderr


@pytest.mark.parametrize(
    ("apt_get", "reason"),
    [
        ("exit 100", "apt-get could not install chromium"),  # a failed install
        ("exit 0", "apt-get installed chromium, but not at this path"),  # installed elsewhere
    ],
)
def test_install_browser_checks_what_apt_get_did(tmp_path: Path, apt_get: str, reason: str) -> None:
    tools = {"id": "echo 0", "apt-get": apt_get}  # as root, with an apt-get that does not install chromium here
    ci = install_browser(tmp_path, "true", tools)
    assert ci.returncode == 1
    assert f"FAILED: {reason}" in ci.stderr
    local = install_browser(tmp_path, None, tools)
    assert local.returncode == 0
    assert reason in local.stderr
    assert "the browser tests will SKIP" in local.stderr


@pytest.mark.parametrize(("ci", "outcome"), [("true", "1 error"), ("", "1 skipped")])
def test_browser_tests_fail_in_ci_without_chromium(tmp_path: Path, ci: str, outcome: str) -> None:
    """A browser test run with no chromium: an error in CI, a skip elsewhere."""
    env = {**os.environ, "CI": ci, "GRADIENT_CHROMIUM": str(tmp_path / "no-chromium")}
    test = "tests/browser/test_playground.py::test_the_page_loads_cleanly_and_stays_on_its_origin"
    # --noconftest: tests/conftest.py imports the service and torch, which this test never reaches.
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--noconftest", "-q", "-rs", test],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert outcome in done.stdout, done.stdout + done.stderr
    assert "no chromium at" in done.stdout
    if ci:
        assert done.returncode != 0
        assert "in CI the browser tests must run, not skip" in done.stdout
    else:
        assert done.returncode == 0


def wrk_result(statuses: dict[int, int], socket_errors: str | None = None) -> WrkResult:
    return WrkResult(sum(statuses.values()), 10.0, 1.0, 2.0, statuses, socket_errors)


def test_load_fails_a_load_that_got_no_200_or_too_few() -> None:
    fine = {"1x": wrk_result({200: 50}), "10x": wrk_result({200: 40, 503: 900})}
    assert problems_in(fine, {"1x": {}, "10x": {}}) == []
    starved = {"1x": wrk_result({200: 50}), "10x": wrk_result({200: 3, 503: 900})}
    assert problems_in(starved, {}) == ["goodput 0.06 at 10x, under 0.5"]
    only_503 = {"1x": wrk_result({200: 50}), "10x": wrk_result({503: 900})}
    assert problems_in(only_503, {}) == ["10x: no 200 came back, only 503: 900", "goodput 0.00 at 10x, under 0.5"]
    nothing = {"1x": wrk_result({}), "10x": wrk_result({200: 1, 500: 1}, "Socket errors: connect 0, read 1")}
    assert problems_in(nothing, {"10x": {"failures": [503.0]}}) == [
        "1x: no 200 came back, only no status at all",
        "10x: unexpected statuses [500]",
        "10x: Socket errors: connect 0, read 1",
        "10x probe failures: [503.0]",
    ]
