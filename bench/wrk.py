"""Run wrk with bench/post_json.lua and read its results."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).with_name("post_json.lua")
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


@dataclass(frozen=True)
class WrkResult:
    requests: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    statuses: dict[int, int]
    socket_errors: str | None
    """wrk's "Socket errors: connect ..., read ..., write ..., timeout ..." line, if any."""

    @property
    def non2xx(self) -> int:
        return sum(count for status, count in self.statuses.items() if not 200 <= status < 300)


def _latency_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise ValueError(f"unreadable wrk latency {text!r}")
    return float(match[1]) * _UNITS[match[2]]


def _find(pattern: str, output: str, what: str) -> str:
    match = re.search(pattern, output, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no {what} in wrk's output:\n{output}")
    return match[1]


def run_wrk(
    url: str, body: bytes, duration_s: int, connections: int, threads: int = 1, timeout_s: int = 2
) -> WrkResult:
    """One wrk run POSTing ``body`` to ``url``; raises when wrk fails or completes nothing."""
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration_s}s",
        f"--timeout={timeout_s}s",
        "--latency",
        "-s",
        str(SCRIPT),
        url,
    ]
    done = subprocess.run(
        command, env={**os.environ, "WRK_BODY": body.decode()}, capture_output=True, text=True, check=False
    )
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {done.returncode}:\n{output}")
    requests = int(_find(r"^\s*(\d+) requests in ", output, "request count"))
    if requests == 0:
        raise RuntimeError(f"no requests completed against {url}:\n{output}")
    errors = re.search(r"^\s*(Socket errors:.*)$", output, re.MULTILINE)
    return WrkResult(
        requests=requests,
        requests_per_s=float(_find(r"^Requests/sec:\s+([\d.]+)", output, "Requests/sec")),
        p50_ms=_latency_ms(_find(r"^\s+50%\s+(\S+)", output, "50% latency")),
        p99_ms=_latency_ms(_find(r"^\s+99%\s+(\S+)", output, "99% latency")),
        statuses={int(code): int(n) for code, n in re.findall(r"^status (\d+) (\d+)$", output, re.MULTILINE)},
        socket_errors=errors[1] if errors else None,
    )
