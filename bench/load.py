"""The service under load at 1x and 10x its capacity, with wrk: goodput, p50, p99 and status counts.

Run: .venv/bin/python -m bench.load [--duration S] [--processes P] [--concurrency N] [--queue Q]
Starts the service under uvicorn (one server process with GRADIENT_COMPUTE_PROCESSES=P compute
workers, or with P=0 computing in N threads of its own; GRADIENT_MAX_QUEUE=Q) and loads it with a
request that goes through the compute pool (a 5,000-step Adam run on the sphere: about 20 ms of
computing on the step machine, as a 200-step run took before it). Capacity is P (or
N) + Q requests at once (running or waiting); wrk keeps that many connections busy, then ten times
as many, and retries every 503 at once (it ignores Retry-After). Past capacity the service must
answer 503 at once, never drop a connection, and still finish work: the goodput (runs answered 200
at 10x over runs answered 200 at 1x, in the same time) must be at least GOODPUT_MIN. The script
fails (exit status 1) on a lower goodput, a load with no 200, any status other than 200, 429 and
503, any socket error or any failed probe. Meanwhile it times /healthz and /metrics every 20 ms.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import threading
import time
from dataclasses import dataclass

import httpx
import orjson

from bench.servers import uvicorn_server
from bench.wrk import WrkResult, run_wrk

ALLOWED = {200, 429, 503}
GOODPUT_MIN = 0.5
"""Runs completed at 10x over runs completed at 1x, in the same time: at least this."""
BODY = {"objective": "sphere", "x0": [1.0, -2.0, 0.5], "steps": 5_000, "record_every": 5_000}


def probe_latencies(base: str, stop: threading.Event, out: dict[str, list[float]]) -> None:
    """Time /healthz and /metrics every 20 ms until ``stop``."""
    with httpx.Client(base_url=base, timeout=10) as client:
        while not stop.is_set():
            for path in ("/healthz", "/metrics"):
                started = time.perf_counter()
                status = client.get(path).status_code
                out.setdefault(path, []).append((time.perf_counter() - started) * 1000)
                if status != 200:
                    out.setdefault("failures", []).append(float(status))
            time.sleep(0.02)


def wait_until_idle(base: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = httpx.get(f"{base}/metrics", timeout=10).text
        busy = [
            line
            for line in text.splitlines()
            if line.startswith(("gradient_compute_running ", "gradient_compute_queued "))
        ]
        if all(float(line.split()[1]) == 0 for line in busy):
            return
        time.sleep(0.1)
    raise SystemExit("the compute pool did not become idle")


def statuses(result: WrkResult) -> str:
    return ", ".join(f"{code}: {count}" for code, count in sorted(result.statuses.items()))


def row(label: str, result: WrkResult) -> str:
    return (
        f"{label:22s} {result.requests_per_s:9.0f} req/s  p50 {result.p50_ms:8.2f} ms  p99 {result.p99_ms:8.2f} ms  "
        f"[{statuses(result)}]  {result.socket_errors or 'no socket errors'}"
    )


def goodput(results: dict[str, WrkResult]) -> float:
    """Runs answered 200 at 10x over those at 1x (both runs last as long)."""
    return results["10x"].statuses.get(200, 0) / max(1, results["1x"].statuses.get(200, 0))


def problems_in(results: dict[str, WrkResult], probes: dict[str, dict[str, list[float]]]) -> list[str]:
    """What fails the run: a load with no 200 (the service must still finish work past capacity),
    a goodput under GOODPUT_MIN, a status other than 200, 429 and 503, a socket error, a probe
    that was not answered 200."""
    problems = [
        f"{label}: no 200 came back, only {statuses(result) or 'no status at all'}"
        for label, result in results.items()
        if not result.statuses.get(200)
    ]
    problems += [
        f"{label}: unexpected statuses {sorted(set(result.statuses) - ALLOWED)}"
        for label, result in results.items()
        if set(result.statuses) - ALLOWED
    ]
    if {"1x", "10x"} <= results.keys() and results["1x"].statuses.get(200) and goodput(results) < GOODPUT_MIN:
        problems.append(f"goodput {goodput(results):.2f} at 10x, under {GOODPUT_MIN}")
    problems += [f"{label}: {result.socket_errors}" for label, result in results.items() if result.socket_errors]
    problems += [f"{label} probe failures: {p['failures']}" for label, p in probes.items() if p.get("failures")]
    return problems


@dataclass
class LoadRun:
    """What one run of the benchmark saw."""

    capacity: int
    results: dict[str, WrkResult]
    probes: dict[str, dict[str, list[float]]]

    def problems(self) -> list[str]:
        return problems_in(self.results, self.probes)


def measure(duration_s: int, processes: int, concurrency: int, queue: int) -> LoadRun:
    """Start the service, load it at 1x and 10x its capacity for ``duration_s`` each."""
    capacity = (processes or concurrency) + queue
    env = {
        "GRADIENT_COMPUTE_PROCESSES": str(processes),
        "GRADIENT_MAX_CONCURRENCY": str(concurrency),
        "GRADIENT_MAX_QUEUE": str(queue),
        "GRADIENT_ACCESS_LOG": "false",
    }
    with uvicorn_server("service.main:app", env=env, ready_path="/readyz") as base:
        body = orjson.dumps(BODY)
        first = httpx.post(f"{base}/v1/optimize", content=body, headers={"content-type": "application/json"})
        first.raise_for_status()
        run_wrk(f"{base}/v1/optimize", body, 2, capacity, timeout_s=30)  # warm-up
        results: dict[str, WrkResult] = {}
        probes: dict[str, dict[str, list[float]]] = {}
        for factor in (1, 10):
            label = f"{factor}x"
            wait_until_idle(base)  # wrk leaves its last requests running when it stops
            stop = threading.Event()
            probes[label] = {}
            prober = threading.Thread(target=probe_latencies, args=(base, stop, probes[label]))
            prober.start()
            results[label] = run_wrk(
                f"{base}/v1/optimize", body, duration_s, capacity * factor, threads=2, timeout_s=30
            )
            stop.set()
            prober.join()
    return LoadRun(capacity, results, probes)


def percentile(times: list[float], p: int) -> float:
    return statistics.quantiles(times, n=100, method="inclusive")[p - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--processes", type=int, default=1, help="GRADIENT_COMPUTE_PROCESSES (0: threads)")
    parser.add_argument("--concurrency", type=int, default=1, help="GRADIENT_MAX_CONCURRENCY (with 0 processes)")
    parser.add_argument("--queue", type=int, default=4, help="GRADIENT_MAX_QUEUE")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    run = measure(args.duration, args.processes, args.concurrency, args.queue)
    where = f"{args.processes} compute processes" if args.processes else f"{args.concurrency} compute threads"
    print(f"capacity: {where} + {args.queue} waiting = {run.capacity}; body {orjson.dumps(BODY).decode()}\n")
    for label, result in run.results.items():
        print(row(f"{label} ({run.capacity * int(label[:-1])} conns)", result))
    print(f"goodput at 10x: {goodput(run.results):.2f} of the runs answered at 1x (want >= {GOODPUT_MIN})")
    for label, timings in run.probes.items():
        for path in ("/healthz", "/metrics"):
            times = timings.get(path, [])
            if len(times) < 2:  # too few for percentiles (a run of a second or less)
                print(f"{path} during {label}: {len(times)} probes {[round(t, 1) for t in times]} ms")
                continue
            print(
                f"{path} during {label}: {len(times)} probes, median {statistics.median(times):.1f} ms, "
                f"p99 {percentile(times, 99):.1f} ms, max {max(times):.1f} ms"
            )
    problems = run.problems()
    print(
        f"OK: goodput {goodput(run.results):.2f}, 200s at both loads, only 200, 429 and 503, no socket errors"
        if not problems
        else "FAILED: " + "; ".join(problems)
    )
    if problems:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
