"""Throughput for small requests (8 floats, sigmoid) under wrk, against a FastAPI echo endpoint.

Run: .venv/bin/python -m bench.small_requests [--duration S] [--connections C] [--threads T] [--rounds R]
Starts both servers (one uvicorn worker each, no access log; ours with GRADIENT_TORCH_THREADS=1),
warms each with a
short wrk run, then alternates wrk runs against our POST /v1/activations/sigmoid and the baseline's
POST /echo with the same body, ``--rounds`` times. Prints requests/s and p50/p99 latency for each,
and the throughput ratio ours / baseline against the 0.8 target. Needs wrk on the PATH.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics

import httpx
import orjson

from bench.servers import uvicorn_server
from bench.wrk import WrkResult, run_wrk

TARGET = 0.8
INPUT = [0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -0.8]
OURS_PATH = "/v1/activations/sigmoid"
BASELINE_PATH = "/echo"


def measure(url: str, body: bytes, duration_s: int, connections: int, threads: int) -> WrkResult:
    """One wrk run that must be all 2xx without socket errors."""
    result = run_wrk(url, body, duration_s, connections, threads)
    if result.non2xx or result.socket_errors:
        raise RuntimeError(f"{url}: statuses {result.statuses}, {result.socket_errors or 'no socket errors'}")
    return result


def check_answers(ours: str, baseline: str, body: bytes) -> None:
    """One request each, so that a wrong answer fails here rather than as a fast error under load."""
    headers = {"content-type": "application/json"}
    answer = httpx.post(ours + OURS_PATH, content=body, headers=headers, timeout=10)
    answer.raise_for_status()
    expected = [1 / (1 + math.exp(-x)) for x in INPUT]
    output = answer.json()["output"]
    assert all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(output, expected, strict=True)), output
    assert len(answer.json()["grad"]) == len(INPUT), answer.text
    echoed = httpx.post(baseline + BASELINE_PATH, content=body, headers=headers, timeout=10)
    echoed.raise_for_status()
    assert echoed.json() == {"input": INPUT}, echoed.text


def mean_rps(results: list[WrkResult]) -> float:
    return statistics.mean(result.requests_per_s for result in results)


def summary_row(label: str, results: list[WrkResult]) -> str:
    rps = mean_rps(results)
    p50 = statistics.median(result.p50_ms for result in results)
    p99 = statistics.median(result.p99_ms for result in results)
    return f"{label:44s} {rps:10.0f} {p50:9.2f} {p99:9.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured wrk run")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--rounds", type=int, default=4, help="measured runs per server, alternating")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured wrk load per server")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")

    body = orjson.dumps({"input": INPUT})
    print(
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency, {args.rounds} rounds "
        f"alternating, body {body.decode()} ({len(body)} bytes)"
    )
    print(
        "one uvicorn worker each (same settings); ours with GRADIENT_TORCH_THREADS=1, so one worker "
        f"and one torch thread against one worker; {os.cpu_count()} CPUs shared with wrk"
    )

    with (
        uvicorn_server("bench.baseline_app:app") as baseline,
        uvicorn_server(
            "service.main:app",
            env={"GRADIENT_TORCH_THREADS": "1", "GRADIENT_ACCESS_LOG": "false"},
            ready_path="/readyz",
        ) as ours,
    ):
        check_answers(ours, baseline, body)
        targets = {"ours": ours + OURS_PATH, "baseline": baseline + BASELINE_PATH}
        for url in targets.values():
            measure(url, body, args.warmup, args.connections, args.threads)
        results: dict[str, list[WrkResult]] = {"ours": [], "baseline": []}
        for round_ in range(args.rounds):
            order = ["ours", "baseline"] if round_ % 2 == 0 else ["baseline", "ours"]
            for name in order:
                result = measure(targets[name], body, args.duration, args.connections, args.threads)
                results[name].append(result)
                print(
                    f"  round {round_ + 1} {name:8s} {result.requests_per_s:10.0f} req/s  "
                    f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms"
                )

    print()
    print(f"{'':44s} {'req/s':>10s} {'p50 ms':>9s} {'p99 ms':>9s}")
    print(summary_row("baseline: FastAPI echo of its pydantic body", results["baseline"]))
    print(summary_row("gradient-service: sigmoid, 8 floats", results["ours"]))
    ratio = mean_rps(results["ours"]) / mean_rps(results["baseline"])
    per_round = ", ".join(
        f"{o.requests_per_s / b.requests_per_s:.2f}" for o, b in zip(results["ours"], results["baseline"], strict=True)
    )
    print("(req/s: mean over rounds; latencies: median over rounds)")
    print(f"throughput ratio ours / baseline: {ratio:.2f} (per round: {per_round})")
    verdict = "meets" if ratio >= TARGET else "does NOT meet"
    print(f"{verdict} the target of {TARGET} x the echo endpoint's throughput")


if __name__ == "__main__":
    main()
