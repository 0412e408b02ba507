"""Start the real console entry point (``python -m service``) on a free port, for e2e tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

Server = tuple[str, subprocess.Popen[bytes], Path]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def running_server(log: Path, **settings: str) -> Iterator[Server]:
    """A server process with GRADIENT_* ``settings`` (one torch thread unless given), ready to
    compute; its output goes to ``log``. Killed on exit if still running."""
    port = free_port()
    env = {**os.environ, "GRADIENT_TORCH_THREADS": "1", **settings}
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "--port", str(port)], env=env, stdout=output, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, f"the server exited during start-up:\n{log.read_text()}"
            assert time.monotonic() < deadline, "the server did not become ready within 60 s"
            time.sleep(0.2)
        yield base, process, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
