"""Start the real console entry point (``python -m service``) on a free port, for e2e tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.servers import free_port, wait_until_ready

Server = tuple[str, subprocess.Popen[bytes], Path]


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
    try:
        try:
            wait_until_ready(f"{base}/readyz", process, what="the server")
        except RuntimeError as exc:
            raise AssertionError(f"{exc}:\n{log.read_text()}") from None
        yield base, process, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
