"""Schemathesis, with all its checks, against the real server's own /openapi.json."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.serving import running_server

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def test_schemathesis_finds_nothing(tmp_path: Path) -> None:
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if cli is None:
        pytest.skip("schemathesis is not installed (it is in the test extra)")
    with running_server(tmp_path / "server.log", GRADIENT_ACCESS_LOG="false") as (base, *_):
        done = subprocess.run(
            [
                cli,
                "run",
                f"{base}/openapi.json",
                "--checks",
                "all",
                "--max-examples",
                "25",
                "--generation-deterministic",
                "--request-timeout",
                "90",
                "--no-color",
            ],
            cwd=ROOT,  # schemathesis.toml: the statuses our contract gives schema-valid bodies
            capture_output=True,
            text=True,
            timeout=1200,
            check=False,
        )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    generated = re.search(r"(\d+) generated", done.stdout)
    assert generated is not None and int(generated[1]) > 100, done.stdout[-3000:]  # it really exercised the API
