"""Helpers the tests share: wire <-> torch and error-body checks."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import torch

NON_FINITE = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}
WIRE_DTYPE = {"float32": torch.float32, "float64": torch.float64, "int64": torch.int64}


def from_wire(value: Any, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A response tensor (nested lists with non-finite strings, or a base64 object) as torch."""
    if isinstance(value, dict):
        raw = bytearray(base64.b64decode(value["base64"]))
        wire_dtype = WIRE_DTYPE[value["dtype"]]
        if not raw:
            return torch.empty(value["shape"], dtype=wire_dtype)
        return torch.frombuffer(raw, dtype=wire_dtype).reshape(value["shape"])
    return torch.tensor(_replace_strings(value), dtype=dtype)


def _replace_strings(value: Any) -> Any:
    if isinstance(value, list):
        return [_replace_strings(item) for item in value]
    if isinstance(value, str):
        return NON_FINITE[value]
    return value


def to_base64(tensor: torch.Tensor) -> dict[str, Any]:
    name = {v: k for k, v in WIRE_DTYPE.items()}[tensor.dtype]
    raw = tensor.contiguous().numpy().tobytes()
    return {"shape": list(tensor.shape), "dtype": name, "base64": base64.b64encode(raw).decode()}


def assert_error(response: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    """The response has the status and the contract's error body with the given type."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["type"] == error_type, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    error: dict[str, Any] = body["error"]
    return error


def examples(quick: int) -> int:
    """A test's hypothesis example count: ``quick`` in the quick profile, ten times it (at least
    the profile's own count) in the thorough one."""
    from hypothesis import settings

    profile = settings()
    return quick if profile.max_examples <= 100 else max(10 * quick, profile.max_examples)


BASH = shutil.which("bash") or "/bin/bash"


def run_install_script(
    script: Path, tmp_path: Path, ci: str | None, env: dict[str, str], tools: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one of scripts/install-* with the variables ``env``, a PATH holding only ``tools``
    (name: the shell script standing in for it), and CI unset or set to ``ci``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (tools or {}).items():
        (bin_dir / name).write_text(f"#!{BASH}\n{text}\n")
        (bin_dir / name).chmod(0o755)
    env = {**env, "PATH": str(bin_dir)}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([BASH, str(script)], env=env, capture_output=True, text=True, timeout=60, check=False)
