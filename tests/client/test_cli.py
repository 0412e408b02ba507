"""``gradient-client``, the command line, run as a subprocess against the real service."""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from gradient_client import cli
from gradient_client.cli import URL_VARIABLE, parse_optimizer, parse_tensor

from bench.servers import free_port
from tests.client.test_client import HIMMELBLAU

COMMAND = Path(sys.executable).parent / "gradient-client"
ROOT = Path(__file__).resolve().parents[2]


def gradient_client(*args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
    """The console script with ``args``; the service's URL from the environment variable."""
    env = {key: value for key, value in os.environ.items() if key != URL_VARIABLE}
    if url is not None:
        env[URL_VARIABLE] = url
    return subprocess.run([str(COMMAND), *args], capture_output=True, text=True, env=env, timeout=120, check=False)


def test_differentiate_prints_the_value_and_the_derivatives(service_url: str) -> None:
    done = gradient_client("differentiate", HIMMELBLAU, "x=3,2", "--grad", "--hessian", url=service_url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["value: 0.0", "grad.x: [0.0, 0.0]", "hessian.x.x: [[74.0, 20.0], [20.0, 34.0]]"]
    # The gradient is the default; several inputs; --wrt; a matrix as rows.
    done = gradient_client("differentiate", "sum(W @ x)", "W=1,2;3,4", "x=1,1", "--wrt", "W", url=service_url)
    assert done.stdout.splitlines() == ["value: 10.0", "grad.W: [[1.0, 1.0], [1.0, 1.0]]"]


def test_differentiate_with_tangents_a_dry_run_and_json(service_url: str) -> None:
    done = gradient_client(
        "differentiate", "sum(x ** 2)", "x=1,2", "--tangent", "x=1,0", "--jvp", "--hvp", url=service_url
    )
    assert done.stdout.splitlines() == ["value: 5.0", "hvp.x: [2.0, 0.0]", "jvp: 2.0"]
    # One direction per input, shared by --jvp and --hvp (the request's one tangents map).
    done = gradient_client(
        "differentiate", "sum(x * y)", "x=1,2", "y=3,4", "--tangent", "x=1,0", "--tangent", "y=0,1", "--jvp", "--hvp",
        url=service_url,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["value: 11.0", "hvp.x: [0.0, 1.0]", "hvp.y: [1.0, 0.0]", "jvp: 5.0"]
    done = gradient_client(
        "differentiate", "sum(W @ W @ W)", "W=[[1, 2], [3, 4]]", "--grad", "--hessian", "--dry-run", url=service_url
    )
    lines = done.stdout.splitlines()
    assert lines[:3] == [
        "value: shape [] float32",
        "grad.W: shape [2, 2] float32",
        "hessian.W.W: shape [2, 2, 2, 2] float32",
    ]
    assert lines[3].startswith("cost: ") and lines[3].endswith(" bytes at the peak")
    done = gradient_client("--json", "differentiate", "log(x)", "x=0,-1,1", "--dtype", "float64", url=service_url)
    assert json.loads(done.stdout) == {"value": ["-Infinity", "NaN", 0.0], "grad.x": ["Infinity", -1.0, 1.0]}


def test_optimize_draws_progress_on_stderr_and_prints_the_runs(service_url: str) -> None:
    done = gradient_client(
        "optimize", "himmelblau", "--starts", "1,0;-4,0", "--optimizer", "adam:lr=0.05", "--steps", "1000",
        "--record-every", "250", url=service_url,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    progress = done.stderr.splitlines()
    assert len(progress) == 5 and progress[0].startswith("[....") and "step 0/1000" in progress[0]
    assert progress[-1].startswith("[" + "#" * 30 + "] 100% step 1000/1000, best value ")
    runs = done.stdout.splitlines()
    assert len(runs) == 2
    assert runs[0].startswith("run 0 (adam) from [1.0, 0.0]: x [3.0") and "1000 steps (max_steps)" in runs[0]
    assert "nearest minimum [3.0, 2.0]" in runs[0] and "nearest minimum [-3.77931" in runs[1]


def test_optimize_an_expression_quietly_as_a_summary(service_url: str) -> None:
    done = gradient_client(
        "optimize", "sum((x - c) ** 2)", "c=1,2", "--x0", "0,0", "--optimizer", "lbfgs", "--steps", "20",
        "--tolerance", "1e-6", "--summary", "--quiet", url=service_url,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.splitlines()[:2] == ["1 runs (lbfgs)", "stopped: tolerance 1"]
    done = gradient_client(
        "--json", "optimize", "sum((x - c) ** 2)", "c=1,2", "--x0", "0,0", "--optimizer", "lbfgs", "--steps", "20",
        "--quiet", "--dtype", "float64", url=service_url,
    )  # fmt: skip
    (run,) = json.loads(done.stdout)["runs"]
    assert run["optimizer"]["name"] == "lbfgs" and run["x"] == pytest.approx([1.0, 2.0], abs=1e-6)


def test_info_and_catalogs(service_url: str) -> None:
    done = gradient_client("info", url=service_url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"gradient-service 0.1.0 at {service_url}"
    assert "  max_elements: 10000000" in done.stdout.splitlines()
    done = gradient_client("--url", service_url, "list", "objectives", url="http://127.0.0.1:9")  # --url wins
    assert done.stdout.splitlines()[0].startswith("himmelblau: ")


def test_errors_are_one_line_on_stderr(service_url: str) -> None:
    done = gradient_client("differentiate", "sum(y)", "x=1", url=service_url)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("error: 400 unknown_name: ") and "(request " in done.stderr
    unreachable = gradient_client("--retries", "0", "info", url=f"http://127.0.0.1:{free_port()}")
    assert unreachable.returncode == 1 and unreachable.stderr.startswith("error: connection_failed: ")
    usage = gradient_client("optimize", "himmelblau", url=service_url)
    assert usage.returncode != 0 and "give one of --x0 and --starts" in usage.stderr


def test_the_clients_own_refusals_are_one_line_on_stderr() -> None:
    """Refused before anything is sent (nothing listens at the URL): a value that is no array of
    numbers, a NaN where JSON has none, one input's direction given twice."""
    url = f"http://127.0.0.1:{free_port()}"
    ragged = gradient_client("differentiate", "sum(x)", "x=[[1],[2,3]]", url=url)
    assert (ragged.returncode, ragged.stdout) == (1, "")
    assert ragged.stderr.startswith("error: inputs.x is not a rectangular array of numbers: ")
    words = gradient_client("differentiate", "sum(x)", 'x=["a"]', url=url)
    assert (words.returncode, words.stderr) == (1, "error: inputs.x must hold real numbers, not <U1 values\n")
    nan = gradient_client("optimize", "himmelblau", "--x0", "1,0", "--optimizer", "adam:lr=NaN", "--quiet", url=url)
    assert nan.returncode == 1 and nan.stderr.startswith("error: the request holds a number JSON cannot carry")
    twice = gradient_client("differentiate", "sum(x)", "x=1,2", "--tangent", "x=1,0", "--tangent", "x=0,1", url=url)
    assert (twice.returncode, twice.stderr) == (1, "error: two tangents for x\n")
    for done in (ragged, words, nan, twice):
        assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr


def test_the_module_runs_too() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gradient_client", "--version"], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "gradient-client 0.1.0"


def test_values_and_optimizers_from_the_command_line() -> None:
    assert parse_tensor("3") == 3.0
    assert parse_tensor("1,2") == [1.0, 2.0]
    assert parse_tensor("1,") == [1.0]
    assert parse_tensor("1,2;3,4") == [[1.0, 2.0], [3.0, 4.0]]
    assert parse_tensor("[[1, 2]]") == [[1, 2]]
    assert parse_tensor("nan,-inf")[1] == float("-inf")
    with pytest.raises(argparse.ArgumentTypeError):
        parse_tensor("a,b")
    assert parse_optimizer("adam") == "adam"
    assert parse_optimizer("adam:lr=0.05,betas=[0.9,0.99],amsgrad=true") == {
        "name": "adam",
        "lr": 0.05,
        "betas": [0.9, 0.99],
        "amsgrad": True,
    }
    assert parse_optimizer("lbfgs:line_search_fn=none") == {"name": "lbfgs", "line_search_fn": "none"}
    assert parse_optimizer('{"name": "sgd", "lr": 0.1}') == {"name": "sgd", "lr": 0.1}


def environment_variables_read(module: Any) -> set[str]:
    """The names ``module`` reads with ``os.environ.get(NAME)``, ``os.environ[NAME]`` or
    ``os.getenv(NAME)``, ``NAME`` a string or a module constant (found with ``ast``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(Path(module.__file__).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("os.environ.get", "os.getenv") and node.args:
            argument = node.args[0]
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
            argument = node.slice
        else:
            continue
        if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
            names.add(argument.value)
        elif isinstance(argument, ast.Name) and isinstance(getattr(module, argument.id, None), str):
            names.add(getattr(module, argument.id))
        else:
            raise AssertionError(f"{module.__name__} reads an environment variable named by {ast.unparse(argument)}")
    return names


def test_the_environment_variables_are_the_documented_ones() -> None:
    """Each variable the command line reads is in docs/client.md, and each GRADIENT_CLIENT_* name
    there is read (tests/test_docs.py checks every GRADIENT_* name the docs use against Settings)."""
    read = environment_variables_read(cli)
    assert URL_VARIABLE in read  # the search finds a name read through a constant
    documented = set(re.findall(r"\bGRADIENT_CLIENT_[A-Z0-9_]+\b", (ROOT / "docs" / "client.md").read_text()))
    assert read == documented
