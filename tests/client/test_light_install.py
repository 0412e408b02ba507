"""``pip install ./client`` in a fresh virtual environment: the client works without torch, and
never imports it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]

CHECK = """
import importlib.util, json, sys
import gradient_client
assert importlib.util.find_spec("torch") is None, "torch is installed"
with gradient_client.Client(sys.argv[1]) as client:
    result = client.differentiate("sum(x ** 2)", {"x": [1.0, 2.0]}, derivatives=["grad", "hessian"])
    print(json.dumps({
        "torch_imported": "torch" in sys.modules,
        "location": gradient_client.__file__,
        "grad": result.grad["x"].tolist(),
        "hessian": result.hessian["x"]["x"].tolist(),
        "dtype": str(result.value.dtype),
    }))
"""


def test_the_client_installs_and_works_without_torch(tmp_path: Path, service_url: str) -> None:
    source = tmp_path / "client"  # a copy: the build writes into its source tree
    shutil.copytree(ROOT / "client", source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    venv = tmp_path / "venv"
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(source)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr

    done = subprocess.run(
        [str(python), "-c", CHECK, service_url], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["torch_imported"] is False
    assert Path(report["location"]).is_relative_to(venv)
    assert report == {**report, "grad": [2.0, 4.0], "hessian": [[2.0, 0.0], [0.0, 2.0]], "dtype": "float32"}

    info = subprocess.run(
        [str(venv / "bin" / "gradient-client"), "--url", service_url, "info"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert info.returncode == 0, info.stderr
    assert info.stdout.startswith("gradient-service 0.1.0 at ")
