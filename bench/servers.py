"""Start real servers on free ports and wait until they answer (the benchmarks' and the
end-to-end tests')."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_ready(url: str, process: subprocess.Popen[bytes], what: str, timeout_s: float = 60) -> None:
    """Poll ``url`` until it answers 200; RuntimeError if ``process`` exits or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited during start-up (status {process.returncode})")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer {url} within {timeout_s:g} s")
        time.sleep(0.2)


@contextlib.contextmanager
def uvicorn_server(app: str, env: dict[str, str] | None = None, ready_path: str = "/docs") -> Iterator[str]:
    """Run ``uvicorn app`` on a free port with one worker; yield its base URL."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            app,
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env={**os.environ, **(env or {})},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base + ready_path, process, what=app)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)
