"""The command line: every setting is an option, options reach the settings through the env."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from pydantic import ValidationError

from service import cli
from service.config import Settings


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """cli.main writes options into os.environ; give each test a copy to write into."""
    monkeypatch.setattr(os, "environ", os.environ.copy())


def test_every_setting_is_an_option() -> None:
    help_text = cli.build_parser().format_help()
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in help_text
        assert f"GRADIENT_{name.upper()}" in help_text


def test_options_become_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_run(app: str, **kwargs: Any) -> None:
        seen.update(kwargs, app=app, settings=Settings())

    monkeypatch.setattr("service.cli.uvicorn.run", fake_run)
    monkeypatch.setenv("GRADIENT_WORKERS", "1")
    monkeypatch.setenv("GRADIENT_MAX_ELEMENTS", "77")
    cli.main(["--port", "9123", "--max-elements", "55"])
    assert seen["app"] == "service.main:app"
    assert seen["port"] == 9123
    assert seen["settings"].max_elements == 55  # the option wins over the environment
    assert os.environ["GRADIENT_PORT"] == "9123"  # so that every worker process sees it


def test_bad_option_values_are_refused() -> None:
    with pytest.raises(SystemExit):
        cli.main(["--port", "not-a-port"])


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", " CUDA:0 "])
def test_device_setting_accepts(device: str) -> None:
    assert Settings(device=device).device == device.strip().lower()


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "tpu"])
def test_device_setting_refuses(device: str) -> None:
    with pytest.raises(ValidationError):
        Settings(device=device)


def test_threads_never_oversubscribe_the_cores() -> None:
    cores = os.cpu_count() or 1
    assert Settings(workers=1).effective_torch_threads() == cores
    assert Settings(workers=cores * 2).effective_torch_threads() == 1
    assert Settings(torch_threads=3).effective_torch_threads() == 3


def test_building_the_app_never_initialises_cuda() -> None:
    """The server process that forks the workers must not hold a CUDA context: start a fresh
    interpreter, parse options, build the app and its OpenAPI, and look."""
    script = (
        "import torch, service.cli, service.main\n"
        "service.cli.build_parser().parse_args([])\n"
        "app = service.main.create_app()\n"
        "app.openapi()\n"
        "assert not torch.cuda.is_initialized()\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
